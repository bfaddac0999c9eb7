"""A sweep's plan without its data: run ids from known fingerprints, ``--only`` filters, ``--dry-run``.

A run id hashes the data fingerprint, which is the SHA-256 of each split's ids and labels: computing it
builds the data (``status --suite all.yaml`` drew every synthetic dataset of the suite to count its runs). So
planning (``status --suite``, ``sweep --dry-run``) takes it, where it can, from:

- ``benchmarks/fingerprints.yaml`` (``scripts/fingerprints.py``; ``tests/test_leaderboard.py`` keeps it equal
  to what the adapters compute), for data without files of its own to hash (synthetic, mfeat);
- the fingerprint cache (``<cache>/fingerprints/``, ``fingerprint.cache_dir``), for data read from files: a
  sweep that computed a fingerprint stores it under the dataset, its params, the adapter's source and the
  content digest of its files (``fingerprint.py``: hashed once, then only stat'ed), so any changed byte or
  parser misses the cache;

and computes it only otherwise. Training always computes it (``runner.prepare``): a known value never names
a record.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from mmbalance.common.records import RunDir, atomic_write_text
from mmbalance.common.spec import SpecError

ONLY_KEYS = ("method", "dataset", "seed", "block")


@cache
def _declared() -> dict[tuple[str, str], Any]:
    from mmbalance.leaderboard.leaderboard import LeaderboardError, load_fingerprints

    try:
        return load_fingerprints()
    except LeaderboardError:  # no registry (an installed copy without benchmarks/): compute instead
        return {}


def declared_fingerprint(adapter: Any) -> str | None:
    """The data fingerprint ``benchmarks/fingerprints.yaml`` declares for this adapter's configuration;
    None where none is declared or the data has files whose bytes the fingerprint must cover."""
    from mmbalance.leaderboard.leaderboard import params_hash

    cls = type(adapter)
    params = adapter.params.model_dump(mode="json")
    seed = None
    if cls.seed_param is not None:  # the registry keys the configuration with the seed left to the run
        seed, params = params[cls.seed_param], {**params, cls.seed_param: None}
    known = _declared().get((cls.name, params_hash(params)))
    if known is None or adapter.content_digest(record=False):
        return None
    return known.fingerprint if seed is None else known.fingerprints.get(seed)


def _cache_file(adapter: Any) -> Path | None:
    """Where the fingerprint of this adapter's files is cached (None for data without files to hash)."""
    digest = adapter.content_digest(record=False) if adapter.needs_files else ""
    if not digest:
        return None
    from mmbalance.training.fingerprint import cache_dir

    source = hashlib.sha256(Path(inspect.getfile(type(adapter))).read_bytes()).hexdigest()
    blob = json.dumps(
        [type(adapter).name, adapter.params.model_dump(mode="json"), source, digest], sort_keys=True
    )
    return cache_dir() / "fingerprints" / f"{hashlib.sha256(blob.encode()).hexdigest()[:32]}.txt"


def known_fingerprint(adapter: Any) -> str | None:
    """The data fingerprint without building the data: declared, or cached by a sweep (None: unknown)."""
    if (declared := declared_fingerprint(adapter)) is not None:
        return declared
    path = _cache_file(adapter)
    return path.read_text().strip() if path is not None and path.is_file() else None


def remember_fingerprint(adapter: Any, fingerprint: str) -> None:
    """Cache a computed fingerprint of data read from files, for ``known_fingerprint`` (best effort)."""
    path = _cache_file(adapter)
    if path is not None:
        try:
            atomic_write_text(path, fingerprint + "\n")
        except OSError:  # a read-only cache only costs the next plan the computation
            pass


def parse_only(items: Iterable[str]) -> dict[str, set[str]]:
    """``["method=joint,cggm", "seed=0"]`` -> ``{"method": {"joint", "cggm"}, "seed": {"0"}}``."""
    out: dict[str, set[str]] = {}
    for item in items:
        for part in item.split(";"):
            key, sep, values = part.partition("=")
            if not sep or key not in ONLY_KEYS or not values:
                raise SpecError(f"--only {part!r}: expected KEY=VALUE[,VALUE...] with KEY one of "
                                f"{', '.join(ONLY_KEYS)} (e.g. --only method=joint,cggm --only seed=0)")  # fmt: skip
            out.setdefault(key, set()).update(v.strip() for v in values.split(","))
    return out


def select(planned: list[Any], only: dict[str, set[str]]) -> list[Any]:
    """The planned runs (and skipped entries) that match every ``--only`` key; an unknown value is an error
    (a typo would otherwise run nothing and look finished)."""
    if not only:
        return planned

    def value(p: Any, key: str) -> str | None:
        if key == "block":
            return p.block
        return None if p.spec is None else str(getattr(p.spec, key))

    for key, wanted in only.items():
        present = {value(p, key) for p in planned}
        if unknown := sorted(wanted - present):
            known = ", ".join(sorted(v for v in present if v is not None))
            raise SpecError(
                f"--only {key}={','.join(unknown)}: no run of the suite has it; the suite's: {known}"
            )
    return [p for p in planned if all(value(p, k) in wanted for k, wanted in only.items())]


def dry_run_rows(ids: dict[str, str], results: Path) -> list[dict[str, str]]:
    """One row per planned run: its id, label and whether its record says it is finished."""
    from mmbalance.common.status import run_state

    rows = []
    for run_id, label in ids.items():
        rd = RunDir.of(results, run_id)
        state = run_state(rd).state if rd.path.is_dir() else "not started"
        rows.append({"run": label, "id": run_id, "state": "finished" if state == "done" else state})
    return rows
