"""Where a sweep stands, read from the run records and their locks alone (no training code).

A run is
  ``done``         its status file says so (final.json written);
  ``failed``       its status file says ``failed: <reason>``;
  ``running``      status ``running`` and a live lock (its holder is named);
  ``interrupted``  status ``running`` but no lock or a stale one: its worker died; the next sweep
                   takes the lock over and resumes from the last checkpoint. Also a run killed before
                   its status file was written, and a ``done`` run whose ``final.json`` is missing or
                   damaged (the next sweep rebuilds it from the checkpoint);
  ``pruned``       a tuning trial its pruner stopped (``tune --prune``); calling it again resumes it;
  ``pending``      no record yet (only known when the caller passes the sweep's run ids).
Every folder under ``runs/`` is listed, with or without a ``spec.yaml``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mmbalance.common.locks import is_stale, read_lock
from mmbalance.common.records import RunDir

__all__ = ["RunState", "StatusReport", "run_state", "sweep_status", "tidy_finished"]

STATES = ("done", "running", "interrupted", "failed", "pruned", "pending")


@dataclass(frozen=True)
class RunState:
    run_id: str
    state: str  # one of STATES
    detail: str = ""  # failure reason, lock holder
    label: str = ""  # dataset/method seed, when known


@dataclass
class StatusReport:
    runs: list[RunState] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        c = Counter(r.state for r in self.runs)
        return {s: c.get(s, 0) for s in STATES if s != "pruned" or c.get(s)}  # pruned: tuning trials only

    def failure_reasons(self) -> dict[str, int]:
        """Distinct failure reasons and how many runs each."""
        return dict(Counter(r.detail or "(no reason recorded)" for r in self.runs if r.state == "failed"))


def run_state(rd: RunDir, label: str = "") -> RunState:
    status = rd.status()
    if status == "running":
        lock = read_lock(rd.file("lock"))
        if lock is not None and not is_stale(lock):
            return RunState(rd.run_id, "running", f"held by {lock.describe()}", label)
        return RunState(rd.run_id, "interrupted", _why_interrupted(rd), label)
    if status in ("failed", "pruned"):
        return RunState(rd.run_id, status, rd.failure_reason(), label)
    if status == "done":
        if rd.final_or_none() is None:
            return RunState(rd.run_id, "interrupted", _why_interrupted(rd), label)
        return RunState(rd.run_id, "done", "", label)
    return RunState(rd.run_id, "pending", "", label)


def tidy_finished(rd: RunDir) -> None:
    """What killed processes left in a finished run: temp files of a writer killed mid-write and a lock
    whose owner died while releasing it. A finished run never takes its lock again, so any reader
    (``status``, ``evaluate``, the next ``run``) removes them once they are provably stale. Best effort:
    a reader without write permission leaves them (reports never call this: they only read)."""
    try:
        rd.remove_stale_temp()
        lock = read_lock(rd.file("lock"))
        if lock is not None and is_stale(lock):
            rd.file("lock").unlink(missing_ok=True)
    except OSError:
        pass


DAMAGED_FINAL = "final.json is missing or damaged; the next sweep rebuilds it from the checkpoint"


def _why_interrupted(rd: RunDir) -> str:
    text = rd.status_text()
    if text is None:
        return "its worker died before the first record; the next sweep starts it"
    if text.startswith("done"):
        return DAMAGED_FINAL
    if rd.status() == "running" and not text.startswith("running"):
        return f"{rd.file('status')} is damaged; the next sweep resumes it from its checkpoint"
    return "resumes from its checkpoint on the next sweep"


def record_labels(rds: list[RunDir]) -> list[str]:
    """``dataset/task method(params) seed N`` of runs that no suite names, from their ``spec.yaml`` ("" when
    it cannot be read); the method parameters shown are those that differ between the runs of that
    dataset and method (what tells them apart)."""
    specs = []
    for rd in rds:
        try:
            spec = rd.spec()
            specs.append((spec["dataset"], spec.get("dataset_params", {}).get("task"), spec["method"],
                          spec.get("method_params", {}), spec["seed"]))  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            specs.append(None)
    varying: dict[tuple, set[str]] = {}
    for s in filter(None, specs):
        seen = [t[3] for t in filter(None, specs) if t[:3] == s[:3]]
        varying[s[:3]] = {k for params in seen for k in params if any(p.get(k) != params[k] for p in seen)}
    labels = []
    for s in specs:
        if s is None:
            labels.append("")
            continue
        dataset, task, method, params, seed = s
        shown = ",".join(f"{k}={params[k]}" for k in sorted(varying[s[:3]]) if k in params)
        labels.append(
            f"{dataset}{'/' + task if task else ''} {method}{'(' + shown + ')' if shown else ''} seed {seed}"
        )
    return labels


def sweep_status(results: Path | str, run_ids: dict[str, str] | None = None) -> StatusReport:
    """States of the runs under ``results``; with ``run_ids`` ({run_id: label}, a suite's plan) only
    those runs, and the ones without a record count as pending. Finished runs are tidied on the way
    (``tidy_finished``)."""
    if run_ids is None:
        root = Path(results) / "runs"
        folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        rds = [RunDir(p) for p in folders]
        report = StatusReport(
            [run_state(rd, label) for rd, label in zip(rds, record_labels(rds), strict=True)]
        )
    else:
        report = StatusReport(
            [run_state(RunDir.of(Path(results), rid), label) for rid, label in run_ids.items()]
        )
    for r in report.runs:
        if r.state == "done":
            tidy_finished(RunDir.of(Path(results), r.run_id))
    return report
