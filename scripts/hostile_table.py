"""The issue-29 table: each hostile file put into a fixture tree, then ``mmbalance run`` on it in a child
process capped at ``--cap-gb`` of address space and ``--timeout`` seconds. Prints a Markdown row per case:
exit code, stderr lines, peak RSS, what is left under ``results/runs``, the first line of the error.

    python scripts/hostile_table.py                    # this checkout
    python scripts/hostile_table.py --tree /tmp/before   # the CLI of another tree (``git archive main``,
                                                         # with mmbalance/datasets, methods linked in)

The fixture trees are written by this checkout, with plain WAVs only (the CREMA-D fixture's extra chunks
are taken out), so each row differs from the healthy tree by the one hostile file.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mmbalance.fixtures import ave, cremad, kinetics_sounds
from mmbalance.fixtures._media import EXTRA_CHUNKS, fmt_chunk, riff, tone

RUN = ["--method", "joint", "--quiet", "--device", "cpu", "--set", "dataset_params.image_size=16",
       "--set", "model_params.width=4", "--set", "epochs=1", "--set", "batch_size=6"]  # fmt: skip


def pcm(seconds: float) -> bytes:
    return (tone(1, seconds) * 32767).astype("<i2").tobytes()


def bad_rate(rate: int, byte_rate: int) -> Callable[[Path], None]:
    block = struct.pack("<HHIIHH", 1, 1, rate, byte_rate, 2, 16)
    return lambda p: p.write_bytes(riff([(b"fmt ", block), (b"data", pcm(2.0))]))


def nan_wav(p: Path) -> None:
    x = np.zeros(8000, "<f4")
    x[123] = np.nan
    p.write_bytes(riff([fmt_chunk(16000, 1, 32, 3), (b"data", x.tobytes())]))


def npy_header(shape: tuple[int, ...]) -> Callable[[Path], None]:
    def write(p: Path) -> None:
        with p.open("wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
            f.write(b"\0" * 64)

    return write


def npy_nan(p: Path) -> None:
    x = np.load(p)
    x[5, 7] = np.nan
    np.save(p, x)


def pickle_nan(p: Path) -> None:
    p.write_bytes(pickle.dumps(np.full((257, 4), np.nan, np.float32)))


def pickle_shape_claim(p: Path) -> None:
    p.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"xx.")


# (label, dataset, writer, file to break: (folder, suffix), how)
CASES = [
    ("WAV 70 KB, header rate 20,000,003 Hz, byte rate 32,000", "cremad", cremad.write, ("AudioWAV", ".wav"),
     bad_rate(20_000_003, 32000)),
    ("WAV 70 KB, consistent header at 20,000,003 Hz", "cremad", cremad.write, ("AudioWAV", ".wav"),
     bad_rate(20_000_003, 40_000_006)),
    ("WAV, consistent header at 2,147,483,647 Hz", "cremad", cremad.write, ("AudioWAV", ".wav"),
     bad_rate(2**31 - 1, (2**31 - 1) * 2 % 2**32)),
    ("WAV with id3/bext/cue/LIST chunks (valid)", "cremad", cremad.write, ("AudioWAV", ".wav"),
     lambda p: p.write_bytes(riff([fmt_chunk(16000), *EXTRA_CHUNKS[:2], (b"data", pcm(1.0)), *EXTRA_CHUNKS[2:]]))),
    ("WAV, data chunk cut short", "cremad", cremad.write, ("AudioWAV", ".wav"),
     lambda p: p.write_bytes(riff([fmt_chunk(16000), (b"data", pcm(1.0))])[:-1000])),
    ("float WAV with a NaN sample", "cremad", cremad.write, ("AudioWAV", ".wav"), nan_wav),
    (".npy header claims (1e9, 128)", "kinetics_sounds", kinetics_sounds.write, ("train_spec", ".npy"),
     npy_header((10**9, 128))),
    (".npy object array of floats", "kinetics_sounds", kinetics_sounds.write, ("train_spec", ".npy"),
     lambda p: np.save(p, np.load(p).astype(object), allow_pickle=True)),
    (".npy with a NaN", "kinetics_sounds", kinetics_sounds.write, ("train_spec", ".npy"), npy_nan),
    ("pickle with NaN", "ave", ave.write, ("Audio-1004-SE", ".pkl"), pickle_nan),
    ("pickle claiming a 1 TiB bytes object", "ave", ave.write, ("Audio-1004-SE", ".pkl"), pickle_shape_claim),
]  # fmt: skip


def plain_wavs(folder: Path) -> None:
    """Rewrite every WAV with its ``fmt `` and ``data`` chunks only."""
    from mmbalance.training.audio import wav_header

    for wav in folder.glob("*.wav"):
        h, raw = wav_header(wav), wav.read_bytes()
        data = raw[h.data_offset : h.data_offset + h.frames * h.channels * h.bits // 8]
        wav.write_bytes(riff([fmt_chunk(h.rate, h.channels, h.bits), (b"data", data)]))


def child(argv: list[str], env: dict[str, str], timeout: int, cwd: Path) -> tuple[object, str, float]:
    """(exit code or "timeout", stderr, peak RSS in MB) of one child process."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=cwd)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        timed_out = not timer.is_alive()
        timer.cancel()
        err.seek(0)
        rc = "timeout" if timed_out else os.waitstatus_to_exitcode(status)
        return rc, err.read(), usage.ru_maxrss / 1024


def run_case(base: Path, dataset: str, write, target: tuple[str, str], how, args) -> tuple:
    data = base / "data"
    shutil.rmtree(base, ignore_errors=True)
    write(data)
    if dataset == "cremad":
        plain_wavs(data / "cremad" / "AudioWAV")
    folder = data / dataset / target[0]
    how(sorted(p for p in folder.iterdir() if p.suffix == target[1])[0])
    results = base / "results"
    cap = int(args.cap_gb * 2**30)
    code = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap})); "
            "from mmbalance.cli import main; sys.exit(main(sys.argv[1:]))")  # fmt: skip
    argv = [sys.executable, "-c", code, "run", "--dataset", dataset, "--data-root", str(data),
            "--results", str(results), *RUN]  # fmt: skip
    env = {**os.environ, "MMBALANCE_CACHE": str(base / "cache")}
    if args.tree:
        env["PYTHONPATH"] = str(args.tree)
    t0 = time.time()
    rc, err, peak_mb = child(
        argv, env, args.timeout, base
    )  # not the checkout: its mmbalance/ would shadow --tree
    runs = sorted((results / "runs").iterdir()) if (results / "runs").is_dir() else []
    left = ", ".join((r / "status").read_text().split(":")[0].strip() if (r / "status").exists() else "no status"
                     for r in runs) or "none"  # fmt: skip
    lines = [line for line in err.splitlines() if line.strip()]
    last = (lines[-1] if lines else "")[:200].replace("|", "/")
    return rc, len(lines), peak_mb, left, last, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cap-gb", type=float, default=6.0)
    ap.add_argument("--timeout", type=int, default=90)
    ap.add_argument("--only", type=int, nargs="*", help="case numbers (0-based)")
    ap.add_argument("--tree", type=Path, help="run the CLI of this source tree (PYTHONPATH)")
    args = ap.parse_args()
    print(
        "| # | hostile input | exit | stderr lines | peak RSS (MB) | run folder left | last stderr line (time) |"
    )
    print("|---|---|---|---|---|---|---|")
    base = Path(tempfile.mkdtemp(prefix="hostile-"))
    try:
        for i, (label, dataset, write, target, how) in enumerate(CASES):
            if args.only and i not in args.only:
                continue
            rc, n, peak, left, last, secs = run_case(base / str(i), dataset, write, target, how, args)
            print(f"| {i} | {label} | {rc} | {n} | {peak:.0f} | {left} | {last} ({secs:.0f} s) |", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
