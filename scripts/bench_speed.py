"""The suite's speed benchmark: time per training step and peak memory of every method on every
dataset shape, as ratios against joint training measured in the same process.

    python scripts/bench_speed.py                                  # all shapes x all methods, auto device
    python scripts/bench_speed.py --datasets mosi food101 --methods joint ogm_ge cggm --repeats 7
    python scripts/bench_speed.py --size paper --device cuda --amp  # paper batch sizes and models

What is measured is what users run: the model comes from the dataset adapter's ``build_model`` (sized
from the shapes below, on random tensors: no data files needed), and a step is the runner's own
``Trainer.train_batch`` (forward, method loss, backward, ``after_backward``, clip, optimiser step; all
turns of multi-step methods), probes off. Per-epoch hooks (``on_epoch_start``: PMR's prototypes, ...)
run once before timing and are not in the per-step time.

- time (CUDA: wall clock; CPU: the process's CPU time, ``time.process_time``): ``--warmup`` steps per method, then ``--repeats`` rounds; each round runs ``--steps`` steps of
  every method in turn (interleaved, so drift and other load hit all methods alike); the median over
  rounds of the mean step time. CUDA is synchronised around each timed block.
- peak memory, one method at a time after the timing (nothing else alive): CUDA
  ``torch.cuda.max_memory_allocated`` minus what was allocated before the trainer was built; CPU the
  growth of the process's peak RSS (VmHWM, reset through ``/proc/self/clear_refs`` after
  ``malloc_trim``; Linux only). Both cover the model, optimiser state, method modules and activations.
- method state (``mmbalance.training.memory.method_state``): bytes of tensors the method holds beyond the model
  (its modules' parameters, buffers and gradients, its optimisers' state, prototypes, ...), and the state
  of non-model parameters in the main optimiser. For CGGM: its classifiers (the paper: 8-24 MB extra).
- shapes and model sizes: ``SHAPES`` below; ``scripts/gpu_check.py`` runs ``bench_shape`` on
  the presets' specs (``build_trainer(preset=...)``) and adds GPU utilisation through its ``monitor``.

Results go to ``results/bench/speed-<device>-<size>.{json,md}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import Dataset

from mmbalance.common.records import RunDir
from mmbalance.common.registry import DATASETS, METHODS
from mmbalance.common.spec import compose, deep_merge, validate_spec
from mmbalance.training.data import Batch, DataError, DatasetAdapter, TaskInfo, collate
from mmbalance.training.memory import MB, PeakMemory, method_state, tensor_bytes
from mmbalance.training.method import MethodNotApplicable
from mmbalance.training.runner import Trainer, resolve_device


@dataclass
class Shape:
    """A dataset's input shapes as the paper code feeds them, and its batch size / model size."""

    inputs: dict[str, tuple[int, ...]]  # per modality, one item
    target: tuple[int, ...]  # one item's target ((): a class index)
    batch: int  # the CGGM code's batch size
    task: TaskInfo | None = None  # only where the adapter reads its task from files (Food101's classes)
    small_batch: int | None = None  # --size small (CPU): fewer items, same item shapes
    small_model: dict[str, Any] = field(default_factory=dict)  # --size small: model_params overrides
    small_inputs: dict[str, tuple[int, ...]] | None = None  # --size small: other item shapes
    small_target: tuple[int, ...] | None = None

    def at(self, size: str, batch: int | None = None) -> tuple[dict, tuple[int, ...], int, dict]:
        """(item shapes, target shape, batch size, model_params) at ``size`` (paper / small); ``batch``
        overrides the batch size."""
        if size != "small":
            return self.inputs, self.target, batch or self.batch, {}
        return (self.small_inputs or self.inputs, self.small_target or self.target,
                batch or self.small_batch or self.batch, self.small_model)  # fmt: skip


BRATS = ("flair", "t1ce", "t1", "t2")
BRATS_SMALL = {"layers": [1, 1, 1, 1], "width": 16, "aspp_channels": 32, "decoder_channels": 32}
SHAPES: dict[str, Shape] = {
    # The synthetic default: three modalities of 128 / 16 / 16 dimensions (datasets/synthetic.py).
    "synthetic": Shape({"m0": (128,), "m1": (16,), "m2": (16,)}, (), 64),
    # MulT/CGGM aligned MOSI: 50 steps of GloVe 300 / COVAREP 5 / FACET 20; one sentiment score.
    "mosi": Shape({"text": (50, 300), "audio": (50, 5), "vision": (50, 20)}, (1,), 64, small_batch=32),
    # CGGM's MMIN IEMOCAP: text 22 x 1024, audio 350 x 130, vision 50 x 342; 4 classes.
    "iemocap": Shape({"text": (22, 1024), "audio": (350, 130), "vision": (50, 342)}, (), 64, small_batch=16),
    # UPMC-Food101 cached features: ViT-B/16 197 patches x 768, BERT 50 tokens x 768; 101 classes.
    "food101": Shape({"image": (197, 768), "text": (50, 768)}, (), 128,
                     task=TaskInfo("classification", ("image", "text"), 101), small_batch=16),  # fmt: skip
    # BraTS slices: 4 sequences, one 160 x 160 crop each; labels 0-3. Small: a 1-1-1-1 ResNet, 96 x 96.
    "brats": Shape({m: (1, 160, 160) for m in BRATS}, (160, 160), 64, small_batch=4, small_model=BRATS_SMALL,
                   small_inputs={m: (1, 96, 96) for m in BRATS}, small_target=(96, 96)),
    # CREMA-D as OGM-GE feeds it: a (1, 257, 188) spectrogram and one 224 x 224 frame; ResNet-18 per
    # modality, 6 classes. Small: 64 x 48 spectrograms, 32 x 32 frames, width-16 ResNets.
    "cremad": Shape({"audio": (1, 257, 188), "visual": (3, 1, 224, 224)}, (), 64, small_batch=4,
                    small_model={"width": 16}, small_inputs={"audio": (1, 64, 48), "visual": (3, 1, 32, 32)}),
}  # fmt: skip


class RandomSplit(Dataset):
    """``n`` random items of the given shapes (targets drawn for the task kind)."""

    def __init__(self, inputs: dict[str, tuple[int, ...]], target: tuple[int, ...], task: TaskInfo, n: int):
        g = torch.Generator().manual_seed(0)
        self.x = {m: torch.randn(n, *s, generator=g) for m, s in inputs.items()}
        if task.kind == "regression":
            self.y = torch.randn(n, *target, generator=g)
        else:
            self.y = torch.randint(0, task.num_classes, (n, *target), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return {m: x[i] for m, x in self.x.items()}, self.y[i], f"random-{i}"


def shaped_adapter(name: str, shape: Shape, inputs: dict[str, tuple[int, ...]], target: tuple[int, ...],
                   n: int) -> DatasetAdapter:  # fmt: skip
    """The registered adapter of ``name``, serving random tensors of ``inputs`` instead of its files.

    Its model is still built by its own ``build_model``: models sized from the data read the input
    sizes through ``input_dims`` / ``feature_dims``, which answer from the shapes here.
    """
    cls = DATASETS.get(name)

    class Shaped(cls):
        def verify(self) -> None:
            pass

        @property
        def task(self) -> TaskInfo:
            try:
                return super().task
            except (DataError, OSError):  # classes listed in files (Food101)
                if shape.task is None:
                    raise
                return shape.task

        def split(self, split: str) -> Dataset:
            if split not in self._random:
                self._random[split] = RandomSplit(inputs, target, self.task, n)
            return self._random[split]

        def fingerprint(self, split: str) -> str:
            return "random"

        def input_dims(self) -> dict[str, int]:
            return {m: s[-1] for m, s in inputs.items()}

        feature_dims = input_dims

    Shaped.__name__ = f"Shaped{cls.__name__}"
    adapter = Shaped(cls.Params(), Path(tempfile.gettempdir()) / "bench-no-data")
    adapter._random = {}
    return adapter


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_memory_method() -> str:
    return "peak RSS growth (VmHWM after clear_refs)"


# --- one method on one shape -------------------------------------------------------------------------
def build_trainer(dataset: str, method: str, adapter: DatasetAdapter, batch: int, model_params: dict,
                  device: torch.device, amp: bool, tmp: Path, clip: float | None = None,
                  preset: str | None = None) -> Trainer:  # fmt: skip
    """A runner ``Trainer`` of ``method`` on ``adapter``, ready to step. ``preset``: the spec starts from
    that preset with its method overrides (model, optimiser, schedule, method parameters), as
    ``mmbalance run --preset`` resolves it; else from the code defaults."""
    method_cls = METHODS.get(method)
    base = compose({"preset": preset, "method": method}) if preset else {}
    params = method_cls.variants(base.get("method_params", {}), adapter.task)[0]  # unimodal: 1st modality
    optim = {}
    if clip is not None:  # every method clips once, in the runner, as the released CGGM loop does
        optim = {"clip_grad_norm": clip}
        if "clip_grad_norm" in method_cls.Params.model_fields:  # so the method does not clip a second time
            params = {**params, "clip_grad_norm": None}
    spec = validate_spec(deep_merge(base, {"dataset": dataset, "method": method, "method_params": params,
                                           "batch_size": batch, "model_params": model_params,
                                           "probe_every": 0, "epochs": 1000, "optim": optim}))  # fmt: skip
    trainer = Trainer(spec, adapter, RunDir(tmp / method), device, progress=False, amp=amp)
    trainer.model.train()
    trainer.ctx.training, trainer.ctx.epoch = True, 0
    trainer.method.on_epoch_start(trainer.ctx)
    return trainer


def run_steps(trainer: Trainer, batch: Batch, n: int) -> float:
    """Seconds per step over ``n`` runner steps: wall time on CUDA, this process's CPU time on the CPU
    (one torch thread there, so other processes on shared cores do not count)."""
    cuda = trainer.device.type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    if cuda:
        torch.cuda.synchronize()
    t0 = clock()
    for _ in range(n):
        trainer.ctx.step_in_epoch = trainer.ctx.step = trainer.ctx.step + 1
        trainer.train_batch(batch)
    if cuda:
        torch.cuda.synchronize()
    return (clock() - t0) / n


def bench_shape(name: str, shape: Shape, methods: list[str], args, device: torch.device,
                preset: str | None = None, monitor: Callable[[Callable[[int], float]], dict] | None = None,
                skipped: dict[str, str] | None = None) -> list[dict]:  # fmt: skip
    """Rows of step time, peak memory and method state of ``methods`` on one shape (see the module doc).

    ``preset``: specs start from that preset (``build_trainer``). ``monitor``: called in the memory
    pass with ``steps(n)`` (runs n more steps of the method, alone on the device); what it returns
    (utilisation) joins the method's row. ``skipped``: filled with the methods that do not apply and why.
    """
    inputs, target, batch_size, model_params = shape.at(args.size, getattr(args, "batch", None))
    model_params = {**model_params, **args.model_params}
    adapter = shaped_adapter(name, shape, inputs, target, n=2 * batch_size)
    batch = collate([adapter.split("train")[i] for i in range(batch_size)]).to(device)
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))

    trainers: dict[str, Trainer] = {}
    rows = []
    for m in methods:
        try:
            trainers[m] = build_trainer(
                name, m, adapter, batch_size, model_params, device, args.amp, tmp, args.clip, preset
            )
            run_steps(trainers[m], batch, args.warmup)
        except Exception as e:  # a method that does not apply to this model: one line, keep going
            trainers.pop(m, None)
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            print(f"  {name}: skip {m}: {reason}", flush=True)
            if skipped is not None:
                skipped[m] = reason
    times: dict[str, list[float]] = {m: [] for m in trainers}
    for _ in range(args.repeats):
        for m, tr in list(trainers.items()):
            try:
                times[m].append(run_steps(tr, batch, args.steps))
            except MethodNotApplicable as e:  # refused at its first hook: fp16 overflow steps run none
                del trainers[m], times[m]
                reason = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
                print(f"  {name}: skip {m}: {reason}", flush=True)
                if skipped is not None:
                    skipped[m] = reason
    states = {m: method_state(tr.method, tr.model, tr.optimizer) for m, tr in trainers.items()}
    order = list(trainers)
    trainers.clear()
    gc.collect()

    for m in order:  # memory: one method alive at a time
        with PeakMemory(device) as peak:
            tr = build_trainer(
                name, m, adapter, batch_size, model_params, device, args.amp, tmp, args.clip, preset
            )
            run_steps(tr, batch, min(2, args.steps))  # the first step allocates grads and optimiser state
            seen = monitor(lambda n, tr=tr: run_steps(tr, batch, n)) if monitor else {}
            del tr
        med = statistics.median(times[m])
        rows.append({"dataset": name, "method": m, "batch": batch_size, "ms_per_step": 1000 * med,
                     "ms_spread": [1000 * min(times[m]), 1000 * max(times[m])], "peak_mb": peak.bytes / MB,
                     "method_state_mb": {k: v / MB for k, v in states[m].items()}, **seen})  # fmt: skip
    joint = next((r for r in rows if r["method"] == "joint"), None)
    for r in rows:
        r["time_x_joint"] = r["ms_per_step"] / joint["ms_per_step"] if joint else None
        r["mem_x_joint"] = r["peak_mb"] / joint["peak_mb"] if joint and joint["peak_mb"] > 0 else None
    return rows


def cggm_overhead(name: str, shape: Shape, device: torch.device) -> dict[str, float]:
    """CGGM's classifier memory with the paper-size model (batch 2: the classifiers do not depend on it)."""
    adapter = shaped_adapter(name, shape, shape.inputs, shape.target, n=2)
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-cggm-{name}-"))
    tr = build_trainer(name, "cggm", adapter, 2, {}, device, False, tmp)
    run_steps(tr, collate([adapter.split("train")[i] for i in range(2)]).to(device), 1)  # optimiser state
    state = method_state(tr.method, tr.model, tr.optimizer)
    mb = {k: v / MB for k, v in state.items()}
    return {"classifier_params_mb": mb["modules"], "classifier_optimiser_mb": mb["optimiser_state"],
            "other_mb": mb["other"], "model_params_mb": tensor_bytes(tr.model.parameters()) / MB}  # fmt: skip


# --- report ------------------------------------------------------------------------------------------
def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[dict], device_name: str) -> str:
    mem_how = "CUDA max_memory_allocated" if "cuda" in device_name.lower() else cpu_memory_method()
    lines = [f"| dataset | method | batch | ms/step (min-max) | x joint | peak MB ({mem_how}) | x joint | "
             "method state MB |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lo, hi = r["ms_spread"]
        state = sum(r["method_state_mb"].values())
        lines.append(f"| {r['dataset']} | {r['method']} | {r['batch']} | {r['ms_per_step']:.1f} "
                     f"({lo:.1f}-{hi:.1f}) | {fmt(r['time_x_joint'], '.2f')} | {r['peak_mb']:.1f} "
                     f"| {fmt(r['mem_x_joint'], '.2f')} | {state:.2f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="*", default=list(SHAPES), help=f"of {', '.join(SHAPES)}")
    parser.add_argument("--methods", nargs="*", default=None, help="default: every registered method")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", choices=("paper", "small"), default=None,
                        help="paper: the CGGM batch sizes and models; small: CPU-sized batches and a smaller "
                             "BraTS network (default: paper on CUDA, small on CPU)")  # fmt: skip
    parser.add_argument("--amp", action="store_true", help="mixed precision (as `mmbalance run --amp`)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="steps per method per round")
    parser.add_argument("--repeats", type=int, default=5, help="rounds; the median is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default on CPU: 1)")
    parser.add_argument(
        "--clip", type=float, default=None,
        help="clip every method's gradient norm in the runner (CGGM's own clip off), as the released CGGM "
        "loop clips joint and CGGM alike (its MOSI/IEMOCAP/Food value: 0.8); default: the spec defaults",
    )  # fmt: skip
    parser.add_argument(
        "--no-cggm-overhead", action="store_true", help="skip the paper-size CGGM memory check"
    )
    parser.add_argument(
        "--model-param",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="model_params for every shape, VALUE as YAML (e.g. fusion=concat)",
    )
    parser.add_argument("--tag", default="", help="appended to the output file names")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    device = resolve_device(args.device)
    if (
        args.threads or device.type == "cpu"
    ):  # CPU: 1 thread unless asked (no spin-wait thrash on shared cores)
        torch.set_num_threads(args.threads or 1)
    args.size = args.size or ("paper" if device.type == "cuda" else "small")
    args.model_params = {k: yaml.safe_load(v) for k, _, v in (kv.partition("=") for kv in args.model_param)}
    methods = args.methods or METHODS.names()
    if "joint" not in methods:
        methods = ["joint", *methods]  # the reference of every ratio
    device_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU {cpu_name()} ({os.cpu_count()} cores)"
    )
    header = (f"device: {device_name} ({device}), torch {torch.__version__}, threads "
              f"{torch.get_num_threads()}, size {args.size}, amp {args.amp}; warm-up {args.warmup}, "
              f"{args.repeats} rounds x {args.steps} steps, median; clip {args.clip or 'spec default'}; "
              f"clock {'wall' if device.type == 'cuda' else 'cpu'}; model_params {args.model_params or 'default'}")  # fmt: skip
    print(header, flush=True)

    rows, overhead = [], {}
    for name in args.datasets:
        if name not in SHAPES:
            parser.error(f"unknown dataset shape {name!r}; known: {', '.join(SHAPES)}")
        if name not in DATASETS.names():
            print(f"skip {name}: no adapter registered yet (datasets/{name}.py)", flush=True)
            continue
        t0 = time.perf_counter()
        rows += bench_shape(name, SHAPES[name], methods, args, device)
        print(f"  {name}: {time.perf_counter() - t0:.0f} s", flush=True)
        if not args.no_cggm_overhead and "cggm" in methods:
            overhead[name] = cggm_overhead(name, SHAPES[name], device)

    text = [header, "", table(rows, device_name)]
    if overhead:
        text += ["", "CGGM classifiers, paper-size models (params + optimiser state; paper: 8-24 MB):", "",
                 "| dataset | classifier params MB | optimiser state MB | total MB | model params MB |",
                 "|---|---|---|---|---|"]  # fmt: skip
        for name, o in overhead.items():
            total = o["classifier_params_mb"] + o["classifier_optimiser_mb"]
            text.append(f"| {name} | {o['classifier_params_mb']:.2f} | {o['classifier_optimiser_mb']:.2f} | "
                        f"{total:.2f} | {o['model_params_mb']:.2f} |")  # fmt: skip
    report = "\n".join(text)
    print("\n" + report)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"speed-{device.type}-{args.size}{'-amp' if args.amp else ''}{'-' + args.tag if args.tag else ''}"
    doc = {"header": header, "device": device_name, "size": args.size, "amp": args.amp, "rows": rows,
           "cggm_classifier_overhead": overhead}  # fmt: skip
    (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(report + "\n")
    print(f"\nwritten {args.out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
