"""One prepared GPU check: the paper models at real size, fp32 and AMP, in one command of a few minutes.

    python scripts/gpu_check.py                     # CUDA: the presets' shapes, within 8 minutes on one GPU
    python scripts/gpu_check.py --size small        # no CUDA: the same code paths on the CPU, small shapes

For each paper model (MOSI and IEMOCAP transformers, Food101 on cached BERT / ViT features, BraTS 2-D
DeepLabV3+ at the preset's 160 x 160 crop, CREMA-D ResNet-18 on 257 x 188 spectrograms and 224 x 224
frames) and for fp32 and AMP, ``bench_speed.bench_shape`` times the runner's own step of joint, OGM-GE,
PMR and CGGM. Each spec is the dataset's preset (``benchmarks/presets``, with its method overrides:
IEMOCAP's OGM-GE uses concat fusion) on random tensors of the preset's shapes, so no data files and no
pretrained weights are needed. Measured per method:

- step time (wall clock, CUDA synchronised; median of rounds interleaved over methods), samples per
  second, and the ratio to joint training at the same precision;
- peak memory: ``torch.cuda.max_memory_allocated`` growth while the method is built and stepped alone;
- GPU utilisation: NVML ``utilization.gpu`` (the share of time a kernel ran), sampled every 50 ms while
  the method runs alone for ``--busy`` seconds; the first third of the samples is dropped, since NVML
  averages over its own sample period (up to 1 s) and would still see the step before.

Then CGGM's extra memory (peak of CGGM minus peak of joint, and the classifiers' parameters, gradients
and optimiser state) beside the paper's 8-24 MB, and whether AMP keeps the decisions of OGM-GE, PMR and
CGGM (``mmbalance.training.amp_check``: on CUDA fp16 with loss scaling). AMP is the runner's ``--amp``: fp16 with
loss scaling on CUDA, bf16 on the CPU. cuDNN benchmark mode is on, as in a non-deterministic CUDA run.
Writes ``results/bench/gpu-<device>.{md,json}`` and prints the summary table. ``--budget`` stops
before a model that would start after that many seconds; the tables name what was left out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from bench_speed import SHAPES, bench_shape, build_trainer, cpu_name, fmt, shaped_adapter

from mmbalance.common.spec import compose
from mmbalance.training.amp_check import COEFFICIENT_KEY, AmpComparison, compare, trajectory
from mmbalance.training.data import collate
from mmbalance.training.memory import MB, method_state, tensor_bytes
from mmbalance.training.runner import resolve_device

MODELS = ("mosi", "iemocap", "food101", "cremad", "brats")  # cheapest first: BraTS is most of the time
METHODS = ("joint", "ogm_ge", "pmr", "cggm")
PAPER_CGGM_MB = "8-24"  # CGGM appendix: additional memory of the classifiers over its four datasets
AMP_ATOL, AMP_MARGIN = 0.05, 0.002  # the tolerances of tests/test_amp.py


def nvml_handle(pynvml: Any, device: torch.device) -> Any:
    """NVML's handle of ``device``, found by PCI address: NVML numbers the GPUs as the machine does, CUDA
    as ``CUDA_VISIBLE_DEVICES`` does."""
    p = torch.cuda.get_device_properties(device)
    try:
        bus = f"{p.pci_domain_id:08x}:{p.pci_bus_id:02x}:{p.pci_device_id:02x}.0"
        return pynvml.nvmlDeviceGetHandleByPciBusId(bus)
    except (AttributeError, pynvml.NVMLError):  # an older torch without PCI ids: CUDA's index
        return pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)


class Utilisation:
    """Mean NVML ``utilization.gpu`` while ``steps`` run alone for ``seconds``; ``None`` off CUDA."""

    def __init__(self, device: torch.device, seconds: float, interval: float = 0.05) -> None:
        self.seconds, self.interval, self.handle = seconds, interval, None
        if device.type != "cuda":
            return
        try:
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
            self.nvml, self.handle = pynvml, nvml_handle(pynvml, device)
        except Exception as e:  # no library or no permission: times and memory are still measured
            print(f"no GPU utilisation: NVML unavailable ({type(e).__name__}: {e})", flush=True)

    def __call__(self, steps: Callable[[int], float]) -> dict[str, Any]:
        samples: list[int] = []
        done = threading.Event()

        def sample() -> None:
            while not done.wait(self.interval):
                samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)

        thread = threading.Thread(target=sample, daemon=True) if self.handle is not None else None
        if thread is not None:
            thread.start()
        t0, n = time.perf_counter(), 1
        while True:  # doubling batches of steps: few syncs, and at least one step
            steps(n)
            if time.perf_counter() - t0 >= self.seconds:
                break
            n = min(2 * n, 32)
        done.set()
        if thread is None:
            return {"util_pct": None}
        thread.join()
        kept = samples[len(samples) // 3 :]
        return {"util_pct": statistics.mean(kept) if kept else None, "util_samples": len(kept)}


def amp_decisions(
    name: str, methods: list[str], args, device: torch.device, steps: int
) -> list[AmpComparison]:
    """``amp_check.compare`` of each method on one shape: the same batches (one random batch per step)
    from the same initial weights, fp32 against AMP."""
    inputs, target, batch_size, model_params = SHAPES[name].at(args.size, args.batch)
    adapter = shaped_adapter(name, SHAPES[name], inputs, target, n=steps * batch_size)
    data = adapter.split("train")
    batches = [collate([data[i] for i in range(k * batch_size, (k + 1) * batch_size)]).to(device)
               for k in range(steps)]  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix=f"amp-{name}-"))
    out = []
    for m in methods:
        seen = {}
        for amp in (False, True):
            tr = build_trainer(name, m, adapter, batch_size, model_params, device, amp, tmp, preset=name)
            seen[amp] = trajectory(tr, batches)
            del tr
        out.append(compare(m, seen[False], seen[True], AMP_MARGIN))
    return out


def by_method(rows: list[dict]) -> dict[tuple[str, str, bool], dict]:
    return {(r["dataset"], r["method"], r["amp"]): r for r in rows}


def own_models(rows: list[dict]) -> list[tuple[str, str, dict]]:
    """(model, method, model_params) where a preset gives a method another model than joint's (IEMOCAP's
    OGM-GE: concat fusion); its ratio to joint compares two models."""
    out = []
    for name, m in dict.fromkeys((r["dataset"], r["method"]) for r in rows):
        mine = compose({"preset": name, "method": m}).get("model_params", {})
        if mine != compose({"preset": name, "method": "joint"}).get("model_params", {}):
            out.append((name, m, mine))
    return out


def summary(rows: list[dict], skipped: dict[str, dict[str, str]], left_out: list[str]) -> str:
    """One row per model and method: fp32 | AMP side by side."""
    idx = by_method(rows)
    lines = ["| model | method | batch | ms/step fp32 | ms/step AMP | AMP speed-up | x joint fp32 | x joint AMP "
             "| samples/s fp32 | samples/s AMP | util % fp32 | util % AMP | peak MB fp32 | peak MB AMP |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in dict.fromkeys(r["dataset"] for r in rows):
        for m in METHODS:
            a, b = idx.get((name, m, False)), idx.get((name, m, True))
            if a is None and b is None:
                reason = skipped.get(name, {}).get(m, "not run")
                lines.append(f"| {name} | {m} | - | not applicable: {reason} |" + " |" * 10)
                continue
            a, b = a or {}, b or {}

            def g(r: dict, k: str, spec: str) -> str:
                return fmt(r.get(k), spec)

            speed = a["ms_per_step"] / b["ms_per_step"] if a and b else None
            lines.append(
                f"| {name} | {m} | {(a or b)['batch']} | {g(a, 'ms_per_step', '.1f')} | "
                f"{g(b, 'ms_per_step', '.1f')} | {fmt(speed, '.2f')} | {g(a, 'time_x_joint', '.2f')} | "
                f"{g(b, 'time_x_joint', '.2f')} | {g(a, 'samples_per_s', '.0f')} | {g(b, 'samples_per_s', '.0f')} "
                f"| {g(a, 'util_pct', '.0f')} | {g(b, 'util_pct', '.0f')} | {g(a, 'peak_mb', '.0f')} | "
                f"{g(b, 'peak_mb', '.0f')} |"
            )
    notes = [f"{n}/{m}: model_params {v}" for n, m, v in own_models(rows)]
    lines += (
        [f"\nOther model than joint's (the preset's method_overrides): {'; '.join(notes)}"] if notes else []
    )
    lines += [f"\nLeft out (budget): {', '.join(left_out)}"] if left_out else []
    return "\n".join(lines)


def classifiers_at_presets(models: list[str], device: torch.device) -> str:
    """CGGM's classifiers at each preset's paper-size model: parameters, gradients and optimiser state
    after one step (batch 2: they do not depend on it). Exact byte counts, the same on any device."""
    lines = ["| model | classifier params MB | gradients MB | optimiser state MB | total MB | model params MB | "
             "paper MB |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in models:
        inputs, target, _, _ = SHAPES[name].at("paper")
        adapter = shaped_adapter(name, SHAPES[name], inputs, target, n=2)
        tr = build_trainer(name, "cggm", adapter, 2, {}, device, False, Path(tempfile.mkdtemp()), preset=name)
        tr.train_batch(collate([adapter.split("train")[i] for i in range(2)]).to(device))
        mb = {k: v / MB for k, v in method_state(tr.method, tr.model, tr.optimizer).items()}
        total = mb["modules"] + mb["gradients"] + mb["optimiser_state"]
        model = tensor_bytes(tr.model.parameters()) / MB
        lines.append(f"| {name} | {mb['modules']:.2f} | {mb['gradients']:.2f} | {mb['optimiser_state']:.2f} | "
                     f"{total:.2f} | {model:.1f} | {PAPER_CGGM_MB} |")  # fmt: skip
    return "\n".join(lines)


def cggm_extra(rows: list[dict]) -> tuple[str, dict]:
    """CGGM's extra memory per model: peak minus joint's peak, and the classifiers' own tensors."""
    idx, doc = by_method(rows), {}
    lines = ["| model | precision | peak joint MB | peak CGGM MB | extra MB (peak) | classifiers MB "
             "(params + grads + optimiser) | paper MB |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for (name, m, amp), r in idx.items():
        joint = idx.get((name, "joint", amp))
        if m != "cggm" or joint is None:
            continue
        state = r["method_state_mb"]
        held = state["modules"] + state["gradients"] + state["optimiser_state"]
        extra = r["peak_mb"] - joint["peak_mb"]
        doc[f"{name}/{'amp' if amp else 'fp32'}"] = {"extra_peak_mb": extra, "classifier_state_mb": held}
        lines.append(f"| {name} | {'AMP' if amp else 'fp32'} | {joint['peak_mb']:.1f} | {r['peak_mb']:.1f} | "
                     f"{extra:.1f} | {held:.2f} | {PAPER_CGGM_MB} |")  # fmt: skip
    return "\n".join(lines), doc


def amp_table(results: list[AmpComparison], precision: str) -> str:
    lines = [f"AMP ({precision}) against fp32, {results[0].steps if results else 0} steps from the same weights "
             f"on the same batches; |coefficient difference| <= {AMP_ATOL}, held-back modality compared where "
             f"fp32's choice is clear by > {AMP_MARGIN}:", "",
             "| method | finite | max abs diff | clear choices | same choice | overflow steps | passes |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in results:
        lines.append(f"| {c.method} | {c.finite} | {c.max_abs_diff:.2g} | {c.decided} | {c.agree} | "
                     f"{c.overflow} | {c.passes(AMP_ATOL)} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", choices=("paper", "small"), default=None,
                        help="paper: the presets' shapes (default on CUDA); small: CPU-sized (default on CPU)")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--batch", type=int, default=None, help="one batch size for every model (default: each preset's)"
    )
    parser.add_argument("--steps", type=int, default=5, help="steps per method per round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the median is reported")
    parser.add_argument("--busy", type=float, default=None, help="seconds per method for utilisation "
                        "(default: 1.5 on CUDA, 0 on the CPU)")  # fmt: skip
    parser.add_argument("--amp-steps", type=int, default=6, help="steps of the AMP decision check (0: none)")
    parser.add_argument("--amp-model", default="cremad", choices=list(MODELS),
                        help="the shape of the AMP decision check")  # fmt: skip
    parser.add_argument("--budget", type=float, default=400, help="seconds; no model starts after this")
    parser.add_argument("--classifiers", action="store_true",
                        help="only CGGM's classifiers' own memory at the presets' paper-size models (any device)")  # fmt: skip
    parser.add_argument("--tag", default="")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    t_start = time.perf_counter()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(1)  # shared cores: one thread, no spin-wait thrash
    args.size = args.size or ("paper" if cuda else "small")
    busy = args.busy if args.busy is not None else (1.5 if cuda else 0.0)
    monitor = Utilisation(device, busy)
    device_name = torch.cuda.get_device_name(device) if cuda else f"CPU {cpu_name()}"
    header = (f"device: {device_name}, torch {torch.__version__}, size {args.size}; warm-up {args.warmup}, "
              f"{args.repeats} rounds x {args.steps} steps, median; utilisation over {busy:g} s per method; "
              f"AMP = {'fp16 + loss scaling' if cuda else 'bf16'}; specs: benchmarks/presets/<model>.yaml")  # fmt: skip
    print(header, flush=True)
    if args.classifiers:
        text = classifiers_at_presets(args.models, device)
        args.out.mkdir(parents=True, exist_ok=True)
        out = args.out / "cggm-classifiers-presets.md"
        out.write_text(f"CGGM's classifiers at the presets' paper-size models, after one step ({device_name}; "
                       f"exact byte counts, the same on any device):\n\n{text}\n")  # fmt: skip
        print(f"{text}\nwritten {out}")
        return 0

    rows: list[dict] = []
    skipped: dict[str, dict[str, str]] = {}
    left_out: list[str] = []
    decisions: list[AmpComparison] = []

    def write() -> str:  # after every model: a run cut short still leaves its tables
        cggm_text, cggm_doc = cggm_extra(rows)
        text = [header, "", summary(rows, skipped, left_out), "",
                f"CGGM's extra memory (paper: {PAPER_CGGM_MB} MB over its four datasets):", "", cggm_text]  # fmt: skip
        if decisions:
            text += ["", f"AMP decisions on the {args.amp_model} shape:", "",
                     amp_table(decisions, "fp16 + loss scaling" if cuda else "bf16")]  # fmt: skip
        text += ["", f"total {time.perf_counter() - t_start:.0f} s"]
        doc = {"header": header, "device": device_name, "size": args.size, "rows": rows, "skipped": skipped,
               "left_out": left_out, "cggm_extra_mb": cggm_doc, "amp_decisions": [vars(c) for c in decisions]}  # fmt: skip
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
        (args.out / f"{stem}.md").write_text("\n".join(text) + "\n")
        return "\n".join(text)

    slug = "-".join(device_name.lower().replace("nvidia", "").split()) if cuda else "cpu"
    stem = f"gpu-{slug}-{args.size}{'-' + args.tag if args.tag else ''}"
    for name in args.models:
        if time.perf_counter() - t_start > args.budget:
            left_out.append(name)
            continue
        for amp in (False, True):
            t0 = time.perf_counter()
            ns = SimpleNamespace(size=args.size, model_params={}, amp=amp, warmup=args.warmup, steps=args.steps,
                                 repeats=args.repeats, clip=None, batch=args.batch)  # fmt: skip
            try:
                got = bench_shape(name, SHAPES[name], list(METHODS), ns, device, preset=name, monitor=monitor,
                                  skipped=skipped.setdefault(name, {}))  # fmt: skip
            except Exception as e:  # out of memory, a kernel missing: the other models still run
                left_out.append(f"{name} {'AMP' if amp else 'fp32'} ({type(e).__name__}: {str(e)[:160]})")
                print(f"  {name}: failed: {left_out[-1]}", flush=True)
                got = []
            for r in got:
                r["amp"], r["samples_per_s"] = amp, r["batch"] / (r["ms_per_step"] / 1000)
            rows += got
            print(f"  {name} {'AMP' if amp else 'fp32'}: {time.perf_counter() - t0:.0f} s", flush=True)
            if cuda:
                torch.cuda.empty_cache()
        write()

    if args.amp_steps > 0 and time.perf_counter() - t_start <= args.budget:
        t0 = time.perf_counter()
        methods = [m for m in METHODS if m in COEFFICIENT_KEY and m not in skipped.get(args.amp_model, {})]
        decisions = amp_decisions(args.amp_model, methods, args, device, args.amp_steps)
        print(f"  AMP decisions on {args.amp_model}: {time.perf_counter() - t0:.0f} s", flush=True)
    print("\n" + write(), flush=True)
    print(f"written {args.out / stem}.md and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
