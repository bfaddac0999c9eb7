"""Is data loading the bottleneck on MOSI / IEMOCAP? Loader samples/s against the model's training step.

``python scripts/bench_msa_loader.py [--device cpu|cuda] [--batch-size 64] [--full]``

Writes the fixtures (``mmbalance.fixtures.mosi`` / ``iemocap``) to a temporary folder and measures:

- loader: samples per second of a ``DataLoader`` (the runner's: ``collate``, no workers) over the
  train split, repeated until ``--samples`` items were read; MOSI from the in-memory pickle arrays,
  IEMOCAP (MMIN) from the h5 files per item, padded to CGGM's lengths.
- step: samples per second of one training step (forward, L1 / CE loss, backward, Adam step) of the
  paper model with the CGGM defaults, on batches of the real sequence lengths (MOSI aligned 50 steps of
  300 / 5 / 20 features; IEMOCAP 22 / 350 / 50 steps of 1024 / 130 / 342).

``--full`` also writes a MOSI MulT pickle of the real size (1284 / 229 / 686 samples, 50 steps) so the
loader is timed on full-length items too.
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mmbalance.datasets.iemocap import Iemocap, IemocapParams
from mmbalance.datasets.mosi import Mosi, MosiParams
from mmbalance.fixtures import iemocap as iemocap_fixture
from mmbalance.fixtures import mosi as mosi_fixture
from mmbalance.models.transformer import MSAModelParams, build_msa_model
from mmbalance.training.data import collate


def loader_rate(ds, batch_size: int, samples: int) -> float:
    n, t0 = 0, time.perf_counter()
    while n < samples:
        for batch in DataLoader(ds, batch_size=batch_size, shuffle=True, collate_fn=collate):
            n += len(batch)
    return n / (time.perf_counter() - t0)


def step_rate(dims: dict[str, int], lengths: dict[str, int], out_dim: int, params: MSAModelParams,
              batch_size: int, device: torch.device, steps: int) -> float:  # fmt: skip
    torch.manual_seed(0)
    model = build_msa_model(dims, out_dim, params).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = {m: torch.randn(batch_size, lengths[m], d, device=device) for m, d in dims.items()}
    if out_dim == 1:
        y, loss_fn = torch.randn(batch_size, 1, device=device), torch.nn.L1Loss()
    else:
        y, loss_fn = torch.randint(0, out_dim, (batch_size,), device=device), torch.nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x).pred, y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.8)
        opt.step()

    for _ in range(3):  # warm-up
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - t0)


def full_size_mosi(root: Path) -> Path:
    rng = np.random.default_rng(0)
    data = {}
    for split, n in {"train": 1284, "valid": 229, "test": 686}.items():
        part = {m: rng.normal(size=(n, 50, d)).astype(np.float32) for m, d in mosi_fixture.DIMS_MULT.items()}
        part["labels"] = rng.uniform(-3, 3, size=(n, 1, 1)).astype(np.float32)
        data[split] = part
    (root / "mosi").mkdir(parents=True, exist_ok=True)
    (root / "mosi" / "mosi_data.pkl").write_bytes(pickle.dumps(data, protocol=4))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4096, help="items read per loader measurement")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--full", action="store_true", help="also time the loader on a real-size MOSI pickle")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    warnings.simplefilter("ignore")  # the IEMOCAP fixture's deliberately over-long utterance
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        mosi_fixture.write(root)
        iemocap_fixture.write(root)
        mosi = Mosi(MosiParams(), root / "mosi")
        iemo = Iemocap(IemocapParams(), root / "iemocap")
        bs, n = args.batch_size, args.samples
        rows.append(
            ("MOSI loader (fixture, MulT aligned, in memory)", loader_rate(mosi.split("train"), bs, n))
        )
        rows.append(
            ("IEMOCAP loader (fixture, MMIN h5 per item)", loader_rate(iemo.split("train"), bs, n // 4))
        )
        if args.full:
            big = full_size_mosi(root / "full")
            t0 = time.perf_counter()
            ds = Mosi(MosiParams(), big / "mosi").split("train")
            rows.append(("MOSI full-size pickle: load + check, seconds", time.perf_counter() - t0))
            rows.append(("MOSI loader (full-size, 50 steps)", loader_rate(ds, args.batch_size, args.samples)))
    mosi_dims, mosi_len = dict(mosi_fixture.DIMS_MULT), {"text": 50, "audio": 50, "vision": 50}
    iemo_dims, iemo_len = (
        {"text": 1024, "audio": 130, "vision": 342},
        {"text": 22, "audio": 350, "vision": 50},
    )
    bs, steps = args.batch_size, args.steps
    mosi_rate = step_rate(mosi_dims, mosi_len, 1, MSAModelParams(), bs, device, steps)
    rows.append((f"MOSI train step, paper model ({device})", mosi_rate))
    iemo_rate = step_rate(iemo_dims, iemo_len, 4, Iemocap.ModelParams(), bs, device, steps)
    rows.append((f"IEMOCAP train step, paper model ({device})", iemo_rate))
    print(f"batch size {args.batch_size}, torch threads {torch.get_num_threads()}")
    for name, value in rows:
        unit = "" if "seconds" in name else " samples/s"
        print(f"{name:55s} {value:10.1f}{unit}")


if __name__ == "__main__":
    main()
