"""The statistics of the report tables, from the field's libraries (scipy.stats, statsmodels,
scikit-posthocs); nothing here is hand-written but the bookkeeping.

- ``paired_vs_baseline``: Δ of a row against joint training over the seeds both have (the same seed gives
  both runs the same data split and initial draw, so the runs are paired), with a two-sided **paired
  t-test** (``scipy.stats.ttest_rel``). Not the Wilcoxon signed-rank test: with the suite's 5 seeds its
  smallest two-sided p-value is 2/2^5 = 0.0625, so it could never reach p < 0.05. The t-test assumes
  roughly normal seed-to-seed differences, the usual assumption behind a "mean ± std over seeds" table.
- ``holm``: Holm's step-down correction over the comparisons of one table (``statsmodels``).
- ``interval``: the mean and its 95% t-interval over seeds (the tuned report's laziness, tuned-vs-defaults
  and gain-vs-imbalance numbers).
- ``friedman``: Friedman's test that all methods are equal (``scipy.stats.friedmanchisquare``), over blocks
  that are seeds (within one table) or dataset/task tables (across tables).
- ``average_ranks``, ``nemenyi`` and ``critical_difference``: Demšar's (JMLR 2006) comparison of several
  methods over several data sets: average ranks, the Nemenyi post-hoc test
  (``scikit_posthocs.posthoc_nemenyi_friedman``) and its critical difference
  q_α · sqrt(k (k + 1) / (6 N)), with q_α the studentized range quantile over √2.

scipy and friends are imported inside the functions: the command line starts without them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import pandas as pd

__all__ = [
    "ALPHA",
    "PAIRED_TEST",
    "paired_vs_baseline",
    "holm",
    "friedman",
    "average_ranks",
    "nemenyi",
    "critical_difference",
    "interval",
]

ALPHA = 0.05
PAIRED_TEST = "two-sided paired t-test over the seeds both rows have"


def paired_vs_baseline(base: pd.Series, other: pd.Series) -> tuple[float | None, float | None, int]:
    """``(mean of other − base, p, n pairs)`` over the seeds (the series' index) both have; ``p`` is
    ``None`` with fewer than 2 pairs, and 1.0 when every pair is equal (no difference at all)."""
    from scipy.stats import ttest_rel

    both = pd.concat({"base": base, "other": other}, axis=1, join="inner").dropna()
    n = len(both)
    if n == 0:
        return None, None, 0
    diff = both["other"] - both["base"]
    if n < 2:
        return float(diff.mean()), None, n
    if (diff == 0).all():
        return 0.0, 1.0, n
    with warnings.catch_warnings():  # equal nonzero differences: t = ±inf, p = 0, with a precision warning
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(ttest_rel(both["other"], both["base"]).pvalue)
    return float(diff.mean()), p, n


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values of one family of comparisons."""
    if not pvalues:
        return {}
    from statsmodels.stats.multitest import multipletests

    keys = list(pvalues)
    adjusted = multipletests([pvalues[k] for k in keys], alpha=ALPHA, method="holm")[1]
    return {k: float(p) for k, p in zip(keys, adjusted, strict=True)}


def friedman(scores: pd.DataFrame) -> tuple[float, float] | None:
    """``(chi², p)`` of Friedman's test on ``scores`` (rows: blocks, columns: methods); ``None`` when it
    does not apply (fewer than 3 methods or 2 blocks)."""
    scores = scores.dropna()
    if scores.shape[1] < 3 or scores.shape[0] < 2:
        return None
    from scipy.stats import friedmanchisquare

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = friedmanchisquare(*(scores[c].to_numpy() for c in scores.columns))
    stat, p = float(res.statistic), float(res.pvalue)
    return (stat, p) if not math.isnan(p) else (0.0, 1.0)  # every block all ties: no evidence at all


def average_ranks(scores: pd.DataFrame) -> pd.DataFrame:
    """Rank of each method (column) within each block (row), 1 = best, ties averaged. ``scores`` are
    oriented so that higher is better in every block (negate a lower-is-better metric such as MAE)."""
    return scores.rank(axis=1, ascending=False, method="average")


def nemenyi(scores: pd.DataFrame) -> pd.DataFrame:
    """Pairwise Nemenyi p-values after Friedman (method x method); ``scores``: rows are blocks, oriented
    as for ``average_ranks``."""
    import scikit_posthocs

    return (
        scikit_posthocs.posthoc_nemenyi_friedman(scores.dropna().to_numpy())
        .set_axis(scores.columns, axis=0)
        .set_axis(scores.columns, axis=1)
    )


def critical_difference(k: int, n: int, alpha: float = ALPHA) -> float:
    """Nemenyi critical difference of average ranks for ``k`` methods over ``n`` blocks."""
    import numpy as np
    from scipy.stats import studentized_range

    q = studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    return float(q * math.sqrt(k * (k + 1) / (6 * n)))


def interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and the two-sided 95% t-interval of the mean over seeds (the mean thrice with one value)."""
    from scipy.stats import t

    v = pd.Series(values, dtype=float)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, mean, mean
    half = float(t.ppf(1 - ALPHA / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return mean, mean - half, mean + half
