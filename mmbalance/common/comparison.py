"""What may be compared with what: the one comparison key of every table, test, rank and leaderboard track.

Two runs are compared (a row beside another, Δ vs joint, a paired test, a rank, a leaderboard track)
only when their specs are equal except for what belongs to the method:

- ``method``, ``method_params`` and ``seed`` never enter the key;
- under the tuned protocol (``tuned`` is not null: ``{budget, tuning_seeds, shared_space,
  method_space, chosen}``), what tuning chose counts as the method's own parameters too: the paths in
  ``tuned.chosen`` (``optim.lr``, ...) and ``tuned.method_space`` leave the key; the budget, the
  tuning seeds and the shared space stay in it (equal budgets are what makes tuned methods comparable);
- the data: the run's data fingerprint is part of the key, so two runs on different files (or on
  fixture files) are never compared, unless the seed draws the data (``dataset_params.data_seed: null``
  on synthetic data, ``split_seed: null`` on mfeat). Then every seed has its own fingerprint by design;
  the key leaves it out, rows pair by seed, and ``fingerprint_mismatches`` checks that two rows saw the
  same data at each seed.

The key is canonical JSON, so it groups in pandas and hashes to a short block id.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from mmbalance.common.records import RECORD_ONLY

__all__ = [
    "BASELINE",
    "REFERENCES",
    "METHOD_OWN",
    "SEED_DRAWS",
    "seed_draws_data",
    "key_fields",
    "comparison_key",
    "key_id",
    "differences",
    "fingerprint_mismatches",
    "KeyBlock",
    "split_blocks",
]

METHOD_OWN = ("method", "method_params", "seed")
BASELINE = "joint"  # what every Δ is against
# Reference rows: shown, never ranked (the headroom a balancing method aims at), in reports and leaderboard.
REFERENCES = {
    "unimodal": "a unimodal model of one modality",
    "unimodal_ensemble": "the ensemble of separately trained unimodal models",
}
SEED_DRAWS = ("data_seed", "split_seed")  # dataset_params set to null: the run seed draws the data


def seed_draws_data(spec: Mapping[str, Any]) -> bool:
    params = spec.get("dataset_params") or {}
    return any(k in params and params[k] is None for k in SEED_DRAWS)


def _drop(doc: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        doc = doc.get(part)
        if not isinstance(doc, dict):
            return
    doc.pop(leaf, None)


def key_fields(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec fields two runs must share to be compared (a deep copy; the spec is not changed)."""
    out = copy.deepcopy({k: v for k, v in spec.items() if k not in METHOD_OWN and k not in RECORD_ONLY})
    tuned = out.get("tuned")
    if isinstance(tuned, dict):
        tuned.pop("method_space", None)
        for path in tuned.pop("chosen", None) or []:
            _drop(out, path)
    return out


def comparison_key(
    spec: Mapping[str, Any], data_fingerprint: str | None = None, fixture: bool = False
) -> str:
    """Canonical JSON of ``key_fields`` plus the data (fingerprint unless the seed draws the data)."""
    fields = key_fields(spec)
    if data_fingerprint and not seed_draws_data(spec):
        fields["data"] = data_fingerprint
    if fixture:  # tiny files in a real format: their fingerprint differs already; say it in the key too
        fields["fixture_data"] = True
    return json.dumps(fields, sort_keys=True, default=str)


def key_id(key: str) -> str:
    """A short stable id of a key (for file names)."""
    return hashlib.sha256(key.encode()).hexdigest()[:6]


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True)
    return out


def differences(keys: Iterable[str]) -> dict[str, str]:
    """``key -> "epochs=20, optim.lr=0.01"``: the fields whose values differ between ``keys``, with
    this key's values ("" for a single key). A fingerprint shows as its first 8 characters."""
    keys = list(dict.fromkeys(keys))
    flat = {k: _flat(json.loads(k)) for k in keys}
    fields = sorted({f for d in flat.values() for f in d})
    varying = [f for f in fields if len({flat[k].get(f) for k in keys}) > 1]

    def show(f: str, v: str | None) -> str:
        if v is None:
            return f"{f} unset"
        value = json.loads(v)
        return f"data {str(value)[:14]}…" if f == "data" else f"{f}={value}"

    return {k: ", ".join(show(f, flat[k].get(f)) for f in varying) for k in keys}


def fingerprint_mismatches(base: Mapping[int, str | None], other: Mapping[int, str | None]) -> list[int]:
    """Seeds at which two rows whose key omits the data (seed-drawn data) saw different data."""
    return sorted(s for s in set(base) & set(other) if base[s] and other[s] and base[s] != other[s])


# --- a results frame split by key ----------------------------------------------------------------------
@dataclass
class KeyBlock:
    """The runs of one comparison key, with the title and file-name part that tell it from the others."""

    key: str
    title: str  # "synthetic (classification)", plus what differs from the other keys of that dataset
    slug: str  # "synthetic-classification", plus the key's id when the dataset and task have several
    fixture: bool  # trained on fixture files: shown, never ranked
    runs: pd.DataFrame
    protocol: str = "defaults"  # tuned: settings chosen by `mmbalance tune`; defaults: the method's own
    block: str | None = None  # the suite's block, when the runs carry one


def _without_fixture(key: str) -> tuple[str, bool]:
    fields = json.loads(key)
    fixture = bool(fields.pop("fixture_data", False))
    return json.dumps(fields, sort_keys=True), fixture


def _distinct(blocks: list[KeyBlock], runs: pd.DataFrame) -> list[KeyBlock]:
    """Keys that share a block's title (a suite block swept over a grid of optim settings) are told apart
    by what differs between them, in the title and the file name."""
    titles = [b.title for b in blocks]
    shared = [b for b in blocks if titles.count(b.title) > 1]
    labels = differences(_without_fixture(b.key)[0] for b in shared)
    return [
        b if b not in shared else dataclasses.replace(b, title=f"{b.title}: {labels[_without_fixture(b.key)[0]]}",
                                                      slug=f"{b.slug}-{key_id(b.key)}")
        for b in blocks
    ]  # fmt: skip


def split_blocks(runs: pd.DataFrame) -> list[KeyBlock]:
    """``runs`` (a ``results.load`` frame) split by its ``key`` column, ordered by title. Runs of a suite
    carry the suite's block name (``tuned_report.assign_blocks``): a key of one block is titled and named
    after it, in the suite's order."""
    out = []
    for (dataset, task), same in runs.groupby(["dataset", "task"], sort=True, dropna=False):
        task_text = task if isinstance(task, str) else "task unknown"
        keys = list(dict.fromkeys(same["key"]))
        labels = differences(_without_fixture(k)[0] for k in keys)  # the fixture mark is said apart
        for key in keys:
            data_key, fixture = _without_fixture(key)
            own = same[same["key"] == key]
            protocol = "tuned" if json.loads(data_key).get("tuned") else "defaults"
            title = f"{dataset} ({task_text})" + (f": {labels[data_key]}" if labels[data_key] else "")
            title += " [fixture data: never ranked]" if fixture else ""
            slug = f"{dataset}-{task_text}" + (f"-{key_id(key)}" if len(keys) > 1 else "")
            named = set(own["block"].dropna()) if "block" in own.columns else set()
            block = next(iter(named)) if len(named) == 1 else None
            if block is not None:
                title = f"{block}: {dataset} ({task_text}), {protocol} protocol"
                slug = block + ("" if protocol == "tuned" else f"-{protocol}")
            out.append(KeyBlock(key, title, slug.replace(" ", "_"), fixture, own, protocol, block))
    out = _distinct(out, runs)
    order = (
        dict(zip(runs["block"], runs["block_order"], strict=True)) if "block_order" in runs.columns else {}
    )
    return sorted(out, key=lambda b: (order.get(b.block, len(order)), b.protocol != "tuned", b.title))
