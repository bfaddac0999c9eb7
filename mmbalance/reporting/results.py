"""Run records as a pandas DataFrame: one row per run, whatever its state. For notebooks, and the
frame every report table and figure is built on::

    import mmbalance
    runs = mmbalance.results.load("results")
    runs[runs.status == "done"].groupby(["dataset", "label"])["accuracy"].agg(["mean", "std", "count"])

Columns:

- ``run_id``, ``path``, ``status`` (``done``, ``failed``, ``running``, ``interrupted`` as in ``status.py``,
  or ``unreadable``: marked done but its ``final.json`` cannot be read) and ``reason`` (why it failed or
  cannot be read; the lock holder of a running run);
- the run spec flattened into columns (``dataset``, ``method``, ``seed``, ``epochs``, ``method_params.rho``,
  ``optim.lr``, ``dataset_params.task``, ...), plus ``spec`` (the nested dict) and ``config`` (the spec
  without its seed as canonical JSON: the runs of one configuration differ only in their seed);
- ``data_fingerprint`` and ``fixture`` (the run trained on ``mmbalance.fixtures`` files: tiny copies of a
  real format, never a result) from ``spec.yaml``; ``key``: the comparison key (``comparison.py``): runs
  of one key differ only in the method, its own parameters and the seed, so only they are compared;
- ``task``, ``modalities`` (tuple), ``selection_metric``, ``best_epoch``, ``epochs_done`` and ``seconds``
  (training time summed over the recorded epochs);
- memory: ``peak_memory_mb`` (CUDA runs: the largest training-phase peak of allocated memory over the
  epochs; NaN elsewhere), ``extra_memory_mb`` (that peak minus the peak of the joint-training run of the
  same spec and seed, method and method parameters apart: the CGGM paper's "additional memory"; NaN
  without such a pair) and ``method_memory_mb`` (MB of tensors the method holds beyond the model, on any
  device: CGGM's classifiers, their gradients and optimiser state);
- one column per final metric under the chosen ``protocol`` (``accuracy``, ``mae``, ``dice_WT``, ...), and
  ``probe/<modality>`` for the unimodal probes; empty (NaN) for runs that are not done;
- the modality evaluation of the selected model (``modality_eval.py``, test split) under ``modality/``:
  ``modality/shapley/<m>``, ``modality/missing/<m>`` (the metric with ``m`` alone absent),
  ``modality/robustness/<m>`` (relative robustness to noise on ``m``), ``modality/imbalance_degree``,
  ``modality/equity``, ``modality/worst_missing``; NaN where not measured;
- ``label``: the method and the settings that differ between its runs on the dataset, seed aside
  (``unimodal(modality=m1)``, ``ogm_ge(alpha=0.5,optim.lr=0.05)``): group by it, not by ``method``.

Booleans are ``bool`` columns; ``config`` is the configuration's canonical JSON (the report's key).
``curves(results)`` gives the per-epoch metrics of ``metrics.jsonl`` as a long frame (one row per run,
epoch, split and metric), for training curves in a notebook.

Like the report, this reads records through ``records.py`` and ``status.py`` alone: it imports no
torch, runner, method or dataset adapter.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mmbalance.common.comparison import comparison_key
from mmbalance.common.records import RECORD_ONLY, DamagedRecordError, RunDir, iter_runs
from mmbalance.common.status import DAMAGED_FINAL, run_state

__all__ = ["PROTOCOLS", "RecordWarning", "load", "curves", "run_values", "config_key", "flatten", "one_line"]

PROTOCOLS = {
    "best-valid-test": "test metrics at the best validation epoch",
    "best-valid": "best validation score of each metric over epochs, no test split (CGGM code's protocol)",
}
IDENTITY = ("dataset", "method", "seed")  # what a table needs to place a run
READ_ERRORS = (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError)


class RecordWarning(UserWarning):
    """A run record that cannot be read; the message names the file and what is skipped."""


def one_line(e: BaseException, limit: int = 200) -> str:
    """A parser's error message on one line (YAML and CSV errors span several)."""
    return " ".join(str(e).split())[:limit]


def named(path: Path, e: BaseException) -> str:
    """``path: what is wrong``, on one line (a ``DamagedRecordError`` already names its file)."""
    return (
        one_line(e, 400)
        if isinstance(e, DamagedRecordError)
        else f"{path}: {type(e).__name__}: {one_line(e)}"
    )


def run_values(final: dict[str, Any], protocol: str) -> dict[str, float]:
    """Metric values of one run under ``protocol``, plus ``probe/<m>`` (the unimodal probe metric)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if protocol == "best-valid-test":
        source, probe = final["test"], final["test"].get("probe", {})
    else:  # best_valid_over_epochs has no probe: take the probe at the best validation epoch
        source, probe = final["best_valid_over_epochs"], final["valid"].get("probe", {})
    values = {k: float(v) for k, v in source.items() if isinstance(v, int | float)}
    values.update({f"probe/{m}": float(v) for m, v in probe.items()})
    return values


def config_key(spec: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in spec.items() if k != "seed" and k not in RECORD_ONLY}, sort_keys=True)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}``; lists stay values, an empty section is no column."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


MODALITY_EVAL = {"shapley": "shapley", "missing": "missing", "relative_robustness": "robustness"}


def modality_columns(final: dict[str, Any]) -> dict[str, float]:
    """The ``modality/...`` columns of a run's ``modality_eval`` record (none if absent or failed)."""
    record = final.get("modality_eval")
    if not isinstance(record, dict) or "error" in record:
        return {}
    out = {f"modality/{name}/{m}": float(v) for key, name in MODALITY_EVAL.items()
           for m, v in (record.get(key) or {}).items()}  # fmt: skip
    for key in ("imbalance_degree", "equity", "worst_missing"):
        value = record.get(key)
        out[f"modality/{key}"] = float(value) if isinstance(value, int | float) else float("nan")
    return out


def _epoch_totals(rd: RunDir) -> tuple[int, float, float]:
    """Epochs recorded, their summed training time and their largest CUDA training peak (MB); NaN
    where not recorded, (0, NaN, NaN) when metrics.jsonl cannot be read (the figures step names it)."""
    nan = float("nan")
    try:
        epochs = rd.epochs()
        peaks = [e["train_peak_mb"] for e in epochs if "train_peak_mb" in e]
        return len(epochs), float(sum(e.get("seconds", nan) for e in epochs)), max(peaks, default=nan)
    except READ_ERRORS:
        return 0, nan, nan


def _method_memory(rd: RunDir) -> float:
    """MB the method held beyond the model (env.json, written when the run finished); NaN if absent."""
    try:
        held = rd.env().get("method_memory_mb") if rd.file("env.json").exists() else None
    except READ_ERRORS:
        return float("nan")
    return float(sum(held.values())) if isinstance(held, dict) else float("nan")


def _extra_memory(runs: pd.DataFrame) -> pd.Series:
    """Each run's peak memory minus that of the joint run of the same spec and seed, method and method
    parameters apart (the same model, data, batch and optimiser): what the method adds."""
    base = [json.dumps({k: v for k, v in spec.items() if k not in ("method", "method_params")}, sort_keys=True)
            for spec in runs["spec"]]  # fmt: skip
    joint = {
        b: p for b, m, p in zip(base, runs["method"], runs["peak_memory_mb"], strict=True) if m == "joint"
    }
    return pd.Series([p - joint.get(b, float("nan")) for b, p in zip(base, runs["peak_memory_mb"], strict=True)],
                     index=runs.index, dtype=float)  # fmt: skip


def _data_origin(rd: RunDir) -> tuple[str | None, bool]:
    """The data fingerprint and fixture mark spec.yaml records ((None, False) when it cannot be read:
    ``_fill_fingerprints`` then takes them from the runs of the same configuration)."""
    try:
        doc = rd.spec()
        return doc.get("data_fingerprint"), bool(doc.get("data_fixture", False))
    except (*READ_ERRORS, yaml.YAMLError):
        return None, False


def _row(rd: RunDir, protocol: str) -> dict[str, Any]:
    try:
        state = run_state(rd)
        status, reason = state.state, state.detail
    except READ_ERRORS as e:
        status, reason = "unreadable", named(rd.file("status"), e)
    final: dict[str, Any] = {}
    values: dict[str, float] = {}
    if status == "done" or reason == DAMAGED_FINAL:  # marked done: name what cannot be read
        try:
            final = rd.final()
            values = run_values(final, protocol)
            spec = dict(final["spec"])
        except READ_ERRORS as e:
            status, reason = "unreadable", named(rd.file("final.json"), e)
            final, values = {}, {}
            warnings.warn(f"{reason}; the run counts as not finished", RecordWarning, stacklevel=3)
    if not final:
        try:
            doc = rd.spec()
            if not isinstance(doc, dict) or not all(k in doc for k in IDENTITY):
                raise ValueError(f"expected a mapping with {', '.join(IDENTITY)}")
            spec = {k: v for k, v in doc.items() if k not in RECORD_ONLY}
        except READ_ERRORS as e:
            warnings.warn(
                f"{named(rd.file('spec.yaml'), e)}; run {rd.run_id} ({status}) left out",
                RecordWarning,
                stacklevel=3,
            )
            return {}
    epochs_done, seconds, peak = _epoch_totals(rd)
    fingerprint, fixture = _data_origin(rd)
    params = spec.get("dataset_params")
    task = final.get("task") or (params.get("task") if isinstance(params, dict) else None)
    return {
        "run_id": rd.run_id,
        "path": str(rd.path),
        "status": status,
        "reason": reason,
        **flatten(spec),
        "spec": spec,
        "config": config_key(spec),
        "data_fingerprint": fingerprint,
        "fixture": fixture,
        "key": comparison_key(spec, fingerprint, fixture),
        "task": task,
        "modalities": tuple(final["modalities"]) if "modalities" in final else None,
        "selection_metric": final.get("selection_metric"),
        "best_epoch": final.get("best_epoch"),
        "epochs_done": epochs_done,
        "seconds": seconds,
        "peak_memory_mb": peak,
        "method_memory_mb": _method_memory(rd),
        **values,
        **modality_columns(final),
    }


def _fill_from_done(runs: pd.DataFrame) -> pd.DataFrame:
    """Task, modalities and selection metric of runs that are not done, from the done runs of the same
    configuration, else of the same dataset (every dataset but the synthetic one has a single task)."""
    done = runs[runs["status"] == "done"]

    def known(col: str, key: str) -> dict[Any, Any]:
        return {k: g[col].dropna().iloc[0] for k, g in done.groupby(key, sort=False) if g[col].notna().any()}

    for col in ("task", "modalities", "selection_metric"):
        by_config, by_dataset = known(col, "config"), known(col, "dataset")
        runs[col] = [
            v if v is not None and v == v else by_config.get(c, by_dataset.get(d))  # v == v: not NaN
            for v, c, d in zip(runs[col], runs["config"], runs["dataset"], strict=True)
        ]
    return runs


def load(results: Path | str = "results", protocol: str = "best-valid-test") -> pd.DataFrame:
    """One row per run under ``results/runs`` (see the module docstring for the columns)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    rows = [r for r in (_row(rd, protocol) for rd in iter_runs(results)) if r]
    if not rows:
        return pd.DataFrame(columns=["run_id", "path", "status", "reason", "dataset", "task", "method", "seed",
                                     "spec", "config", "data_fingerprint", "fixture", "key", "modalities",
                                     "selection_metric", "seconds"])  # fmt: skip
    runs = _fill_fingerprints(_fill_from_done(pd.DataFrame(rows)))
    runs["extra_memory_mb"] = _extra_memory(runs)
    runs["label"] = labels(runs)
    for col in runs.columns:  # True/False read as object: bool when complete
        if pd.api.types.is_object_dtype(runs[col]) and runs[col].map(lambda v: isinstance(v, bool)).all():
            runs[col] = runs[col].astype(bool)
    return runs


LABEL_LEFT_OUT = ("seed", "dataset", "dataset_params.", "method", "tuned")  # the label's method names itself


def labels(runs: pd.DataFrame) -> pd.Series:
    """``method(setting=value,...)``: per dataset and method, the spec settings whose values differ between
    its runs (seed and data settings aside); a method parameter shows by its own name."""
    out = pd.Series(runs["method"].astype(str), index=runs.index)
    flat = pd.DataFrame([flatten(s) for s in runs["spec"]], index=runs.index)
    keep = [c for c in flat.columns if not c.startswith(LABEL_LEFT_OUT) or c.startswith("method_params.")]
    flat = flat[keep].map(lambda v: json.dumps(v) if isinstance(v, list | dict) else v)
    for _, group in flat.groupby([runs["dataset"], runs["method"]], sort=False):
        varying = [c for c in group.columns if group[c].nunique(dropna=False) > 1]
        for i, row in group[varying].iterrows():
            shown = [f"{c.removeprefix('method_params.')}={row[c]}" for c in varying if row[c] == row[c]]
            out[i] += f"({','.join(shown)})" if shown else ""
    return out


def curves(results: Path | str = "results", runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-epoch metrics of ``metrics.jsonl`` as a long frame: ``run_id``, ``label``, ``dataset``, ``method``,
    ``seed``, ``epoch``, ``split`` (``train``, ``valid``, ``test``), ``metric`` (``loss``, ``accuracy``,
    ``probe/m0``, ...) and ``value``, for every run of ``runs`` (a ``load`` frame; default: all of them).
    A run whose ``metrics.jsonl`` cannot be read is left out with a ``RecordWarning``."""
    runs = load(results) if runs is None else runs
    rows = []
    for run in runs.itertuples(index=False):
        try:
            epochs = RunDir(Path(run.path)).epochs()
        except READ_ERRORS as e:
            warnings.warn(
                f"{named(Path(run.path) / 'metrics.jsonl', e)}; run left out", RecordWarning, stacklevel=2
            )
            continue
        who = {"run_id": run.run_id, "label": run.label, "dataset": run.dataset, "method": run.method,
               "seed": run.seed}  # fmt: skip
        for e in epochs:
            values = [("train", "loss", e["train_loss"])]
            values += [
                (split, k, v) for split in ("valid", "test") for k, v in flatten(e.get(split, {})).items()
            ]
            rows += [{**who, "epoch": e["epoch"], "split": split, "metric": k.replace(".", "/"), "value": float(v)}
                     for split, k, v in values]  # fmt: skip
    columns = ["run_id", "label", "dataset", "method", "seed", "epoch", "split", "metric", "value"]
    return pd.DataFrame(rows, columns=columns)


def _fill_fingerprints(runs: pd.DataFrame) -> pd.DataFrame:
    """A run whose spec.yaml cannot be read (its final.json still holds the spec) takes the data
    fingerprint of its configuration's other runs, so that it stays in their table."""
    known = runs.dropna(subset=["data_fingerprint"]).groupby("config")["data_fingerprint"].first()
    lost = runs["data_fingerprint"].isna() & runs["config"].isin(known.index)
    for i in runs.index[lost]:
        spec, fp = runs.at[i, "spec"], known[runs.at[i, "config"]]
        runs.at[i, "data_fingerprint"] = fp
        runs.at[i, "key"] = comparison_key(spec, fp, bool(runs.at[i, "fixture"]))
    return runs
