"""Weights & Biases logging: optional, offline unless a mode is set, never required.

The run record on disk is the source of truth; W&B gets a copy of it. A run is one W&B run: name and
id = the run id, group = the suite, config = the canonical spec (``spec.yaml``) and the environment
(``env.json``); one history row per logged training step with the probe and coefficient curves
(``curves.csv``, x axis ``train/step``) and one per epoch (``metrics.jsonl``, x axis ``epoch``); the
final metrics and the modality evaluation (``final.json``: Shapley values, missing-modality and noise
robustness) in the summary under ``final/``.

Live: a run trained here (``run``, ``sweep`` with one local job, ``mmbalance.run``/``sweep``) is sent
while it trains: ``LiveRun`` is the runner's ``on_epoch`` callback and sends each epoch from the
records just written (so W&B shows what the records hold, and a crash loses nothing from them).
A W&B failure stops the logging, never the run. A run reused, or trained by worker processes or
SLURM jobs, is sent from its record when it is done (``log_run``). ``wandb.json`` in the run folder
notes where the run was sent, so it is not sent twice. ``log_report`` sends a report's tables (W&B
tables), figures (images) and files (an artifact) under the suite's name.

Turned on by ``--wandb`` (run, sweep, report) or a suite's ``wandb:`` section; ``wandb`` is imported
only then. Mode: ``--wandb-mode``, else the suite's, else ``$WANDB_MODE``, else offline
(``wandb sync`` uploads an offline run later). Files go to ``$WANDB_DIR`` or the results folder.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path
from typing import Any, Literal

from mmbalance.common.core import StrictModel
from mmbalance.common.records import RunDir, atomic_write_json


class WandbSettings(StrictModel):
    """A suite's ``wandb:`` section (and the ``--wandb-*`` options)."""

    project: str = "mmbalance"
    entity: str | None = None  # default: the W&B user's (or $WANDB_ENTITY)
    mode: Literal["offline", "online", "disabled"] | None = None  # None: $WANDB_MODE, else offline
    tags: list[str] = []


def settings(section: dict[str, Any] | None, enabled: bool | None, **cli: Any) -> WandbSettings | None:
    """The W&B settings of a command, or None when it does not log: on with ``--wandb`` or a suite
    section, off with ``--no-wandb``; ``cli`` values (not None) override the section's."""
    if enabled is False or (enabled is None and section is None):
        return None
    return WandbSettings.model_validate(
        {**(section or {}), **{k: v for k, v in cli.items() if v is not None}}
    )


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = v
    return out


def _init(cfg: WandbSettings, results: Path, **kwargs: Any):
    import wandb

    mode = cfg.mode or os.environ.get("WANDB_MODE") or "offline"
    directory = Path(os.environ.get("WANDB_DIR") or results)
    directory.mkdir(parents=True, exist_ok=True)
    tags = [*cfg.tags, *kwargs.pop("tags", [])]
    return wandb.init(project=cfg.project, entity=cfg.entity, mode=mode, dir=str(directory), tags=tags,
                      reinit="create_new", **kwargs)  # fmt: skip


def _open(rd: RunDir, cfg: WandbSettings, results: Path, group: str | None):
    """A W&B run named after the run record, its config the spec and environment."""
    spec = rd.spec()
    config = {**spec, "env": rd.env() if rd.file("env.json").exists() else {}}
    tags = [spec.get("dataset", "?"), spec.get("method", "?")]
    run = _init(cfg, results, id=rd.run_id, name=rd.run_id, group=group, config=config, job_type="train",
                tags=tags)  # fmt: skip
    run.define_metric("train/step")
    run.define_metric("curves/*", step_metric="train/step")
    run.define_metric("epoch")
    for key in ("train/*", "valid/*", "test/*", "lr", "seconds"):
        run.define_metric(key, step_metric="epoch")
    return run


def _curves(rd: RunDir) -> list[dict[str, str]]:
    if not rd.curves_path().exists():
        return []
    with rd.curves_path().open(newline="") as f:
        return list(csv.DictReader(f))


def _log_epoch(run, row: dict[str, Any], curves: list[dict[str, str]]) -> None:
    """One epoch of ``metrics.jsonl``: its probe and coefficient curves (x: step), then its metrics."""
    for c in (c for c in curves if int(c["epoch"]) == row["epoch"]):
        values = {k: float(v) for k, v in c.items() if k not in ("epoch", "step") and v != ""}
        run.log({"train/step": int(c["step"]), **{f"curves/{k}": v for k, v in values.items()}})
    rest = {k: v for k, v in row.items() if k not in ("epoch", "train_loss")}
    run.log({"epoch": row["epoch"], "train/loss": row["train_loss"], **_flat(rest)})


def _close(run, rd: RunDir, cfg: WandbSettings) -> str:
    """The summary (final metrics and the modality evaluation, or the failure), then the marker."""
    try:
        run.summary["status"] = rd.status()
        if rd.status() == "done":
            final = rd.final()
            run.summary.update(_flat({k: final[k] for k in ("test", "valid", "best_valid_over_epochs",
                                                            "modality_eval") if k in final}, "final/"))  # fmt: skip
            run.summary["final/best_epoch"] = final["best_epoch"]
        else:
            run.summary["reason"] = rd.failure_reason()
        where = f"{run.dir}"
    finally:
        run.finish(exit_code=0 if rd.status() == "done" else 1)
    if rd.status() != "running":  # an interrupted run is sent again, whole, when it resumes
        target = {"project": cfg.project, "entity": cfg.entity, "mode": cfg.mode}
        atomic_write_json(rd.file("wandb.json"), {"target": target, "run_dir": where})
    return where


def already_sent(rd: RunDir, cfg: WandbSettings) -> bool:
    marker = rd.file("wandb.json")
    target = {"project": cfg.project, "entity": cfg.entity, "mode": cfg.mode}
    return marker.exists() and json.loads(marker.read_text()).get("target") == target


def log_run(run_dir: Path, cfg: WandbSettings, results: Path, group: str | None = None) -> str | None:
    """Send one run record to W&B; returns where it went (None if it was sent before or has no record)."""
    rd = RunDir(Path(run_dir))
    if not rd.file("spec.yaml").exists() or already_sent(rd, cfg):
        return None
    run = _open(rd, cfg, results, group)
    try:
        curves = _curves(rd)
        for row in rd.epochs():
            _log_epoch(run, row, curves)
    except BaseException:
        run.finish(exit_code=1)
        raise
    return _close(run, rd, cfg)


class LiveRun:
    """``runner.train``'s ``on_epoch``: each epoch goes to W&B as soon as its records are written (a
    resumed run first sends the epochs recorded before). W&B failing stops the logging, never the run."""

    def __init__(self, rd: RunDir, cfg: WandbSettings, results: Path, group: str | None) -> None:
        self.rd, self.cfg, self.results, self.group = rd, cfg, results, group
        self.run, self.sent, self.failed = None, 0, ""

    def __call__(self, epoch: int, valid: dict[str, Any]) -> None:
        if self.failed:
            return
        try:
            if self.run is None:
                self.run = _open(self.rd, self.cfg, self.results, self.group)
            rows, curves = self.rd.epochs(), _curves(self.rd)
            for row in rows[self.sent :]:
                _log_epoch(self.run, row, curves)
            self.sent = len(rows)
        except Exception as e:  # noqa: BLE001 (a copy: the records on disk are written either way)
            self.failed = f"{type(e).__name__}: {e}"
            warnings.warn(f"W&B logging of {self.rd.run_id} stopped: {self.failed}", stacklevel=2)

    def close(self) -> str | None:
        """The summary once the run has ended (done, failed or interrupted); where the run was written."""
        if self.run is None or self.failed:
            return None
        return _close(self.run, self.rd, self.cfg)


def log_report(paths: list[Path], cfg: WandbSettings, results: Path, name: str) -> str:
    """Send a report as a run ``report-NAME`` (NAME: the suite's name): each CSV table as a W&B table
    (``tables/<file>``), each PNG figure as an image (``figures/<file>``), and every file in one
    artifact ``report-NAME`` (type ``report``)."""
    import pandas as pd
    import wandb

    run = _init(cfg, results, name=f"report-{name}", job_type="report", config={"report": name})
    try:
        media: dict[str, Any] = {}
        for p in map(Path, paths):
            if p.suffix == ".csv":
                media[f"tables/{p.stem}"] = wandb.Table(dataframe=pd.read_csv(p))
            elif p.suffix == ".png":
                media[f"figures/{p.stem}"] = wandb.Image(str(p))
        if media:
            run.log(media)
        artifact = wandb.Artifact(f"report-{name}", type="report")
        for p in paths:
            artifact.add_file(str(p), name=f"{Path(p).parent.name}/{Path(p).name}")
        run.log_artifact(artifact)
        where = f"{run.dir}"
    finally:
        run.finish()
    return where
