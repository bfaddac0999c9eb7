"""Cost of the content fingerprint (``mmbalance.training.fingerprint``) on a CREMA-D-sized tree of N clips.

Writes ``AudioWAV/<clip>.wav`` (80 KB: CREMA-D's 2.5 s mean at 16 kHz, 16-bit) and
``Image-01-FPS/<clip>/000{1,2,3}.jpg`` (20 KB each) of random bytes (hashing does not look at them),
then times the first fingerprint (every byte hashed), a second one (the cache: stats only) and one after
a single file changed. Prints one JSON line.

    python scripts/bench_fingerprint.py --clips 10000 [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from mmbalance.training import fingerprint

WAV_BYTES, FRAME_BYTES, FRAMES = 80_000, 20_000, 3


def write_tree(root: Path, clips: int) -> int:
    total = 0
    for i in range(clips):
        clip = f"{1001 + i // 100}_IEO_NEU_{i % 100:02d}"
        (root / "AudioWAV").mkdir(parents=True, exist_ok=True)
        (root / "AudioWAV" / f"{clip}.wav").write_bytes(os.urandom(WAV_BYTES))
        frames = root / "Image-01-FPS" / clip
        frames.mkdir(parents=True, exist_ok=True)
        for k in range(FRAMES):
            (frames / f"{k + 1:05d}.jpg").write_bytes(os.urandom(FRAME_BYTES))
        total += WAV_BYTES + FRAMES * FRAME_BYTES
    return total


def timed(root: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    digest = fingerprint.manifest(root, [Path("AudioWAV"), Path("Image-01-FPS")]).digest
    return time.perf_counter() - t0, digest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=10_000)
    ap.add_argument("--keep", type=Path, help="build the tree here and keep it (default: a temp folder)")
    args = ap.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="fp-bench-"))
    os.environ[fingerprint.CACHE_ENV] = str(base / "cache")
    root = base / "cremad"
    try:
        total = write_tree(root, args.clips)
        cold, digest = timed(root)
        warm, again = timed(root)
        one = next((root / "AudioWAV").iterdir())
        one.write_bytes(os.urandom(WAV_BYTES))
        changed, third = timed(root)
        assert digest == again != third
        files = args.clips * (1 + FRAMES)
        print(json.dumps({
            "clips": args.clips, "files": files, "megabytes": round(total / 1e6, 1),
            "first_s": round(cold, 2), "first_MB_per_s": round(total / 1e6 / cold, 1),
            "cached_s": round(warm, 3), "one_file_changed_s": round(changed, 3),
        }))  # fmt: skip
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
