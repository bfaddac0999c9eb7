"""A sweep's plan without its data: run ids from declared fingerprints, ``--only`` filters, ``--dry-run``.

A run id hashes the data fingerprint, which is the SHA-256 of each split's ids and labels: computing it
builds the data (``status --suite all.yaml`` once spent 27 CPU-s drawing every synthetic dataset). The
suite's configurations have it declared in ``benchmarks/fingerprints.yaml`` (``scripts/fingerprints.py``;
``tests/test_leaderboard.py`` keeps it equal to what the adapters compute), so planning takes it from
there where the data has no files of its own to hash, and computes it only for configurations not
declared. Training always computes it (``runner.prepare``): a declared value never names a record.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from mmbalance.records import RunDir
from mmbalance.spec import SpecError

ONLY_KEYS = ("method", "dataset", "seed", "block")


@cache
def _declared() -> dict[tuple[str, str], Any]:
    from mmbalance.leaderboard import LeaderboardError, load_fingerprints

    try:
        return load_fingerprints()
    except LeaderboardError:  # no registry (an installed copy without benchmarks/): compute instead
        return {}


def declared_fingerprint(adapter: Any) -> str | None:
    """The data fingerprint ``benchmarks/fingerprints.yaml`` declares for this adapter's configuration;
    None where none is declared or the data has files whose bytes the fingerprint must cover."""
    from mmbalance.leaderboard import params_hash

    cls = type(adapter)
    params = adapter.params.model_dump(mode="json")
    seed = None
    if cls.seed_param is not None:  # the registry keys the configuration with the seed left to the run
        seed, params = params[cls.seed_param], {**params, cls.seed_param: None}
    known = _declared().get((cls.name, params_hash(params)))
    if known is None or adapter.content_digest(record=False):
        return None
    return known.fingerprint if seed is None else known.fingerprints.get(seed)


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
    from mmbalance.status import run_state

    rows = []
    for run_id, label in ids.items():
        rd = RunDir.of(results, run_id)
        state = run_state(rd).state if rd.path.is_dir() else "not started"
        rows.append({"run": label, "id": run_id, "state": "finished" if state == "done" else state})
    return rows
