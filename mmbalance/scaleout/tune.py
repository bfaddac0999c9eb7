"""``mmbalance tune SUITE``: the same tuning budget for every (block, method), selection on validation.

The protocol of DomainBed (Gulrajani and Lopez-Paz, "In Search of Lost Domain Generalization", ICLR
2021), applied to balancing methods. Every cell of a suite (a block times a method variant, joint
training and the unimodal references included) gets one Optuna study with the same budget:

- trial 0 is the cell's defaults (the method's official defaults as the suite sets them), so tuning
  never picks a setting that validates worse than the defaults;
- the other trials are drawn by TPE (the first ``startup_trials`` at random) from the shared optimiser
  space (``search_space.OPTIM_SPACE``) and the method's own ``search_space``;
- a trial trains one run per tuning seed (disjoint from the reported seeds; on synthetic data and mfeat
  they also draw the data) with ``evaluate_test: false``: the test split is never built, read or
  fingerprinted. The objective is the mean over those runs of the best-epoch validation primary metric.

Trials are runs like any other: content-addressed under ``<results>/tuning/runs/``, so a killed tune
resumes (finished trials from the study database, the interrupted trial's runs from their checkpoints).
The sampler is seeded per trial from (sampler seed, block, method, trials so far), so a study's trials
depend only on its own history: the same with ``--jobs 1`` or 8, interrupted or not. One process tunes
a study at a time (a lock per study), so several workers can share the studies of a suite through one
storage (``--storage URL``: the default SQLite file, or a server database for workers on several hosts).
``--prune`` stops unpromising trials on their per-epoch validation (Optuna's median rule, first tuning
seed); they are recorded as pruned, count towards the budget and are never chosen.

Writes ``benchmarks/tuned/<suite>.yaml`` (the settings ``make bench-all`` runs; ``tuned.py``) and every
trial to ``<results>/tuning/<suite>-trials.csv``.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmbalance.common.records import atomic_write_text, rows_to_csv
from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import OPTIM_SPACE, Dim, Epochs, sample, space_hash
from mmbalance.common.spec import SpecError, validate_spec
from mmbalance.scaleout.sweep import Cell, Planned, Suite, TuningSettings, cells, load_suite
from mmbalance.scaleout.tuned import TunedEntry, TunedFile, dump_tuned, set_path, tuned_path

__all__ = ["cell_space", "tune", "tune_cell", "TuneOutcome"]


def cell_space(cell: Cell) -> dict[str, Dim]:
    """What tuning may change in a cell, by spec path: the shared optimiser space and the method's own."""
    own = METHODS.get(cell.method).search_space
    return {**OPTIM_SPACE, **{f"method_params.{k}": d for k, d in own.items()}}


def study_name(suite: str, cell: Cell, settings: TuningSettings) -> str:
    """Unique per suite, cell, search space, tuning seeds and sampler: a changed space starts afresh."""
    what = f"{space_hash(cell_space(cell))}|seeds={settings.seeds}|sampler={settings.sampler_seed},{settings.startup_trials}"
    return f"{suite}|{cell.block}|{cell.label}|{hashlib.sha256(what.encode()).hexdigest()[:12]}"


@dataclass
class TuneOutcome:
    cell: Cell
    status: str  # done / elsewhere (another worker holds the study) / error
    entry: TunedEntry | None = None
    trials: list[dict[str, Any]] | None = None  # the CSV rows
    reason: str = ""


class _TrialFailed(Exception):
    """A trial that gave no score: a refused combination of values, a diverged or failed run."""


def _storage(url: str):
    import optuna

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # Several processes share the file: wait for its write lock instead of failing at once.
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})
    return optuna.storages.RDBStorage(url)


def _defaults(cell: Cell, space: dict[str, Dim]) -> dict[str, Any]:
    """The cell's own values of the searched paths (trial 0)."""
    canonical = validate_spec(cell.doc).canonical()
    out = {}
    for path in space:
        node: Any = canonical
        for part in path.split("."):
            node = node[part]
        out[path] = node
    return out


def _evaluate(cell: Cell, values: dict[str, Any], settings: TuningSettings, results: Path,
              data_root: Path | None, report: Callable[[int, dict[str, Any]], None] | None) -> tuple[float, list[float], list[str]]:  # fmt: skip
    """Train the trial's run per tuning seed; the mean best-epoch validation score."""
    from mmbalance.training.runner import train

    doc = cell.doc
    for path, value in values.items():
        doc = set_path(doc, path, value)
    scores, run_ids = [], []
    for i, seed in enumerate(settings.seeds):
        try:
            spec = validate_spec({**doc, "seed": seed, "evaluate_test": False, "probe_every": 0})
        except SpecError as e:
            raise _TrialFailed(f"refused combination: {' '.join(str(e).split())}") from None
        try:
            r = train(spec, results, data_root, progress=False, on_epoch=report if i == 0 else None)
        except Exception as e:  # recorded as failed on disk by train(); the trial gives no score
            raise _TrialFailed(f"{type(e).__name__}: {e}") from None
        run_ids.append(r.run_id)
        if r.status == "pruned":
            import optuna

            raise optuna.TrialPruned(r.reason)
        if r.final is None:
            raise _TrialFailed(f"run {r.run_id} {r.status}: {r.reason}")
        scores.append(float(r.final["valid"][cell.task.primary_metric]))
    return sum(scores) / len(scores), scores, run_ids


def tune_cell(cell: Cell, suite_name: str, settings: TuningSettings, storage_url: str, results: Path,
              data_root: Path | None = None, prune: bool = False, threads: int | None = None) -> TuneOutcome:  # fmt: skip
    """Run (or resume) the cell's study up to the budget; its tuned entry and trial rows."""
    import optuna
    from optuna.trial import TrialState

    from mmbalance.common.locks import RunLock
    from mmbalance.training.runner import Pruned

    if threads:
        torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space, metric = cell_space(cell), cell.task.primary_metric
    name = study_name(suite_name, cell, settings)
    storage = _storage(storage_url)
    direction = "maximize" if cell.task.higher_is_better else "minimize"
    lock_file = results / "tuning" / "locks" / f"{hashlib.sha256(name.encode()).hexdigest()[:16]}.lock"
    with RunLock(lock_file) as lock:
        if not lock.acquired:
            return TuneOutcome(
                cell, "elsewhere", reason=f"locked by {lock.holder.describe() if lock.holder else '?'}"
            )
        study = optuna.create_study(
            study_name=name, storage=storage, direction=direction, load_if_exists=True
        )
        trials = study.get_trials()
        epochs = validate_spec(cell.doc).epochs
        defaults = _defaults(cell, space)
        if not trials:  # the sampler sees the defaults inside its ranges; the run uses them as they are
            study.enqueue_trial(_encode(_inside(defaults, space, epochs)), user_attrs={"defaults": True})
        for t in trials:  # a trial left running by a killed process: closed, and its values tried again
            if t.state == TrialState.RUNNING:
                study.tell(t.number, state=TrialState.FAIL)
                study.enqueue_trial(t.params, user_attrs=dict(t.user_attrs))
        base_seed = int(
            hashlib.sha256(f"{settings.sampler_seed}|{cell.block}|{cell.label}".encode()).hexdigest()[:8], 16
        )
        while (done := len(_counted(study))) < settings.trials:
            sampler = optuna.samplers.TPESampler(
                seed=base_seed + done, n_startup_trials=settings.startup_trials
            )
            pruner = optuna.pruners.MedianPruner(
                n_startup_trials=settings.startup_trials, n_warmup_steps=max(1, epochs // 3)
            )
            study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
            trial = study.ask()
            values = {path: sample(trial, path, dim, epochs) for path, dim in space.items()}
            if trial.user_attrs.get("defaults"):
                values = (
                    defaults  # e.g. OGM-GE's modulation_ends 50 of a 12-epoch run, as the defaults run it
                )
            trial.set_user_attr("set", values)

            def report(epoch: int, valid: dict[str, Any], trial=trial) -> None:
                trial.report(float(valid[metric]), epoch)
                if trial.should_prune():
                    raise Pruned(f"pruned at epoch {epoch} (median rule)")

            t0 = time.perf_counter()
            try:
                mean, scores, run_ids = _evaluate(cell, values, settings, results / "tuning", data_root,
                                                  report if prune else None)  # fmt: skip
            except optuna.TrialPruned as e:
                trial.set_user_attr("reason", str(e))
                study.tell(trial, state=TrialState.PRUNED)
                continue
            except _TrialFailed as e:
                trial.set_user_attr("reason", str(e)[:500])
                study.tell(trial, state=TrialState.FAIL)
                continue
            trial.set_user_attr("scores", scores)
            trial.set_user_attr("runs", run_ids)
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 2))
            study.tell(trial, mean)
    return _outcome(cell, study, space, metric)


def _inside(values: dict[str, Any], space: dict[str, Dim], epochs: int) -> dict[str, Any]:
    """``values`` clamped into their ranges: an official schedule longer than the run (OGM-GE modulates
    until epoch 50) is, for the run, the same as the range's last epoch."""
    out = dict(values)
    for path, dim in space.items():
        lo, hi = (
            dim.bounds(epochs)
            if isinstance(dim, Epochs)
            else (getattr(dim, "low", None), getattr(dim, "high", None))
        )
        if lo is not None and isinstance(out[path], int | float) and not isinstance(out[path], bool):
            out[path] = type(out[path])(min(max(out[path], lo), hi))
    return out


def _encode(values: dict[str, Any]) -> dict[str, Any]:
    """Values as Optuna stores them (lists and dicts of a ``Choice`` as their JSON text)."""
    return {k: json.dumps(v, sort_keys=True) if isinstance(v, list | dict) else v for k, v in values.items()}


def _counted(study) -> list:
    """The trials that count towards the budget: finished ones, not those closed after a crash."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials()
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and "reason" in t.user_attrs)]  # fmt: skip


def _outcome(cell: Cell, study, space: dict[str, Dim], metric: str) -> TuneOutcome:
    from optuna.trial import TrialState

    counted = _counted(study)
    complete = [t for t in counted if t.state == TrialState.COMPLETE]
    # The best validation score; ties go to the earliest trial (the defaults first).
    sign = 1 if study.direction.name == "MAXIMIZE" else -1
    best = max(complete, key=lambda t: (sign * t.value, -t.number)) if complete else None
    defaults = next((t for t in complete if t.user_attrs.get("defaults")), None)
    entry = TunedEntry(
        method=cell.method, variant=cell.variant,
        set=best.user_attrs["set"] if best else _defaults(cell, space),
        method_space=space_hash(METHODS.get(cell.method).search_space), trials=len(counted),
        complete=len(complete), best_valid=best.value if best else None,
        default_valid=defaults.value if defaults else None, metric=metric,
    )  # fmt: skip
    rows = [{
        "block": cell.block, "method": cell.label, "trial": t.number, "state": t.state.name.lower(),
        "value": t.value, "chosen": best is not None and t.number == best.number,
        "defaults": bool(t.user_attrs.get("defaults")), "scores": json.dumps(t.user_attrs.get("scores", [])),
        "set": json.dumps(t.user_attrs.get("set", {}), sort_keys=True), "runs": " ".join(t.user_attrs.get("runs", [])),
        "reason": t.user_attrs.get("reason", ""),
    } for t in counted]  # fmt: skip
    return TuneOutcome(cell, "done", entry, rows)


# --- the whole suite ---------------------------------------------------------------------------------
def tune(suite_path: Path | str, results: Path | str = "results", storage: str | None = None, jobs: int = 1,
         data_root: Path | None = None, prune: bool = False, progress: bool = True,
         say: Callable[[str], None] = print) -> tuple[Path | None, list[TuneOutcome]]:  # fmt: skip
    """Tune every cell of the suite; write the tuned file when every study is complete.
    Returns the file (None if some studies are unfinished) and each cell's outcome."""
    from tqdm.auto import tqdm

    suite, results = load_suite(suite_path), Path(results)
    storage = storage or f"sqlite:///{results / 'tuning' / (suite.name + '.db')}"
    planned = cells(suite, data_root)
    for skipped in (c for c in planned if isinstance(c, Planned)):
        say(f"skip {skipped.label}: {skipped.skip_reason}")
    todo = [c for c in planned if isinstance(c, Cell)]
    _storage(storage)  # creates the database's tables once, before workers race to
    args = (suite.name, suite.tuning, storage, results, data_root, prune)
    outcomes: list[TuneOutcome] = []
    with tqdm(total=len(todo), desc=f"tune {suite.name}", unit="study", disable=not progress) as bar:
        if jobs <= 1:
            for cell in todo:
                outcomes.append(_guarded(cell, *args))
                bar.update(1)
        else:
            threads = max(1, (os.cpu_count() or 1) // jobs)
            ctx = multiprocessing.get_context("spawn")  # as the sweep's pool: no fork after torch started
            from mmbalance.scaleout.executors import _die_with_parent

            with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_die_with_parent,
                                     initargs=(os.getpid(),)) as pool:  # fmt: skip
                futures = [pool.submit(_guarded, cell, *args, threads) for cell in todo]
                for f in as_completed(futures):
                    outcomes.append(f.result())
                    bar.update(1)
    index = {(c.block, c.label): i for i, c in enumerate(todo)}  # suite order, whatever finished first
    outcomes.sort(key=lambda o: index[(o.cell.block, o.cell.label)])
    return _write(suite, results, outcomes, say), outcomes


def _guarded(cell: Cell, *args: Any) -> TuneOutcome:
    try:
        return tune_cell(cell, *args)
    except Exception as e:  # one broken study must not stop the others; reported at the end
        return TuneOutcome(cell, "error", reason=f"{type(e).__name__}: {e}")


def _write(
    suite: Suite, results: Path, outcomes: list[TuneOutcome], say: Callable[[str], None]
) -> Path | None:
    rows = [row for o in outcomes for row in (o.trials or [])]
    csv = results / "tuning" / f"{suite.name}-trials.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(csv, rows_to_csv(rows))
    unfinished = [o for o in outcomes if o.status != "done"]
    for o in unfinished:
        say(f"{o.cell.block} {o.cell.label}: {o.status} {o.reason}")
    if unfinished:
        say(f"{len(unfinished)} studies unfinished: the tuned settings were not written; rerun to resume")
        return None
    blocks: dict[str, dict[str, TunedEntry]] = {}
    for o in outcomes:
        blocks.setdefault(o.cell.block, {})[o.cell.label] = o.entry
    s = suite.tuning
    tuned = TunedFile(
        suite=suite.name, budget=s.trials, tuning_seeds=s.seeds,
        sampler={"name": "TPE", "seed": s.sampler_seed, "startup_trials": s.startup_trials},
        shared_space=space_hash(OPTIM_SPACE), blocks=blocks,
    )  # fmt: skip
    path = tuned_path(suite.name, s.file)
    header = (
        f"Tuned settings of suite {suite.name!r}, written by `mmbalance tune` (make tune); do not edit by hand.\n"
        f"Per block and method: the spec paths tuning set, the trials run ({s.trials} per cell, trial 0 the\n"
        f"defaults), the best validation {'/'.join(sorted({o.entry.metric for o in outcomes}))} (mean over tuning seeds {s.seeds}).\n"
        f"Every trial: {csv}"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, dump_tuned(tuned, header))
    return path


# --- SLURM: workers that share the studies -----------------------------------------------------------
def tune_worker(suite_path: str, results: str, storage: str, data_root: str | None, prune: bool,
                threads: int | None) -> list[str]:  # fmt: skip
    """One worker job: every study of the suite it can lock, up to the budget (the others' are skipped)."""
    suite, root = load_suite(suite_path), Path(data_root) if data_root else None
    todo = [c for c in cells(suite, root) if isinstance(c, Cell)]
    return [
        _guarded(c, suite.name, suite.tuning, storage, Path(results), root, prune, threads).status
        for c in todo
    ]


def submit_workers(suite_path: Path | str, results: Path | str, storage: str | None, data_root: Path | None,
                   prune: bool, opts: Any, cluster: str = "slurm") -> tuple[list[Any], str]:  # fmt: skip
    """``opts.jobs`` worker jobs as one SLURM array through submitit (``cluster="local"``: subprocesses, for
    tests); they share one storage (default: the SQLite file, by absolute path; on several hosts use a
    server database). Returns the jobs and the storage URL."""
    import submitit

    from mmbalance.scaleout.executors import slurm_parameters

    suite, results = load_suite(suite_path), Path(results).resolve()
    storage = storage or f"sqlite:///{results / 'tuning' / (suite.name + '.db')}"
    _storage(storage)
    folder = Path(opts.folder) if opts.folder else results / "submitit"
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster)
    executor.update_parameters(**slurm_parameters(opts, f"tune-{suite.name}"))
    root = str(Path(data_root).resolve()) if data_root else None
    with executor.batch():
        jobs = [executor.submit(tune_worker, str(Path(suite_path).resolve()), str(results), storage, root, prune,
                                opts.threads) for _ in range(opts.jobs)]  # fmt: skip
    return jobs, storage
