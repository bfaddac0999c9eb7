"""Write the stored audio of the audio-visual datasets from their WAVs, as the released scripts do.

    python scripts/prepare_av_audio.py --kind ks  --wav-dir train_wav/train --out DATA/kinetics_sounds/train_spec
    python scripts/prepare_av_audio.py --kind ave --wav-dir AVE_Dataset/Audios --out DATA/ave/Audio-1004-SE

``ks``: OGM-GE's ``data/KineticSound/process_audio.py`` (``<clip>.npy``, (1024, 128) normalised fbank,
``mmbalance.training.audio.ks_fbank``). ``ave``: PMR's audio preprocessing (``<clip>.pkl``, pickled (257, 1004)
standardised log spectrogram, ``mmbalance.training.audio.pmr_spectrogram``). ``--list`` restricts the clips to
those named in a split list (first field before ',' or '&', or the second for AVE's lists). Existing
outputs are kept, so an interrupted run resumes; each file is written to a temporary name, then renamed.
CREMA-D needs no preparation: its loader computes the spectrogram from ``AudioWAV/``.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
from pathlib import Path

import numpy as np

from mmbalance.training.audio import ks_fbank, pmr_spectrogram, read_wav


def clip_names(list_file: Path | None, kind: str) -> set[str] | None:
    if list_file is None:
        return None
    names = set()
    for line in list_file.read_text(encoding="utf-8-sig").splitlines():
        if line.strip():
            names.add(line.split("&")[1] if kind == "ave" else line.split(",")[0].split()[0])
    return names


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kind", choices=["ks", "ave"], required=True)
    parser.add_argument("--wav-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--list", type=Path, default=None, help="only the clips of this split list")
    args = parser.parse_args()
    wanted = clip_names(args.list, args.kind)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = ".npy" if args.kind == "ks" else ".pkl"
    done = failed = 0
    for wav in sorted(args.wav_dir.glob("*.wav")):
        if wanted is not None and wav.stem not in wanted:
            continue
        target = args.out / f"{wav.stem}{suffix}"
        if target.exists():
            continue
        try:
            samples, rate = read_wav(wav)
            spec = ks_fbank(samples, rate) if args.kind == "ks" else pmr_spectrogram(samples, rate)
        except (OSError, ValueError) as e:
            print(f"{wav}: skipped ({e})", file=sys.stderr)
            failed += 1
            continue
        tmp = target.with_name(target.name + ".partial")
        with tmp.open("wb") as f:
            if args.kind == "ks":
                np.save(f, spec.numpy().astype(np.float32))
            else:
                pickle.dump(spec.numpy(), f)
        os.replace(tmp, target)
        done += 1
    print(f"wrote {done} file(s) to {args.out}; {failed} WAV(s) skipped")
    return 1 if failed and not done else 0


if __name__ == "__main__":
    raise SystemExit(main())
