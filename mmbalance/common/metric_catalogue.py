"""One catalogue of the numbers a run record holds: name, label, direction, decimals, valid range.

The tables (``report``, ``modality_report``, ``tuned_report``, ``paper``), the figures, the leaderboard
(its schema's ranges, its page's order and decimals) and the statistics read a metric's facts here.
Accuracy, F1 and Dice are percentages (0-100, two decimals), as the papers print them; MAE, Pearson
correlation and the loss keep three. Lower is better for MAE, the loss and the memory a run takes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Metric", "CATALOGUE", "PERCENT", "metric_facts"]

PERCENT = (0.0, 100.0)


@dataclass(frozen=True)
class Metric:
    name: str  # as ``mmbalance.training.metrics`` and the records spell it
    label: str  # a table's column, a figure's axis
    higher_is_better: bool = True
    decimals: int = 2
    range: tuple[float, float] = PERCENT  # the values a record may hold

    @property
    def percent(self) -> bool:
        return self.range == PERCENT


_NONNEGATIVE = (0.0, math.inf)
CATALOGUE: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("accuracy", "Acc"),
        Metric("f1_macro", "F1 (macro)"),
        Metric("f1_weighted", "F1 (weighted)"),
        Metric("acc2_non0", "Acc-2"),
        Metric("acc2_has0", "acc2_has0"),
        Metric("acc7", "Acc-7"),
        Metric("f1_non0", "F1"),
        Metric("f1_has0", "f1_has0"),
        # CH-SIMS (``sims_metrics``, MMSA's definitions)
        Metric("acc5", "Acc-5"),
        Metric("acc3", "Acc-3"),
        Metric("acc2", "Acc-2"),
        Metric("f1", "F1"),
        Metric("mae", "MAE", higher_is_better=False, decimals=3, range=_NONNEGATIVE),
        Metric("corr", "Corr", decimals=3, range=(-1.0, 1.0)),
        Metric("dice_mean", "Dice avg"),
        Metric("loss", "loss", higher_is_better=False, decimals=3, range=_NONNEGATIVE),
        # Resources (the memory table): lower is better, in MB.
        Metric("peak_memory_mb", "peak_memory_mb", higher_is_better=False, range=_NONNEGATIVE),
        Metric("method_memory_mb", "method_memory_mb", higher_is_better=False, range=_NONNEGATIVE),
        Metric("extra_memory_mb", "extra_memory_mb", higher_is_better=False, range=(-math.inf, math.inf)),
    )
}


def metric_facts(name: str) -> Metric:
    """The facts of ``name``: a catalogued metric; ``dice_<region>`` (a Dice percentage per region); a
    nested key (``probe/accuracy``) as its last part, under its own name; anything else a percentage."""
    if name in CATALOGUE:
        return CATALOGUE[name]
    last = name.split("/")[-1]
    if last != name and last in CATALOGUE:
        known = CATALOGUE[last]
        return Metric(name, name, known.higher_is_better, known.decimals, known.range)
    if name.startswith("dice_"):
        return Metric(name, f"Dice {name.removeprefix('dice_')}")
    return Metric(name, name)
