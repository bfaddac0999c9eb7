"""Throughput of the BraTS loader vs the model's training step (samples per second, this machine).

    python scripts/bench_brats_loader.py DATA_ROOT --crop 32 --tiny          # the fixtures (make_fixtures.py)
    python scripts/bench_brats_loader.py --real-size --crop 160 --tiny       # synthetic 240x240x155 volumes

Loader: ``DataLoader(split, batch_size, collate)`` in this process (the runner's default, no workers),
train items (one random tumour slice per volume, augmented) and eval items (every slice). Step:
forward + DiceCE loss + backward + SGD step of the adapter's model on one batch, after one warm-up step.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mmbalance.datasets.brats import Brats, BratsModelParams, BratsParams, _write_h5
from mmbalance.training.data import collate

TINY = {"layers": [1, 1, 1, 1], "width": 8, "aspp_channels": 16, "decoder_channels": 32}


def write_real_size(folder: Path, n: int = 4) -> Path:
    """``n`` synthetic volumes of the real BraTS size, written as prepare_brats.py writes them."""
    rng = np.random.default_rng(0)
    (folder / "h5").mkdir(parents=True)
    for i in range(n):
        image = rng.normal(size=(4, 240, 240, 155)).astype(np.float32)
        label = np.zeros((240, 240, 155), np.uint8)
        label[100:140, 100:140, 40:100] = rng.choice([1, 2, 4], size=(40, 40, 60))
        _write_h5(folder / "h5" / f"BraTS2021_{i:05d}.h5", image, label)
    ids = [f"BraTS2021_{i:05d}" for i in range(n)]
    (folder / "splits.json").write_text(f'{{"train": {ids[:-2]}, "valid": {ids[-2:-1]}, "test": {ids[-1:]}}}'
                                        .replace("'", '"'))  # fmt: skip
    return folder


def items_per_second(dataset, batch_size: int, max_items: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate, shuffle=True)
    n, start = 0, time.perf_counter()
    while n < max_items:
        for batch in loader:
            n += len(batch)
            if n >= max_items:
                break
    return n / (time.perf_counter() - start)


def step_samples_per_second(adapter: Brats, model_params: dict, batch_size: int, steps: int) -> float:
    torch.manual_seed(0)
    model = adapter.build_model(BratsModelParams(**model_params), adapter.task.modalities).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = adapter.loss_fn()
    batch = collate([adapter.split("train")[i % len(adapter.split("train"))] for i in range(batch_size)])
    times = []
    for _ in range(steps + 1):  # the first step warms up
        start = time.perf_counter()
        loss = loss_fn(model(batch.inputs).pred, batch.target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return batch_size / float(np.mean(times[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data_root", type=Path, nargs="?", help="folder holding brats/ (unless --real-size)")
    parser.add_argument("--real-size", action="store_true", help="measure on synthetic 240x240x155 volumes")
    parser.add_argument("--crop", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--items", type=int, default=64, help="items read per loader measurement")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny model instead of 4 x ResNet-101")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_real_size(Path(tmp)) if args.real_size else args.data_root / "brats"
        adapter = Brats(BratsParams(crop=args.crop), root)
        train = items_per_second(adapter.split("train"), args.batch_size, args.items)
        evals = items_per_second(adapter.split("test"), args.batch_size, args.items)
        step = step_samples_per_second(adapter, TINY if args.tiny else {}, args.batch_size, args.steps)
    model = "tiny (ResNet [1,1,1,1], width 8)" if args.tiny else "CGGM (4 x ResNet-101, OS 16)"
    print(f"crop {args.crop}, batch {args.batch_size}, {args.threads} thread(s), model {model}")
    print(f"loader train: {train:.3g} samples/s   loader eval: {evals:.3g} samples/s   "
          f"train step: {step:.3g} samples/s")  # fmt: skip


if __name__ == "__main__":
    main()
