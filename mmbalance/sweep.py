"""Suites: a YAML file that expands into many run specs (datasets x methods x seeds).

```yaml
name: all
seeds: [0, 1, 2]
base: {epochs: 15, batch_size: 64}            # spec fields shared by every run
datasets:                                      # each: spec fields for that dataset, optional preset
  - {dataset: synthetic, dataset_params: {task: classification}}
  - {dataset: mosi, preset: mosi}              # merges benchmarks/presets/mosi.yaml
methods:                                       # each: spec fields for that method
  - {method: joint}
  - {method: unimodal}                         # expands to one run per modality
  - {method: ogm_ge, method_params: {alpha: 0.8}}
```

A preset file is a spec fragment; its optional ``method_overrides: {method_name: {spec fields}}`` applies
only to runs of that method (e.g. CGGM's rho and lambda per dataset). Merge order (``spec.compose``):
code defaults < preset (with its method_overrides) < base < dataset entry < method entry, then the seed.
A method that does not apply to a dataset's task is skipped with its reason; a dataset whose files
are missing is skipped with one line. Runs are content-addressed, so finished runs are reused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mmbalance.core import DataMissingError, MethodNotApplicable, StrictModel
from mmbalance.registry import DATASETS, METHODS
from mmbalance.spec import (  # noqa: F401 (load_preset, PRESETS_DIR: re-exported for scripts)
    PRESETS_DIR,
    RunSpec,
    SpecError,
    _format_validation,
    compose,
    load_preset,
    load_yaml,
    validate_spec,
)

WAIT_POLL_S = 10.0  # sweep --wait: how often to look at the locks of runs another process holds


class Suite(StrictModel):
    name: str
    description: str = ""
    seeds: list[int] = [0, 1, 2]
    base: dict[str, Any] = {}
    datasets: list[dict[str, Any]]
    methods: list[dict[str, Any]]
    executor: dict[str, Any] = {}  # scale-out options (see `mmbalance sweep --help`)
    wandb: dict[str, Any] | None = None  # W&B logging: {project, entity, mode, tags} (mmbalance.wandb_log)


@dataclass
class Planned:
    spec: RunSpec | None
    label: str  # dataset/method(params) seed, for progress and summaries
    skip_reason: str = ""


def load_suite(path: str | Path) -> Suite:
    data = load_yaml(path)
    try:
        return Suite.model_validate(data)
    except ValidationError as e:
        raise SpecError(f"{path}: invalid suite:\n{_format_validation(e)}") from None


def _label(spec: RunSpec, with_seed: bool = True) -> str:
    """``dataset/task method(non-default params) seed N``."""
    task = spec.dataset_params.get("task")
    defaults = METHODS.get(spec.method).Params().model_dump(mode="json")
    changed = {k: v for k, v in spec.method_params.items() if v != defaults.get(k)}
    params = ",".join(f"{k}={v}" for k, v in sorted(changed.items()))
    seed = f" seed {spec.seed}" if with_seed else ""
    return f"{spec.dataset}{'/' + task if task else ''} {spec.method}{'(' + params + ')' if params else ''}{seed}"


def plan(suite: Suite, data_root: Path | None = None) -> list[Planned]:
    """Expand a suite into run specs; entries that cannot run carry a skip reason instead."""
    planned: list[Planned] = []
    for entry in suite.datasets:
        probe = validate_spec(compose(suite.base, entry))  # validates dataset fields before expanding methods
        adapter_cls = DATASETS.get(probe.dataset)
        root = Path(data_root) / probe.dataset if data_root is not None else None
        adapter = adapter_cls(adapter_cls.Params.model_validate(probe.dataset_params), root)
        try:
            adapter.verify()
        except DataMissingError as e:
            first = str(e).splitlines()[0]
            planned.append(Planned(None, f"{probe.dataset} (all methods)", f"data missing: {first}"))
            continue
        for method_entry in suite.methods:
            method_name = method_entry.get("method", "joint")
            doc = compose(suite.base, entry, {"method": method_name, **method_entry})
            method_cls = METHODS.get(method_name)
            for params in method_cls.variants(doc.get("method_params", {}), adapter.task):
                for seed in suite.seeds:
                    spec = validate_spec({**doc, "method_params": params, "seed": seed})
                    try:
                        method_cls(method_cls.Params.model_validate(spec.method_params)).check(adapter.task)
                    except MethodNotApplicable as e:
                        if seed == suite.seeds[0]:  # one line for all seeds
                            planned.append(
                                Planned(None, _label(spec, with_seed=False), f"not applicable: {e}")
                            )
                        continue
                    planned.append(Planned(spec, _label(spec)))
    return planned


def run_local(
    planned: list[Planned],
    results: Path,
    data_root: Path | None = None,
    device: str = "auto",
    progress: bool = True,
    amp: bool = False,
    workers: int | None = None,
    restart: bool = False,
    deterministic: bool = False,
) -> list[tuple[Planned, Any]]:
    """Run every planned spec here, one after another. A failed run is recorded and the sweep goes on."""
    from tqdm.auto import tqdm

    from mmbalance.runner import RunResult, train

    outcomes = []
    runnable = [p for p in planned if p.spec is not None]
    for p in tqdm(runnable, desc="sweep", unit="run", disable=not progress):
        try:
            outcome = train(p.spec, results, data_root, device=device, progress=progress, amp=amp,
                            workers=workers, restart=restart, deterministic=deterministic)  # fmt: skip
        except MethodNotApplicable as e:  # refused by the model it would train (nothing was written)
            outcome = RunResult("-", Path(), "not applicable", reason=str(e))
        except Exception as e:  # recorded as failed by train(); keep going with the next run
            outcome = RunResult("?", Path(), "failed", reason=f"{type(e).__name__}: {e}")
        outcomes.append((p, outcome))
    return outcomes


def wait_for_elsewhere(
    outcomes: list[tuple[Planned, Any]], rerun: Callable[[list[Planned]], list[tuple[Planned, Any]]],
    poll_s: float | None = None, say: Callable[[str], None] = print,
) -> list[tuple[Planned, Any]]:  # fmt: skip
    """``sweep --wait``: until no run is ``running elsewhere``, wait for the other worker to release its
    lock, then ``rerun`` those runs here (finished ones are reused, a dead worker's run is resumed)."""
    from mmbalance.records import RunDir
    from mmbalance.status import run_state

    outcomes, poll_s = list(outcomes), poll_s or WAIT_POLL_S
    while waiting := [i for i, (_, r) in enumerate(outcomes) if r.status == "running elsewhere"]:
        say(f"waiting for {len(waiting)} run(s) running in another process (checking every {poll_s:g} s)")
        while all(run_state(RunDir(outcomes[i][1].path)).state == "running" for i in waiting):
            time.sleep(poll_s)
        for i, outcome in zip(waiting, rerun([outcomes[i][0] for i in waiting]), strict=True):
            outcomes[i] = outcome
    return outcomes


def run_ids(planned: list[Planned], data_root: Path | None = None) -> dict[str, str]:
    """``{run_id: label}`` of the runnable specs (what ``mmbalance status --suite`` looks for)."""
    from mmbalance.runner import prepare

    return {prepare(p.spec, Path("."), data_root)[2].run_id: p.label for p in planned if p.spec is not None}


def summary_rows(outcomes: list[tuple[Planned, Any]], skipped: list[Planned]) -> list[dict[str, str]]:
    rows = []
    for p, r in outcomes:
        value = ""
        if r.final is not None:
            key = r.final["selection_metric"]
            value = f"{key} {r.final['test'][key]:.3f}"
        rows.append({"run": p.label, "status": r.status, "test": value or r.reason[:80], "id": r.run_id})
    rows += [{"run": p.label, "status": "skipped", "test": p.skip_reason[:100], "id": ""} for p in skipped]
    return rows
