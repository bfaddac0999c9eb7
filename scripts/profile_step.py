"""Where a training step's time goes: torch.profiler over the runner's own steps (``Trainer.train_batch``)
of one method on one dataset shape of ``bench_speed.py`` (random tensors, probes off).

    OMP_NUM_THREADS=1 python scripts/profile_step.py --dataset mosi --method cggm --steps 10 --top 25
    python scripts/profile_step.py --dataset mosi --method cggm --flops   # FLOPs of a step, x joint

``--flops`` counts the floating-point operations of one runner step (``torch.utils.flop_counter``:
matrix products and convolutions, forward and backward) of the method and of joint training on the same
batch: the part of a time ratio that no implementation can remove.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import torch
from bench_speed import SHAPES, build_trainer, run_steps, shaped_adapter
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.flop_counter import FlopCounterMode

from mmbalance.training.data import collate
from mmbalance.training.runner import resolve_device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="mosi", choices=list(SHAPES))
    parser.add_argument("--method", default="joint")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--clip", type=float, default=None)
    parser.add_argument("--sort", default="self_cpu_time_total")
    parser.add_argument("--flops", action="store_true", help="count a step's FLOPs against joint training's")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(1)
    device, shape = resolve_device("cpu"), SHAPES[args.dataset]
    inputs, target, batch_size, model_params = shape.at("small")
    adapter = shaped_adapter(args.dataset, shape, inputs, target, n=batch_size)
    batch = collate([adapter.split("train")[i] for i in range(batch_size)]).to(device)
    trainer = build_trainer(args.dataset, args.method, adapter, batch_size, model_params, device, False,
                            Path(tempfile.mkdtemp()), args.clip)  # fmt: skip
    run_steps(trainer, batch, 2)
    if args.flops:
        joint = build_trainer(args.dataset, "joint", adapter, batch_size, model_params, device, False,
                              Path(tempfile.mkdtemp()), args.clip)  # fmt: skip
        counts = {}
        for name, tr in (("joint", joint), (args.method, trainer)):
            with FlopCounterMode(display=False) as counter:
                run_steps(tr, batch, 1)
            counts[name] = counter.get_total_flops()
        print(f"GFLOP per step: joint {counts['joint'] / 1e9:.3f}, {args.method} {counts[args.method] / 1e9:.3f}, "
              f"x joint {counts[args.method] / counts['joint']:.3f}")  # fmt: skip
        return 0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            with record_function("## step"):
                run_steps(trainer, batch, 1)
    print(prof.key_averages().table(sort_by=args.sort, row_limit=args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
