"""Seconds per epoch of the official CGGM code and of mmbalance on the same MOSI data, side by side.

    python scripts/compare_official_cggm.py /path/to/CGGM                  # a clone of zrguo/CGGM
    python scripts/compare_official_cggm.py /path/to/CGGM --epochs 3 --data /data/mosi/mosi_data.pkl

Both sides train CGGM's MOSI model with its defaults (``run/mosi_run.py``; our ``mosi`` preset is the
same hyper-parameters), joint training (official ``--modulation none``) and CGGM, one process after the
other, each with ``--threads`` torch threads. The official epoch time is the ``Epoch N | Time`` line
``msatrain.py`` prints: train + valid (it never evaluates the test split). Ours is
``train_seconds + valid_seconds`` from ``metrics.jsonl``; our epoch also evaluates the test split
(``test_seconds``, shown apart) and, with the preset's probes on, trains the linear probes every step.
The first epoch (warm-up) is left out of the means when there is more than one.

The official checkout is copied into the work folder and patched there, never in place, with the
three changes it needs on a CPU-only machine with current torch (each patch fails loudly if its target
text is gone):
1. ``run/mosi_run.py``: ``use_cuda`` is only ever set when CUDA is present; it starts as False.
2. ``datasets/dataloader.py``: ``num_workers=8`` -> ``num_workers=0`` (same batches; no worker startup).
3. ``src/msatrain.py``: ``ReduceLROnPlateau(..., verbose=True)`` -> without ``verbose`` (removed in torch 2.7+).
``src/eval_metrics.py`` imports ``einops`` for its BraTS metric only; where it is not installed a
stand-in module that raises on use is put on the official run's path.

Without ``--data``, a MOSI-format pickle (MulT's ``mosi_data.pkl`` layout: 1284 / 229 / 686 samples,
50 steps of 300 / 5 / 20 features, labels (N, 1, 1) in [-3, 3]) of seeded random values is written
to the work folder: speed does not depend on the values. Results: a Markdown table on stdout and in
``--out`` (default ``results/bench/official-cggm-cpu.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SIZES = {"train": 1284, "valid": 229, "test": 686}  # the MulT aligned MOSI release
DIMS = {"text": 300, "audio": 5, "vision": 20}
STEPS = 50
PATCHES = [  # (file, old, new): the three CPU patches
    (
        "run/mosi_run.py",
        "    if torch.cuda.is_available():\n",
        "    use_cuda = False  # patched: unset on a machine without CUDA\n    if torch.cuda.is_available():\n",
    ),
    ("datasets/dataloader.py", "num_workers=8", "num_workers=0"),
    ("src/msatrain.py", ", verbose=True)", ")"),
]
EINOPS_STANDIN = '''"""Stand-in for einops (only the BraTS metric of src/eval_metrics.py uses it)."""


def rearrange(*args, **kwargs):
    raise RuntimeError("einops is not installed; the MOSI comparison never calls rearrange")
'''


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def write_mosi_pickle(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = {}
    for split, n in SIZES.items():
        data[split] = {m: rng.standard_normal((n, STEPS, d)).astype(np.float32) for m, d in DIMS.items()}
        data[split]["labels"] = rng.uniform(-3, 3, (n, 1, 1)).astype(np.float32)
    with path.open("wb") as f:
        pickle.dump(data, f)


def patched_copy(official: Path, work: Path) -> Path:
    if not (official / "run" / "mosi_run.py").is_file():
        fail(f"{official} is not a checkout of zrguo/CGGM (no run/mosi_run.py)")
    copy = work / "CGGM"
    shutil.copytree(official, copy, ignore=shutil.ignore_patterns(".git"))
    for rel, old, new in PATCHES:
        file = copy / rel
        text = file.read_text()
        if old not in text:
            fail(f"{official / rel}: patch target {old.strip()!r} not found (another version of the code?)")
        file.write_text(text.replace(old, new))
    try:
        import einops  # noqa: F401
    except ImportError:
        (copy / "einops.py").write_text(EINOPS_STANDIN)
    return copy


def run_official(copy: Path, data: Path, modulation: str, epochs: int, seed: int, env: dict) -> list[float]:
    args = [
        "--modulation", modulation, "--data_path", str(data), "--num_epochs", str(epochs), "--seed", str(seed),
    ]  # fmt: skip
    code = f"import sys; sys.argv = ['mosi_run.py'] + {args!r}; from run.mosi_run import mosirun; mosirun()"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=copy, env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        fail(f"official CGGM ({modulation}) exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    times = [float(t) for t in re.findall(r"Epoch +\d+ \| Time ([0-9.]+) sec", proc.stdout)]
    if len(times) != epochs:
        fail(f"official CGGM ({modulation}): {len(times)} epoch times in its output, expected {epochs}")
    return times


def run_ours(data: Path, method: str, epochs: int, seed: int, results: Path, env: dict, extra: list[str]):
    cmd = [
        sys.executable, "-m", "mmbalance.cli", "run", "--preset", "mosi", "--method", method,
        "--seed", str(seed), "--set", f"epochs={epochs}", "--set", "dataset_params.source=mult",
        "--data-root", str(data.parent.parent), "--results", str(results), "--quiet",
    ]  # fmt: skip
    for kv in extra:
        cmd += ["--set", kv]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        fail(f"mmbalance ({method}) exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    (metrics,) = results.glob("runs/**/metrics.jsonl")
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    shutil.rmtree(results)
    return [r["train_seconds"] + r["valid_seconds"] for r in rows], [r["test_seconds"] for r in rows]


def mean_after_warmup(times: list[float]) -> float:
    return statistics.mean(times[1:] if len(times) > 1 else times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("official", type=Path, help="a checkout of github.com/zrguo/CGGM")
    parser.add_argument(
        "--data", type=Path, help="a MulT mosi_data.pkl (default: random values, real shapes)"
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every run (both sides)")
    parser.add_argument("--seed", type=int, default=666, help="the official default")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a spec override for our runs (e.g. probe_every=0)")  # fmt: skip
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed)")
    parser.add_argument("--out", type=Path, default=Path("results/bench/official-cggm-cpu.md"))
    args = parser.parse_args()
    if args.epochs < 1:
        fail(f"--epochs must be at least 1, got {args.epochs}")
    if args.data is not None and not args.data.is_file():
        fail(f"--data {args.data}: no such file")

    work = args.work or Path(tempfile.mkdtemp(prefix="compare-cggm-"))
    work.mkdir(parents=True, exist_ok=True)
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONWARNINGS": "ignore"}
    try:
        copy = patched_copy(args.official.resolve(), work)
        data_dir = work / "data" / "mosi"  # our adapter reads <data-root>/mosi/mosi_data.pkl
        data_dir.mkdir(parents=True, exist_ok=True)
        data = data_dir / "mosi_data.pkl"
        if args.data is not None:
            shutil.copyfile(args.data, data)
        else:
            write_mosi_pickle(data, args.seed)
        rows = []
        for method, modulation in (("joint", "none"), ("cggm", "cggm")):
            print(f"official {modulation} ...", file=sys.stderr, flush=True)
            official = run_official(copy, data, modulation, args.epochs, args.seed, env)
            print(f"mmbalance {method} ...", file=sys.stderr, flush=True)
            ours, test = run_ours(data, method, args.epochs, args.seed, work / "results", env, args.set)
            rows.append(
                (method, mean_after_warmup(official), mean_after_warmup(ours), mean_after_warmup(test))
            )
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    import torch  # only for the header

    header = (
        f"official zrguo/CGGM at {args.official} vs mmbalance, MOSI shapes "
        f"({'/'.join(map(str, SIZES.values()))} samples, {STEPS} steps, dims {'/'.join(map(str, DIMS.values()))}), "
        f"batch 64, {args.epochs} epochs (mean of epochs 2+ when more than one), {args.threads} thread(s), "
        f"torch {torch.__version__}, overrides {args.set or 'none'}"
    )
    lines = [
        header,
        "",
        "| method | official s/epoch (train + valid) | mmbalance s/epoch (train + valid) | mmbalance / official | mmbalance test s/epoch |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {m} | {o:.2f} | {u:.2f} | {u / o:.2f} | {t:.2f} |" for m, o, u, t in rows]
    joint, cggm = rows
    lines += [
        "",
        f"CGGM / joint: official {cggm[1] / joint[1]:.2f}, mmbalance {cggm[2] / joint[2]:.2f}",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
