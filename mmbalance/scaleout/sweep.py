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

Each dataset entry is a *block* (a row of the critical-difference ranking): ``block: NAME`` names it
(default: the dataset and its task), ``seeds: [...]`` overrides the suite's seeds for it. Under
``protocol: tuned`` every (block, method) runs with what ``mmbalance tune`` chose for it
(``benchmarks/tuned/<suite>.yaml``, see ``tuned.py``); ``with_defaults: true`` on a block runs it
under the default protocol too, for the tuned-vs-defaults column. ``tuning:`` sets the search
(``tune.py``): trials per (block, method), the tuning seeds (disjoint from the reported ones), the
sampler's seed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PositiveInt, StrictInt, ValidationError, model_validator

from mmbalance.common.core import DataMissingError, FileName, MethodNotApplicable, StrictModel
from mmbalance.common.registry import METHODS
from mmbalance.common.spec import (  # noqa: F401 (load_preset, PRESETS_DIR: re-exported for scripts)
    PRESETS_DIR,
    RunSpec,
    SpecError,
    _format_validation,
    compose,
    deep_merge,
    load_preset,
    load_yaml,
    validate_spec,
)
from mmbalance.scaleout.grid import expand, grid_label, with_grid
from mmbalance.scaleout.tuned import apply_tuned, load_tuned, tuned_path

if TYPE_CHECKING:  # the data contract imports MONAI; reports plan suites without it
    from mmbalance.training.data import TaskInfo
    from mmbalance.training.runner import RunOptions

WAIT_POLL_S = 10.0  # sweep --wait: how often to look at the locks of runs another process holds


# Keys of a suite's dataset entry that belong to the suite, not to the run spec.
BLOCK_KEYS = ("block", "seeds", "with_defaults")


class TuningSettings(StrictModel):
    """``mmbalance tune``: the same budget for every (block, method) (``tune.py``)."""

    trials: PositiveInt = 8  # per (block, method); trial 0 is the defaults
    seeds: list[int] = [100, 101]  # the objective is the validation score averaged over these
    sampler_seed: int = 0
    startup_trials: PositiveInt = 4  # trials drawn at random before TPE models the scores
    file: str | None = None  # the tuned settings (default: benchmarks/tuned/<suite name>.yaml)


class Suite(StrictModel):
    name: FileName  # becomes file names (report tables): one safe component, never a path
    description: str = ""
    seeds: list[StrictInt] = Field([0, 1, 2], min_length=1)  # integers only: `true` is not seed 1
    base: dict[str, Any] = {}
    datasets: list[dict[str, Any]] = Field(min_length=1)  # an empty suite is a mistake, not "all done"
    methods: list[dict[str, Any]] = Field(min_length=1)
    protocol: Literal["defaults", "tuned"] = "defaults"
    tuning: TuningSettings = TuningSettings()
    executor: dict[str, Any] = {}  # scale-out options (see `mmbalance sweep --help`)
    wandb: dict[str, Any] | None = (
        None  # W&B logging: {project, entity, mode, tags} (mmbalance.training.wandb_log)
    )

    @model_validator(mode="after")
    def _blocks(self) -> Suite:
        names = [block_name(e) for e in self.datasets]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(
                f"datasets: block names must be unique, {', '.join(dupes)} repeat (set `block:`)"
            )
        reported = set(self.seeds).union(*(e.get("seeds", []) for e in self.datasets))
        if shared := sorted(reported & set(self.tuning.seeds)):
            raise ValueError(f"tuning.seeds {shared} are also reported seeds: tuning must not see them")
        return self


def block_name(entry: dict[str, Any]) -> str:
    """A dataset entry's block: its ``block`` field, else the dataset and its task."""
    task = (entry.get("dataset_params") or {}).get("task")
    return entry.get("block") or f"{entry.get('dataset', 'synthetic')}{'/' + task if task else ''}"


def spec_fragment(entry: dict[str, Any]) -> dict[str, Any]:
    """A dataset entry without its block keys: the spec fields it sets."""
    return {k: v for k, v in entry.items() if k not in BLOCK_KEYS}


@dataclass
class Planned:
    spec: RunSpec | None
    label: str  # dataset/method(params) seed, for progress and summaries
    skip_reason: str = ""
    block: str = ""


@dataclass
class Cell:
    """One (block, method variant) of a suite: what ``tune`` searches and ``plan`` expands by seed."""

    block: str
    method: str
    label: str  # the method and its non-default params: the key in benchmarks/tuned/
    doc: dict[str, Any]  # the spec document under the default protocol, without a seed
    variant: dict[str, Any]  # the variant's method_params (unimodal: the modality)
    seeds: list[int]
    with_defaults: bool
    task: TaskInfo
    grid: str = ""  # the grid point beyond the method's parameters, "optim.lr=0.01" (``grid.grid_label``)


def load_suite(path: str | Path) -> Suite:
    return suite_from_doc(load_yaml(path), str(path))


def suite_from_doc(data: Any, where: str) -> Suite:
    """A validated suite; top-level ``x-...`` keys hold YAML anchors for the entries (as in Compose files)."""
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if not str(k).startswith("x-")}
    try:
        return Suite.model_validate(data)
    except ValidationError as e:
        raise SpecError(f"{where}: invalid suite:\n{_format_validation(e, model=Suite)}") from None


def _label(spec: RunSpec, with_seed: bool = True, grid: str = "") -> str:
    """``dataset/task method(non-default params,grid point) seed N``."""
    task = spec.dataset_params.get("task")
    seed = f" seed {spec.seed}" if with_seed else ""
    return f"{spec.dataset}{'/' + task if task else ''} {with_grid(method_label(spec.method, spec.method_params), grid)}{seed}"


def method_label(method: str, params: dict[str, Any]) -> str:
    """``method(non-default params)``: a method entry's name within its block."""
    defaults = METHODS.get(method).Params().model_dump(mode="json")
    changed = {k: v for k, v in params.items() if v != defaults.get(k)}
    shown = ",".join(f"{k}={v}" for k, v in sorted(changed.items()))
    return f"{method}{'(' + shown + ')' if shown else ''}"


def cells(
    suite: Suite, data_root: Path | None = None, overrides: dict[str, Any] | None = None
) -> list[Cell | Planned]:
    """The suite's (block, method variant) cells in suite order; what cannot run is a skipped ``Planned``.
    Lists in one-value fields are grids (``grid.py``): a dataset entry expands into one block per point,
    a method entry into one cell per point. ``overrides`` (``sweep --set``) sit above every entry."""
    from mmbalance.training.runner import (
        make_adapter,  # training code only where a plan is made, not for reports
    )

    top = overrides or {}
    out: list[Cell | Planned] = []
    for entry in suite.datasets:
        names = compose(suite.base, spec_fragment(entry))
        for fragment, point in expand(deep_merge(spec_fragment(entry), _data_fields(top)), names):
            block = with_grid(block_name(entry), grid_label(point))
            probe = validate_spec(compose(suite.base, fragment))  # validates dataset fields before expanding
            adapter = make_adapter(probe, data_root)
            try:
                adapter.verify()
            except DataMissingError as e:
                first = str(e).splitlines()[0]
                out.append(Planned(None, f"{probe.dataset} (all methods)", f"data missing: {first}", block))
                continue
            for method_entry in suite.methods:
                out += _method_cells(suite, entry, fragment, deep_merge(method_entry, _method_fields(top)),
                                     block, adapter.task)  # fmt: skip
    return out


DATA_FIELDS = ("dataset", "dataset_params", "model_params")  # --set fields that make another block


def _data_fields(top: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in top.items() if k in DATA_FIELDS}


def _method_fields(top: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in top.items() if k not in DATA_FIELDS}


def _method_cells(suite: Suite, entry: dict[str, Any], fragment: dict[str, Any], method_entry: dict[str, Any],
                  block: str, task: TaskInfo) -> list[Cell | Planned]:  # fmt: skip
    """The cells of one method entry on one block: one per method named (``method: [joint, cggm]``), grid
    point and method variant."""
    names = method_entry.get("method", "joint")
    out: list[Cell | Planned] = []
    for method_name in names if isinstance(names, list) else [names]:
        out += _one_method_cells(suite, entry, fragment, {**method_entry, "method": method_name}, block, task)
    return out


def _one_method_cells(suite: Suite, entry: dict[str, Any], fragment: dict[str, Any], method_entry: dict[str, Any],
                      block: str, task: TaskInfo) -> list[Cell | Planned]:  # fmt: skip
    from mmbalance.training.runner import make_method  # training code only where a plan is made

    method_name = method_entry["method"]
    method_cls = METHODS.get(method_name)
    out: list[Cell | Planned] = []
    for grid_entry, point in expand(method_entry, compose(suite.base, fragment)):
        doc = compose(suite.base, fragment, grid_entry)
        for params in method_cls.variants(doc.get("method_params", {}), task):
            spec = validate_spec({**doc, "method_params": params})
            try:
                make_method(spec).check(task)
            except MethodNotApplicable as e:
                out.append(Planned(None, _label(spec, with_seed=False), f"not applicable: {e}", block))
                continue
            out.append(Cell(block, method_name, with_grid(method_label(method_name, spec.method_params), grid_label(point)),
                            {**doc, "method_params": params}, params, entry.get("seeds", suite.seeds),
                            bool(entry.get("with_defaults")), task, grid_label(point)))  # fmt: skip
    return out


def plan(
    suite: Suite, data_root: Path | None = None, overrides: dict[str, Any] | None = None
) -> list[Planned]:
    """Expand a suite into run specs; entries that cannot run carry a skip reason instead.
    Under ``protocol: tuned`` each cell takes its tuned settings (a cell without any is an error).
    ``overrides``: spec fields above every entry (``sweep --set``; a list is a grid axis)."""
    tuned = None
    if suite.protocol == "tuned":
        try:
            tuned = load_tuned(tuned_path(suite.name, suite.tuning.file))
        except (OSError, ValueError) as e:
            raise SpecError(str(e)) from None
    planned: list[Planned] = []
    seen: set[str] = set()  # a run listed twice (a repeated seed or method) is planned once
    for cell in cells(suite, data_root, overrides):
        if isinstance(cell, Planned):
            planned.append(cell)
            continue
        docs = [cell.doc]
        if tuned is not None:
            entry = tuned.blocks.get(cell.block, {}).get(cell.label)
            if entry is None:
                raise SpecError(f"{tuned_path(suite.name, suite.tuning.file)}: no tuned settings for block "
                                f"{cell.block!r}, method {cell.label!r}; run `mmbalance tune` on the suite "
                                "(make tune) or set `protocol: defaults`")  # fmt: skip
            docs = [apply_tuned(cell.doc, entry, tuned)] + ([cell.doc] if cell.with_defaults else [])
        for doc in docs:
            for seed in cell.seeds:
                spec = validate_spec({**doc, "seed": seed})
                if (key := json.dumps(spec.canonical(), sort_keys=True)) not in seen:
                    seen.add(key)
                    label = _label(spec, grid=cell.grid) + (" (tuned)" if spec.tuned else "")
                    planned.append(Planned(spec, label, block=cell.block))
    return planned


def run_local(
    planned: list[Planned],
    results: Path,
    data_root: Path | None = None,
    options: RunOptions | None = None,
    wandb: Any = None,
    group: str | None = None,
) -> list[tuple[Planned, Any]]:
    """Run every planned spec here, one after another. A failed run is recorded and the sweep goes on.
    ``wandb`` (``wandb_log.WandbSettings``): each run is logged live, in W&B group ``group``."""
    from tqdm.auto import tqdm

    from mmbalance.training.runner import RunOptions, run_outcome

    options = options or RunOptions()
    runnable = [p for p in planned if p.spec is not None]
    return [
        (p, run_outcome(p.spec, results, data_root, options, wandb, group))
        for p in tqdm(runnable, desc="sweep", unit="run", disable=not options.progress)
    ]


def wait_for_elsewhere(
    outcomes: list[tuple[Planned, Any]], rerun: Callable[[list[Planned]], list[tuple[Planned, Any]]],
    poll_s: float | None = None, say: Callable[[str], None] = print,
) -> list[tuple[Planned, Any]]:  # fmt: skip
    """``sweep --wait``: until no run is ``running elsewhere``, wait for the other worker to release its
    lock, then ``rerun`` those runs here (finished ones are reused, a dead worker's run is resumed)."""
    from mmbalance.common.records import RunDir
    from mmbalance.common.status import run_state

    outcomes, poll_s = list(outcomes), poll_s or WAIT_POLL_S
    while waiting := [i for i, (_, r) in enumerate(outcomes) if r.status == "running elsewhere"]:
        say(f"waiting for {len(waiting)} run(s) running in another process (checking every {poll_s:g} s)")
        while all(run_state(RunDir(outcomes[i][1].path)).state == "running" for i in waiting):
            time.sleep(poll_s)
        for i, outcome in zip(waiting, rerun([outcomes[i][0] for i in waiting]), strict=True):
            outcomes[i] = outcome
    return outcomes


def run_ids(planned: list[Planned], data_root: Path | None = None, declared: bool = False) -> dict[str, str]:
    """``{run_id: label}`` of the runnable specs (what ``mmbalance status --suite`` looks for). The data
    fingerprint is computed once per data configuration (dataset, its params, and the seed where the seed
    draws the data), not once per run: a suite has hundreds of runs and a handful of datasets.
    ``declared``: take it from ``benchmarks/fingerprints.yaml`` or the fingerprint cache where known
    (``planning.py``: status and dry runs build no data); a computed one is cached."""
    from mmbalance.common.comparison import seed_draws_data
    from mmbalance.scaleout.planning import known_fingerprint, remember_fingerprint
    from mmbalance.training.runner import data_fingerprint, make_adapter

    fingerprints: dict[tuple, str] = {}
    out = {}
    for p in planned:
        if p.spec is None:
            continue
        spec = p.spec.canonical()
        data = (spec["dataset"], json.dumps(spec["dataset_params"], sort_keys=True),
                spec["seed"] if seed_draws_data(spec) else None)  # fmt: skip
        if data not in fingerprints:
            adapter = make_adapter(p.spec, data_root)
            adapter.verify()
            known = known_fingerprint(adapter) if declared else None
            if known is None:
                known = data_fingerprint(adapter)
                remember_fingerprint(adapter, known)
            fingerprints[data] = known
        out[p.spec.run_id(fingerprints[data])] = p.label
    return out


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
