"""The formulas of ``modality_eval`` (numpy only, so that reports can use them without torch):
exact and sampled Shapley values, the imbalance degree, the equity index, MultiBench's relative and
effective robustness. Definitions and sources: ``modality_eval.py``'s docstring."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations

import numpy as np

__all__ = [
    "coalition_key",
    "effective_robustness",
    "equity",
    "imbalance_degree",
    "permutations",
    "relative_robustness",
    "sampled_shapley",
    "shapley_values",
]

LEVELS = tuple(i / 10 for i in range(10))  # MultiBench's noise levels (its single_plot's x axis)
Value = float | np.ndarray


# --- Shapley values ---------------------------------------------------------------------------------
def coalition_key(coalition: Iterable[str], order: Sequence[str]) -> str:
    """``"m0+m2"`` in the model's modality order; ``""`` for the empty coalition."""
    members = set(coalition)
    return "+".join(m for m in order if m in members)


def shapley_values(value: Mapping[frozenset[str], Value], modalities: Sequence[str]) -> dict[str, Value]:
    """Exact Shapley values from the value of every coalition (floats, or per-sample arrays)."""
    n = len(modalities)
    phi: dict[str, Value] = {}
    for m in modalities:
        others = [k for k in modalities if k != m]
        total: Value = 0.0
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for s in combinations(others, size):
                total = total + weight * (value[frozenset(s) | {m}] - value[frozenset(s)])
        phi[m] = total
    return phi


def permutations(modalities: Sequence[str], n: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [rng.sample(list(modalities), len(modalities)) for _ in range(n)]


def sampled_shapley(
    value: Mapping[frozenset[str], Value], orders: Sequence[Sequence[str]]
) -> dict[str, Value]:
    """Mean marginal contribution of each modality over the given orders (Castro et al. 2009)."""
    phi: dict[str, Value] = {m: 0.0 for m in orders[0]}
    for order in orders:
        before: frozenset[str] = frozenset()
        for m in order:
            phi[m] = phi[m] + value[before | {m}] - value[before]
            before = before | {m}
    return {m: v / len(orders) for m, v in phi.items()}


def imbalance_degree(sample_phi: Mapping[str, np.ndarray]) -> float:
    """Mean over samples of the spread ``max_m phi_i^m - min_m phi_i^m`` (ours; see the module doc)."""
    stacked = np.stack(list(sample_phi.values()))  # (M, N)
    return float((stacked.max(axis=0) - stacked.min(axis=0)).mean())


def equity(phi: Mapping[str, float]) -> float | None:
    """Pielou's evenness of the positive contributions; None for one modality or no positive share."""
    pos = np.clip(np.array(list(phi.values()), dtype=float), 0.0, None)
    if len(pos) < 2 or pos.sum() <= 0:
        return None
    p = pos[pos > 0] / pos.sum()
    return float(-(p * np.log(p)).sum() / math.log(len(pos)))


# --- robustness summaries (MultiBench eval_scripts/robustness.py) -----------------------------------------
def relative_robustness(curve: Sequence[float], levels: Sequence[float] = LEVELS) -> float:
    """Area under the metric-vs-noise-level curve, trapezoid rule (``relative_robustness_helper``)."""
    return float(
        sum((curve[i] + curve[i + 1]) * (levels[i + 1] - levels[i]) / 2 for i in range(len(curve) - 1))
    )


def effective_robustness(curve: Sequence[float], reference: Sequence[float]) -> float:
    """``sum_l f_l - (r_l + f_0 - r_0)``: the drop beyond the reference's (``effective_robustness_helper``)."""
    f, r = np.asarray(curve, dtype=float), np.asarray(reference, dtype=float)
    return float(np.sum(f - (r + f[0] - r[0])))
