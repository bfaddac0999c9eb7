"""The tuned protocol's settings file, ``benchmarks/tuned/<suite>.yaml``: what ``mmbalance tune`` chose.

Per block of a suite and per method (each variant of it: ``unimodal(modality=m0)``) the file holds the
spec paths tuning set (``set``: ``optim.lr``, ``method_params.alpha``, ...), the trial count and the
best validation score; its header holds the budget, the tuning seeds, the sampler and the hash of the
shared optimiser space. ``make bench-all`` reads it (``protocol: tuned`` in the suite) and never tunes.

A tuned run's spec carries ``tuned: {budget, tuning_seeds, shared_space, method_space, chosen}``, so its
record says it is a tuned run and which search chose its settings (``spec.TunedSpec``).
This module reads and writes YAML only: reports use it without importing any training code.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mmbalance.common.core import StrictModel
from mmbalance.common.safe_load import DocumentError, load_yaml_file

__all__ = ["TUNED_DIR", "TunedEntry", "TunedFile", "tuned_path", "load_tuned", "set_path", "apply_tuned"]

TUNED_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "tuned"


class TunedEntry(StrictModel):
    method: str
    variant: dict[str, Any] = {}  # the variant's own method_params (unimodal: the modality)
    set: dict[str, Any]  # spec path -> the chosen value
    method_space: str  # search_space.space_hash of the method's own space
    trials: int  # trials run (complete, failed and pruned)
    complete: int  # trials that gave a validation score
    best_valid: float | None  # the chosen trial's validation score, mean over the tuning seeds
    default_valid: float | None = None  # the same for the defaults (trial 0 is always the defaults)
    metric: str


class TunedFile(StrictModel):
    suite: str
    budget: int
    tuning_seeds: list[int]
    sampler: dict[str, Any]
    shared_space: str
    blocks: dict[str, dict[str, TunedEntry]]  # block -> method label -> entry


def tuned_path(suite_name: str, file: str | None = None) -> Path:
    return Path(file) if file else TUNED_DIR / f"{suite_name}.yaml"


def load_tuned(path: Path) -> TunedFile:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no tuned settings; create them with `mmbalance tune SUITE` (make tune), "
            "or run the suite under `protocol: defaults`"
        )
    try:
        return TunedFile.model_validate(load_yaml_file(path))
    except (DocumentError, ValidationError) as e:
        raise ValueError(f"{path}: not a tuned-settings file ({str(e).splitlines()[0]})") from None


def set_path(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``doc`` with ``a.b.c`` set to ``value`` (missing sections created)."""
    out = copy.deepcopy(doc)
    node = out
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return out


def apply_tuned(doc: dict[str, Any], entry: TunedEntry, tuned: TunedFile) -> dict[str, Any]:
    """The spec document of ``doc`` (a block's method entry, default protocol) under the tuned protocol."""
    for path, value in entry.set.items():
        doc = set_path(doc, path, value)
    chosen = sorted(entry.set)
    return {
        **doc,
        "tuned": {
            "budget": tuned.budget, "tuning_seeds": tuned.tuning_seeds, "shared_space": tuned.shared_space,
            "method_space": entry.method_space, "chosen": chosen,
        },
    }  # fmt: skip


def dump_tuned(tuned: TunedFile, header: str) -> str:
    """The file's text: a comment header, then the settings (keys in the order tune wrote them)."""
    body = yaml.safe_dump(tuned.model_dump(mode="json"), sort_keys=False, width=110)
    return "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + body
