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

Readers (reports, leaderboard) use only this module, never the runner. Every record is read through
``safe_load`` (bounded size and nesting, strict UTF-8) and its shape checked: a damaged ``final.json`` or
``status`` makes the run interrupted (rebuilt by the next run), never done; the others raise
``DamagedRecordError`` naming the file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mmbalance.common.safe_load import DocumentError, parse_json, parse_yaml, read_text

SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Fields spec.yaml adds to the canonical run spec (the record, not the experiment): strip them to rebuild it.
RECORD_ONLY = ("run_id", "data_fingerprint", "data_fixture")

DEFAULT_RESULTS = Path("results")
TEMP_GLOB = ".*.tmp"  # atomic writes' temp files
METRICS_BYTES = 64 << 20  # metrics.jsonl: ~2 KiB an epoch, so far beyond any real run
STALE_TEMP_S = 60.0  # an atomic write takes milliseconds: a temp file this old is a killed writer's


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; once, at import, before any thread
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0600


class DamagedRecordError(ValueError):
    """A run record that cannot be read or resumed from; the message names the file and what to do."""


STATES = ("running", "done", "failed", "pruned")  # what a status file may say (pruned: a tuning trial)
STATUS_BYTES = 4096  # a status file is one short line; a longer one is read no further


def final_problem(final: Any) -> str | None:
    """Why ``final`` is not a final.json the readers can use (None when it is one). Checked on every
    read, so a damaged or forged record counts as interrupted (rebuilt), never as done."""
    if not isinstance(final, dict):
        return f"expected a JSON object, got {type(final).__name__}"
    spec = final.get("spec")
    # A tuning trial (spec evaluate_test: false) never read its test split: its scores are validation's.
    split = "valid" if isinstance(spec, dict) and spec.get("evaluate_test") is False else "test"
    scores, key = final.get(split), final.get("selection_metric")
    if not isinstance(scores, dict):
        return f"{split!r} is not a mapping of metric names to values"
    if not isinstance(key, str) or not _number(scores.get(key)):
        return f"'selection_metric' {key!r:.40} does not name a number in {split!r}"
    for key in ("best_epoch", "epochs"):
        if not isinstance(final.get(key), int) or isinstance(final.get(key), bool) or final[key] < 0:
            return f"{key!r} is not a non-negative integer"
    for key in ("protocol", "task"):
        if not isinstance(final.get(key), str):
            return f"{key!r} is not a string"
    return None


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


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
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.filename is None:  # a full disk answers write() without a file name: name it
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
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
        text = self.status_text()
        if text is None:
            return "running" if self.path.is_dir() and any(self.path.iterdir()) else "pending"
        word = text.split(":", 1)[0].strip()
        return word if word in STATES else "running"  # damaged: interrupted, the next run resumes it

    def status_text(self) -> str | None:
        """The status file's first line (None without one); undecodable bytes read as U+FFFD, so a
        damaged file is a word no reader knows, not a crash."""
        try:
            with self.file("status").open("rb") as f:
                data = f.read(STATUS_BYTES)
        except FileNotFoundError:
            return None
        except OSError:  # a folder, unreadable: damaged
            return "\ufffd"
        return data.decode("utf-8", errors="replace").split("\n", 1)[0]

    def finished(self) -> dict[str, Any] | None:
        """``final.json`` of a done run; None when the run is not done or its ``final.json`` is missing
        or damaged (the runner then rebuilds it from the checkpoint)."""
        return self.final_or_none() if self.status() == "done" else None

    def failure_reason(self) -> str:
        text = self.status_text() or ""
        return text.split(":", 1)[1].strip() if ":" in text else ""

    def set_status(self, status: str, reason: str = "") -> None:
        atomic_write_text(self.file("status"), f"{status}: {reason}\n" if reason else f"{status}\n")

    # --- readers -------------------------------------------------------------------------------
    def _document(self, name: str) -> Any:
        """A record file read through ``safe_load`` (bounded, strict UTF-8); ``DamagedRecordError``
        naming the file otherwise."""
        f = self.file(name)
        try:
            text = read_text(f)
            # libyaml's safe loader when PyYAML has it (the same document, ~10x faster; reports read 1000s)
            return (
                parse_yaml(text, str(f), SAFE_LOADER) if name.endswith(".yaml") else parse_json(text, str(f))
            )
        except DocumentError as e:
            raise DamagedRecordError(f"{e}; damaged run record") from None

    def _mapping(self, name: str) -> dict[str, Any]:
        doc = self._document(name)
        if not isinstance(doc, dict):
            raise DamagedRecordError(f"{self.file(name)}: expected a mapping, got {type(doc).__name__}")
        return doc

    def spec(self) -> dict[str, Any]:
        return self._mapping("spec.yaml")

    def final(self) -> dict[str, Any]:
        final = self._document("final.json")
        if (problem := final_problem(final)) is not None:
            raise DamagedRecordError(f"{self.file('final.json')}: {problem}; damaged run record")
        return final

    def final_or_none(self) -> dict[str, Any] | None:
        """``final.json``, or None when it is missing, truncated, not a JSON object or lacks a field."""
        try:
            return self.final()
        except DamagedRecordError:
            return None

    def remove_stale_temp(self, min_age: float = STALE_TEMP_S) -> list[Path]:
        """Remove temp files older than ``min_age``: any process may call this, even without the lock
        (``evaluate --write`` rewrites a finished run's final.json without one), because a live
        writer's temp file is milliseconds old."""
        now, leftovers = time.time(), []
        for f in self.path.glob(TEMP_GLOB):
            try:
                if now - f.stat().st_mtime > min_age:
                    f.unlink()
                    leftovers.append(f)
            except FileNotFoundError:  # its writer finished or another reader removed it
                pass
        return leftovers

    def remove_temp(self) -> list[Path]:
        """Remove the temp files of writers killed mid-write. Only the lock's owner may call this."""
        leftovers = sorted(self.path.glob(TEMP_GLOB))
        for f in leftovers:
            f.unlink(missing_ok=True)
        return leftovers

    def env(self) -> dict[str, Any]:
        return self._mapping("env.json")

    def epochs(self) -> list[dict[str, Any]]:
        f = self.file("metrics.jsonl")
        if not f.exists():
            return []
        try:
            lines = read_text(f, METRICS_BYTES).splitlines()
            rows = [parse_json(line, f"{f}, line {i}") for i, line in enumerate(lines, 1) if line.strip()]
        except DocumentError as e:
            raise DamagedRecordError(f"{e}; damaged run record") from None
        if not all(isinstance(r, dict) for r in rows):
            raise DamagedRecordError(f"{f}: a line is not a JSON object; damaged run record")
        return rows

    def curves_path(self) -> Path:
        return self.file("curves.csv")


def iter_runs(results: Path | str = DEFAULT_RESULTS, status: str | None = None) -> list[RunDir]:
    """All run directories under ``results/runs`` (optionally only those with ``status``)."""
    root = Path(results) / "runs"
    if not root.is_dir():
        return []
    runs = [RunDir(p) for p in sorted(root.iterdir()) if p.is_dir() and (p / "spec.yaml").exists()]
    return [r for r in runs if status is None or r.status() == status]
