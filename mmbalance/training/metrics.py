"""Task metrics: classification, MOSI-style and CH-SIMS sentiment regression, Dice per region.

Each function takes plain tensors/arrays of a whole split and returns ``{name: float}``.
Accuracy, F1 and Dice are reported in percent (0-100), as the papers print them; MAE and
Pearson correlation are reported as they are.
"""

from __future__ import annotations

import numpy as np
import torch

from mmbalance.common.metric_catalogue import metric_facts

__all__ = [
    "accuracy_score",
    "f1_score",
    "classification_metrics",
    "mosi_metrics",
    "sims_metrics",
    "dice_per_region",
    "dice_per_sample",
    "primary_value",
    "split_primary",
    "PRIMARY",
]

# The metric that selects the best validation epoch, per task kind, and whether higher is better.
PRIMARY = {
    kind: (name, metric_facts(name).higher_is_better)
    for kind, name in {"classification": "accuracy", "regression": "mae", "segmentation": "dice_mean"}.items()
}


def accuracy_score(y: np.ndarray, pred: np.ndarray) -> float:
    """scikit-learn's ``accuracy_score(y, pred)`` (the same float)."""
    return float(np.average(y == pred))


def f1_score(y: np.ndarray, pred: np.ndarray, average: str) -> float:
    """scikit-learn's ``f1_score(y, pred, average=average, zero_division=0)``, ``average`` "macro" or
    "weighted", the same float: sklearn 1.9's arithmetic on the same counts (labels: those present in
    ``y`` or ``pred``; per label ``f = 2 tp / (true + predicted)``; ``np.average``, weighted by the true
    counts). sklearn's input validation costs ~4 ms a call, which was half of a small synthetic run
    (2 F1 per split per epoch); ``tests/test_metrics.py`` checks equality with sklearn."""
    labels, index = np.unique(np.concatenate([y, pred]), return_inverse=True)
    yi, pi = index[: len(y)], index[len(y) :]
    true_sum = np.bincount(yi, minlength=len(labels))
    pred_sum = np.bincount(pi, minlength=len(labels))
    tp_sum = np.bincount(yi[yi == pi], minlength=len(labels))
    denom = true_sum.astype(np.float64) + pred_sum.astype(np.float64)  # > 0 for every label present
    f = 2 * tp_sum.astype(np.float64) / denom
    return float(np.average(f, weights=true_sum if average == "weighted" else None))


def classification_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Accuracy, macro F1 and weighted F1 (percent) of ``argmax(logits)`` against integer labels."""
    pred = logits.argmax(dim=-1).cpu().numpy()
    y = target.cpu().numpy()
    return {
        "accuracy": 100.0 * accuracy_score(y, pred),
        "f1_macro": 100.0 * f1_score(y, pred, average="macro"),
        "f1_weighted": 100.0 * f1_score(y, pred, average="weighted"),
    }


def mosi_metrics(pred: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """The CMU-MOSI metrics as MMSA's ``__eval_mosi_regression`` computes them.

    - ``mae``: mean absolute error; ``corr``: Pearson correlation.
    - ``acc7``: both clipped to [-3, 3] and rounded to the nearest integer, then accuracy.
    - ``acc2_has0`` / ``f1_has0``: positive = value >= 0, over all samples.
    - ``acc2_non0`` / ``f1_non0``: positive = value > 0, over samples whose truth is not 0
      (the convention of MulT and most MOSI tables). F1 is weighted, as in MMSA.
    """
    p = pred.detach().reshape(-1).cpu().double().numpy()
    t = truth.detach().reshape(-1).cpu().double().numpy()
    if p.shape != t.shape:
        raise ValueError(f"mosi_metrics: prediction shape {p.shape} differs from truth shape {t.shape}")
    corr = float(np.corrcoef(p, t)[0, 1]) if p.std() > 0 and t.std() > 0 else 0.0
    non0 = t != 0
    out = {
        "mae": float(np.abs(p - t).mean()),
        "corr": corr,
        "acc7": 100.0 * float((np.round(np.clip(p, -3, 3)) == np.round(np.clip(t, -3, 3))).mean()),
        "acc2_has0": 100.0 * accuracy_score(t >= 0, p >= 0),
        "f1_has0": 100.0 * f1_score(t >= 0, p >= 0, average="weighted"),
        "acc2_non0": 100.0 * accuracy_score(t[non0] > 0, p[non0] > 0) if non0.any() else float("nan"),
        "f1_non0": (
            100.0 * f1_score(t[non0] > 0, p[non0] > 0, average="weighted") if non0.any() else float("nan")
        ),
    }
    return out


# MMSA's SIMS classes over [-1, 1] (Haoyu-ha/LNLN @ 80a052c core/metric.py l.78-103, as thuiar/MMSA): a value
# in (edge[k], edge[k+1]] is class k, so -1 falls in the first class because the first edge is -1.01.
SIMS_EDGES = {
    2: (-1.01, 0.0, 1.01),
    3: (-1.01, -0.1, 0.1, 1.01),
    5: (-1.01, -0.7, -0.1, 0.1, 0.7, 1.01),
}


def sims_classes(values: np.ndarray, k: int) -> np.ndarray:
    """Class of each value (already clipped to [-1, 1]) among ``SIMS_EDGES[k]``, compared in float32 as
    MMSA compares its float32 arrays (a label 0.1f sits on the edge 0.1, not above it)."""
    edges = np.asarray(SIMS_EDGES[k], dtype=np.float32)
    return np.searchsorted(edges, values.astype(np.float32), side="left") - 1


def sims_metrics(pred: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """The CH-SIMS metrics as MMSA's ``__eval_sims_regression`` (and LNLN's copy, ``core/metric.py``
    l.72-120) computes them: prediction and truth clipped to [-1, 1] first (MAE and Corr too), then

    - ``acc2`` / ``acc3`` / ``acc5``: accuracy of the classes of ``SIMS_EDGES``;
    - ``f1``: weighted F1 of the two classes (truth first: LNLN's corrected order, commit f07d9d2);
    - ``mae``, ``corr``: of the clipped values.
    """
    p = np.clip(pred.detach().reshape(-1).cpu().double().numpy(), -1.0, 1.0)
    t = np.clip(truth.detach().reshape(-1).cpu().double().numpy(), -1.0, 1.0)
    if p.shape != t.shape:
        raise ValueError(f"sims_metrics: prediction shape {p.shape} differs from truth shape {t.shape}")
    out = {f"acc{k}": 100.0 * accuracy_score(sims_classes(t, k), sims_classes(p, k)) for k in (2, 3, 5)}
    out["f1"] = 100.0 * f1_score(sims_classes(t, 2), sims_classes(p, 2), average="weighted")
    out["mae"] = float(np.abs(p - t).mean())
    out["corr"] = float(np.corrcoef(p, t)[0, 1]) if p.std() > 0 and t.std() > 0 else 0.0
    return out


def dice_per_region(
    pred_labels: torch.Tensor, target_labels: torch.Tensor, regions: dict[str, tuple[int, ...]]
) -> dict[str, float]:
    """Dice (percent) of each region, and their mean as ``dice_mean``.

    A region is a set of label values (BraTS: WT = {1, 2, 3}, TC = {1, 3}, ET = {3}).
    ``pred_labels`` and ``target_labels`` are integer label maps of the same shape ``(B, *spatial)``;
    Dice is computed per item as MONAI's ``compute_dice`` does (``dice_per_sample``; ``tests/test_metrics.py``
    checks equality with MONAI) and averaged over items. An item whose region is empty in both prediction
    and target scores 1 (MONAI ``ignore_empty=False``).
    """
    if pred_labels.shape != target_labels.shape:
        raise ValueError(
            f"dice_per_region: prediction shape {tuple(pred_labels.shape)} "
            f"differs from target shape {tuple(target_labels.shape)}"
        )
    out = {
        f"dice_{name}": 100.0 * dice_per_sample(pred_labels, target_labels, labels).mean().item()
        for name, labels in regions.items()
    }
    out["dice_mean"] = float(np.mean([out[f"dice_{n}"] for n in regions]))
    return out


def dice_per_sample(
    pred_labels: torch.Tensor, target_labels: torch.Tensor, labels: tuple[int, ...]
) -> torch.Tensor:
    """(B,) Dice (fraction) of one region per item, as MONAI's ``compute_dice`` with
    ``ignore_empty=False`` computes it (float32 sums; 1 where prediction and target are both empty),
    without its per-item, per-channel Python loop (a third of a small segmentation run)."""
    values = torch.tensor(labels, device=pred_labels.device)
    p = torch.isin(pred_labels, values).flatten(1).float()
    t = torch.isin(target_labels, values).flatten(1).float()
    inter, denom = (p * t).sum(dim=1), t.sum(dim=1) + p.sum(dim=1)
    return torch.where(denom > 0, 2.0 * inter / denom, torch.ones_like(denom))


def split_primary(
    kind: str, pred: torch.Tensor, target: torch.Tensor, regions: dict[str, tuple[int, ...]]
) -> float:
    """The primary metric of a whole split, the same number as ``classification_metrics`` /
    ``mosi_metrics`` / ``dice_per_region`` give, without computing the other metrics."""
    if kind == "classification":
        return 100.0 * accuracy_score(target.cpu().numpy(), pred.argmax(dim=-1).cpu().numpy())
    if kind == "regression":
        p = pred.detach().reshape(-1).cpu().double().numpy()
        return float(np.abs(p - target.detach().reshape(-1).cpu().double().numpy()).mean())
    labels = pred.max(dim=1).indices  # = argmax(dim=1) (first maximum), ~10x faster over the class axis
    return float(
        np.mean([100.0 * dice_per_sample(labels, target, r).mean().item() for r in regions.values()])
    )


def primary_value(
    kind: str, pred: torch.Tensor, target: torch.Tensor, regions: dict[str, tuple[int, ...]]
) -> float:
    """The task's primary metric on one batch, cheaply (accuracy %, MAE, or mean Dice %)."""
    if kind == "classification":
        return 100.0 * (pred.argmax(dim=-1) == target).float().mean().item()
    if kind == "regression":
        return (pred.reshape(-1) - target.reshape(-1)).abs().mean().item()
    return dice_per_region(pred.argmax(dim=1), target, regions)["dice_mean"]
