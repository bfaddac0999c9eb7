"""Re-run an entry's seeds and compare their test metrics with the entry (trust by reproduction).

``check`` proves that an entry is well-formed and self-consistent, but a forger who recomputes every
hash and the summary passes it. Re-running is the guard that catches a wrong number (RobustBench
re-evaluates submitted models; OpenML scores predictions server-side): ``verify`` trains the entry's
spec again for some of its seeds, from scratch in a temporary results folder, and compares every test
metric within a tolerance. It is the only leaderboard code that imports the runner, and is kept out
of ``check`` and ``build`` so that validating and rendering never train anything.

Which seed: one drawn at random by default (``secrets``: a forger cannot tell which seed will be
checked, so every seed must be genuine), or ``seeds="all"``. How close: on CPU the runner is
deterministic (same code, seed, data: the same numbers), so when the entry and the re-run are both on
CPU every number must match to float precision; otherwise (GPU kernels are not bit-reproducible) the
tolerances below. Compared: every test metric and every modality number the page shows (Shapley
values, imbalance degree, equity, worst missing-modality metric).
"""

from __future__ import annotations

import math
import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mmbalance.common.metric_catalogue import metric_facts
from mmbalance.common.spec import validate_spec
from mmbalance.leaderboard.leaderboard import Entry, LeaderboardError
from mmbalance.training.runner import train

__all__ = ["Mismatch", "verify", "pick_seeds", "tolerance_for", "TOLERANCE", "CPU_EXACT"]

# Allowed |rerun - claimed| off CPU: percentage points for percent metrics, absolute for MAE, corr and
# the modality indices (imbalance degree in [0, 2], equity in [0, 1]).
TOLERANCE = {"percent": 1.0, "mae": 0.02, "corr": 0.02, "index": 0.02}
CPU_EXACT = {k: 1e-9 for k in TOLERANCE}  # float printing and summing only


@dataclass
class Mismatch:
    seed: int
    metric: str
    claimed: float | None
    rerun: float | None

    def __str__(self) -> str:
        return (
            f"seed {self.seed}: {self.metric} claimed {_num(self.claimed)}, re-run gives {_num(self.rerun)}"
        )


def _num(x: float | None) -> str:
    return "none" if x is None else f"{x:.4f}"


def pick_seeds(entry: Entry, seeds: Sequence[int] | Literal["all"] | None = None) -> list[int]:
    """The seeds to re-run: those asked, every one (``"all"``), or one at random."""
    have = [s.seed for s in entry.seeds]
    if seeds is None:
        return [secrets.choice(have)]
    if seeds == "all":
        return have
    if unknown := sorted(set(seeds) - set(have)):
        raise LeaderboardError(f"seeds {unknown} are not in the entry (it has {sorted(have)})")
    return list(seeds)


def tolerance_for(entry: Entry, device: str) -> dict[str, float]:
    """Exact when the entry's seeds and the re-run all ran on CPU (deterministic), else ``TOLERANCE``."""
    on_cpu = device == "cpu" and all(h.device == "cpu" for h in entry.hardware)
    return dict(CPU_EXACT if on_cpu else TOLERANCE)


def _differs(claimed: float | None, rerun: Any, tol: float) -> bool:
    if claimed is None or rerun is None:
        return claimed is not rerun
    return not abs(float(rerun) - claimed) <= tol  # NaN never matches


def _compare(seed: int, claimed: Any, final: dict[str, Any], tol: dict[str, float]) -> list[Mismatch]:
    """Every test metric and modality number of one seed against its re-run's ``final.json``."""
    out = []
    for metric, value in claimed.metrics.items():
        rerun = final["test"].get(metric, math.nan)
        if _differs(value, rerun, tol["percent" if metric_facts(metric).percent else metric]):
            out.append(Mismatch(seed, metric, value, rerun))
    if claimed.modality is None:
        return out
    got = final.get("modality_eval") or {}
    metric_tol = tol[
        "percent" if metric_facts(final["selection_metric"]).percent else final["selection_metric"]
    ]
    pairs = [(f"shapley {m}", v, (got.get("shapley") or {}).get(m), metric_tol)
             for m, v in claimed.modality.shapley.items()]  # fmt: skip
    pairs += [("imbalance degree", claimed.modality.imbalance_degree, got.get("imbalance_degree"), tol["index"]),
              ("equity", claimed.modality.equity, got.get("equity"), tol["index"]),
              ("worst missing", claimed.modality.worst_missing, got.get("worst_missing"), metric_tol)]  # fmt: skip
    return out + [Mismatch(seed, name, c, r) for name, c, r, t in pairs if _differs(c, r, t)]


def verify(entry: Entry, seeds: Sequence[int] | Literal["all"] | None = None, data_root: Path | None = None,
           device: str = "cpu", tolerance: dict[str, float] | None = None) -> list[Mismatch]:  # fmt: skip
    """Re-train ``seeds`` (default: one at random, see ``pick_seeds``) and return what disagrees."""
    tol = {**tolerance_for(entry, device), **(tolerance or {})}
    by_seed = {s.seed: s for s in entry.seeds}
    out: list[Mismatch] = []
    with tempfile.TemporaryDirectory(prefix="mmbalance-verify-") as tmp:
        for seed in pick_seeds(entry, seeds):
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
            out += _compare(seed, claimed, result.final, tol)
    return out
