"""Re-run an entry's seeds and compare their test metrics with the entry (trust by reproduction).

``check`` proves that an entry is well-formed and self-consistent, but a forger who recomputes every
hash and the summary passes it. Re-running is the guard that catches a wrong number (RobustBench
re-evaluates submitted models; OpenML scores predictions server-side): ``verify`` trains the entry's
spec again for some of its seeds, from scratch in a temporary results folder, and compares every test
metric within a tolerance. It is the only leaderboard code that imports the runner, and is kept out
of ``check`` and ``build`` so that validating and rendering never train anything.

Same code, seed and hardware give the same numbers; other hardware or thread counts may differ
slightly, hence the tolerances (percentage points for percent metrics; absolute for MAE and corr).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mmbalance.leaderboard import RANGES, Entry, LeaderboardError
from mmbalance.runner import train
from mmbalance.spec import validate_spec

__all__ = ["Mismatch", "verify", "TOLERANCE"]

TOLERANCE = {"percent": 1.0, "mae": 0.02, "corr": 0.02}  # default allowed |rerun - claimed|


@dataclass
class Mismatch:
    seed: int
    metric: str
    claimed: float
    rerun: float

    def __str__(self) -> str:
        return f"seed {self.seed}: {self.metric} claimed {self.claimed:.4f}, re-run gives {self.rerun:.4f}"


def verify(entry: Entry, seeds: Sequence[int] | None = None, data_root: Path | None = None,
           device: str = "cpu", tolerance: dict[str, float] | None = None) -> list[Mismatch]:  # fmt: skip
    """Re-train ``seeds`` (default: the entry's first seed) and return the metrics that disagree."""
    tol = {**TOLERANCE, **(tolerance or {})}
    by_seed = {s.seed: s for s in entry.seeds}
    seeds = list(seeds) if seeds is not None else [entry.seeds[0].seed]
    if unknown := sorted(set(seeds) - set(by_seed)):
        raise LeaderboardError(f"seeds {unknown} are not in the entry (it has {sorted(by_seed)})")
    out: list[Mismatch] = []
    with tempfile.TemporaryDirectory(prefix="mmbalance-verify-") as tmp:
        for seed in seeds:
            claimed = by_seed[seed]
            spec = validate_spec({**entry.spec, "seed": seed})
            if spec.canonical() != {**entry.spec, "seed": seed}:
                raise LeaderboardError(
                    f"seed {seed}: the entry's spec is not canonical under this code version"
                )
            result = train(spec, tmp, data_root, device=device, progress=False)
            if result.status != "done":
                raise LeaderboardError(f"seed {seed}: the re-run {result.status}: {result.reason}")
            if result.run_id != claimed.run_id:
                raise LeaderboardError(f"seed {seed}: re-run id {result.run_id} differs from the entry's "
                                       f"{claimed.run_id} (other data or package version)")  # fmt: skip
            for metric, value in claimed.metrics.items():
                rerun = float(result.final["test"].get(metric, float("nan")))  # NaN never matches
                if not abs(rerun - value) <= tol[metric if metric in RANGES else "percent"]:
                    out.append(Mismatch(seed, metric, value, rerun))
    return out
