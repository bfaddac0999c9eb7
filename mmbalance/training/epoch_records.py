"""A run's epoch records, as the ``Trainer`` writes them after every epoch: ``metrics.jsonl`` and
``curves.csv``, the epoch best-validation selection picks, and ``final.json``'s body."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mmbalance.common.records import RunDir, atomic_write_text, rows_to_csv
from mmbalance.training.data import TaskInfo

__all__ = ["write_epoch_records", "best_epoch", "final_record"]


def write_epoch_records(rd: RunDir, history: list[dict[str, Any]], curves: list[dict[str, Any]]) -> None:
    """``metrics.jsonl`` (one row per epoch) and ``curves.csv`` (one row per logged step)."""
    atomic_write_text(rd.file("metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in history))
    atomic_write_text(rd.file("curves.csv"), rows_to_csv(curves))


def best_epoch(
    history: list[dict[str, Any]], task: TaskInfo, selectable: Callable[[int], bool]
) -> dict[str, Any]:
    """The epoch best-validation selection picks: the best valid primary metric among the epochs the
    method calls selectable (staged methods exclude their preparation epochs); the earliest wins ties,
    so the choice is stable."""
    sign = 1 if task.higher_is_better else -1
    candidates = [r for r in history if selectable(r["epoch"])] or history
    return max(candidates, key=lambda r: (sign * r["valid"][task.primary_metric], -r["epoch"]))


def final_record(
    history: list[dict[str, Any]], task: TaskInfo, modalities: list[str], selectable: Callable[[int], bool]
) -> dict[str, Any]:
    """``final.json`` (before the run id, spec and modality evaluation are added)."""
    best = best_epoch(history, task, selectable)
    key = task.primary_metric
    pick = max if task.higher_is_better else min
    return {
        "protocol": f"test metrics at the best validation epoch (by valid {key})",
        "best_epoch": best["epoch"],
        "selection_metric": key,
        **({"test": best["test"]} if "test" in best else {}),
        "valid": best["valid"],
        # The CGGM code's protocol: best validation score over epochs, no test split.
        "best_valid_over_epochs": {
            k: pick(r["valid"][k] for r in history) for k in best["valid"] if k not in ("probe", "loss")
        },
        "task": task.kind,
        "modalities": modalities,
        "epochs": len(history),
    }
