"""Run records on disk: ``results/runs/<run_id>/``.

Files (all written atomically: temp file ``.<name>.<random>.tmp`` in the same folder, then ``os.replace``;
a temp file left by a killed writer is removed by the next owner of the run's lock, ``RunDir.remove_temp``;
files get the mode the umask allows, so a results folder shared by a group stays readable):
  spec.yaml      the canonical run spec (plus run_id, data fingerprint)
  env.json       code version, package versions, device, python, platform
  metrics.jsonl  one JSON object per finished epoch (train loss, valid/test metrics, probes,
                 `seconds` and `train_seconds`/`valid_seconds`/`test_seconds`)
  curves.csv     probe values per logged step (grad norms, cosines, unimodal acc, diagnostics)
  final.json     test metrics at the best validation epoch (+ the best validation metrics), and
                 ``modality_eval``: Shapley contributions, imbalance degree, equity, missing- and
                 noisy-modality robustness of that epoch's model (``modality_eval.py``)
  checkpoint.pt  everything needed to resume exactly (model, optimiser, scheduler, method, RNG)
  best.pt        model and method state of the selected epoch (``mmbalance evaluate`` reloads it)
  status         ``running`` / ``done`` / ``failed: <reason>``
  grads.npz      optional, after the run: gradient samples per modality for the t-SNE figure
                 (written by ``scripts/grad_samples.py``; see ``figures.tsne_gradients``)

Readers (reports, leaderboard) use only this module, never the runner.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Fields spec.yaml adds to the canonical run spec (the record, not the experiment): strip them to rebuild it.
RECORD_ONLY = ("run_id", "data_fingerprint", "data_fixture")

DEFAULT_RESULTS = Path("results")
TEMP_GLOB = ".*.tmp"  # atomic writes' temp files


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; once, at import, before any thread
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0600


class DamagedRecordError(ValueError):
    """A run record that cannot be read or resumed from; the message names the file and what to do."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


def rows_to_csv(rows: Iterable[dict[str, Any]]) -> str:
    rows = list(rows)
    columns: list[str] = []
    for r in rows:  # union of keys, in first-seen order
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


@dataclass
class RunDir:
    path: Path

    @classmethod
    def of(cls, results: Path, run_id: str) -> RunDir:
        return cls(Path(results) / "runs" / run_id)

    @property
    def run_id(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    # --- status --------------------------------------------------------------------------------
    def status(self) -> str:
        """``pending`` (no record), ``running``, ``done`` or ``failed``.

        ``running`` also covers a run whose worker died before its status file was written (the folder
        holds a lock or a spec); ``status.run_state`` tells live from dead by the lock. A ``done`` run
        is finished only with a readable ``final.json`` (``finished``).
        """
        f = self.file("status")
        if not f.exists():
            return "running" if self.path.is_dir() and any(self.path.iterdir()) else "pending"
        return f.read_text().split(":", 1)[0].strip()

    def finished(self) -> dict[str, Any] | None:
        """``final.json`` of a done run; None when the run is not done or its ``final.json`` is missing
        or damaged (the runner then rebuilds it from the checkpoint)."""
        return self.final_or_none() if self.status() == "done" else None

    def failure_reason(self) -> str:
        text = self.file("status").read_text() if self.file("status").exists() else ""
        return text.split(":", 1)[1].strip() if ":" in text else ""

    def set_status(self, status: str, reason: str = "") -> None:
        atomic_write_text(self.file("status"), f"{status}: {reason}\n" if reason else f"{status}\n")

    # --- readers -------------------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        # libyaml's safe loader when PyYAML has it (the same document, ~10x faster; reports read 1000s)
        return yaml.load(self.file("spec.yaml").read_text(), Loader=SAFE_LOADER)

    def final(self) -> dict[str, Any]:
        return json.loads(self.file("final.json").read_text())

    def final_or_none(self) -> dict[str, Any] | None:
        """``final.json``, or None when it is missing, truncated or not a JSON object."""
        try:
            final = self.final()
        except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return None
        return final if isinstance(final, dict) else None

    def remove_temp(self) -> list[Path]:
        """Remove the temp files of writers killed mid-write. Only the lock's owner may call this."""
        leftovers = sorted(self.path.glob(TEMP_GLOB))
        for f in leftovers:
            f.unlink(missing_ok=True)
        return leftovers

    def env(self) -> dict[str, Any]:
        return json.loads(self.file("env.json").read_text())

    def epochs(self) -> list[dict[str, Any]]:
        f = self.file("metrics.jsonl")
        return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.exists() else []

    def curves_path(self) -> Path:
        return self.file("curves.csv")


def iter_runs(results: Path | str = DEFAULT_RESULTS, status: str | None = None) -> list[RunDir]:
    """All run directories under ``results/runs`` (optionally only those with ``status``)."""
    root = Path(results) / "runs"
    if not root.is_dir():
        return []
    runs = [RunDir(p) for p in sorted(root.iterdir()) if p.is_dir() and (p / "spec.yaml").exists()]
    return [r for r in runs if status is None or r.status() == status]
