"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmbalance.training.metrics import classification_metrics, dice_per_region, mosi_metrics


def test_classification_metrics_by_hand():
    # predictions 0,1,1,2 for truth 0,1,2,2: accuracy 3/4.
    logits = torch.tensor([[5.0, 0, 0], [0, 5, 0], [0, 5, 0], [0, 0, 5]])
    y = torch.tensor([0, 1, 2, 2])
    m = classification_metrics(logits, y)
    assert m["accuracy"] == pytest.approx(75.0)
    # per-class F1: class0 = 1, class1 = 2*1*.5/1.5 = 2/3, class2 = 2*1*.5/1.5 = 2/3
    assert m["f1_macro"] == pytest.approx(100 * (1 + 2 / 3 + 2 / 3) / 3)
    # weighted by support 1, 1, 2
    assert m["f1_weighted"] == pytest.approx(100 * (1 + 2 / 3 + 2 * 2 / 3) / 4)


def test_mosi_metrics_by_hand():
    truth = torch.tensor([-2.4, 0.0, 1.2, 2.6, -0.4])
    pred = torch.tensor([-1.6, 0.3, 0.6, 3.4, 0.2])
    m = mosi_metrics(pred, truth)
    assert m["mae"] == pytest.approx((0.8 + 0.3 + 0.6 + 0.8 + 0.6) / 5)
    # acc7: round(clip(.)): truth -2, 0, 1, 3, -0 ; pred -2, 0, 1, 3, 0 -> all equal
    assert m["acc7"] == pytest.approx(100.0)
    # has0 (>= 0): truth F T T T F ; pred F T T T T -> 4/5
    assert m["acc2_has0"] == pytest.approx(80.0)
    # non0: drop the zero truth -> truth F T T F ; pred F T T T -> 3/4
    assert m["acc2_non0"] == pytest.approx(75.0)
    t, p = truth.double(), pred.double()
    tc, pc = t - t.mean(), p - p.mean()
    assert m["corr"] == pytest.approx(
        (tc * pc).sum().item() / math.sqrt((tc**2).sum() * (pc**2).sum()), rel=1e-6
    )
    # weighted F1 on non0: class F: 1 sample, P=1, R=0.5... (truth F,T,T,F pred F,T,T,T)
    # class F: tp=1 fp=0 fn=1 -> f1=2/3 (support 2); class T: tp=2 fp=1 fn=0 -> f1=0.8 (support 2)
    assert m["f1_non0"] == pytest.approx(100 * (2 / 3 + 0.8) / 2)


def test_dice_per_region_by_hand():
    # one 1x4 "image": target 0 1 3 3, prediction 0 1 1 3
    target = torch.tensor([[[0, 1, 3, 3]]])
    pred = torch.tensor([[[0, 1, 1, 3]]])
    regions = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
    d = dice_per_region(pred, target, regions)
    assert d["dice_WT"] == pytest.approx(100.0)  # {1,2,3} masks equal
    assert d["dice_TC"] == pytest.approx(100.0)
    assert d["dice_ET"] == pytest.approx(100 * 2 * 1 / (1 + 2))  # |P∩T|=1, |P|=1, |T|=2
    assert d["dice_mean"] == pytest.approx((100 + 100 + 200 / 3) / 3)


def test_dice_empty_region_in_both_counts_as_perfect():
    z = torch.zeros(1, 2, 2, dtype=torch.long)
    assert dice_per_region(z, z, {"ET": (3,)})["dice_ET"] == pytest.approx(100.0)


@pytest.mark.parametrize("seed", range(6))
def test_f1_and_accuracy_equal_scikit_learn_to_the_last_bit(seed):
    """Our F1 / accuracy (sklearn's arithmetic without its validation) give sklearn's float exactly:
    multiclass with classes missing from the truth, the prediction or both, and MOSI's boolean labels."""
    from sklearn import metrics as skm

    from mmbalance.training.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 200))
    cases = [
        (rng.integers(0, 7, n), rng.integers(2, 9, n)),  # label sets overlap only partly
        (rng.integers(0, 3, n), np.zeros(n, dtype=np.int64)),  # one predicted class
        (rng.standard_normal(n) >= 0, rng.standard_normal(n) > 0.5),  # booleans (MOSI Acc-2 / F1)
    ]
    for y, pred in cases:
        assert accuracy_score(y, pred) == skm.accuracy_score(y, pred)
        for average in ("macro", "weighted"):
            ours = f1_score(y, pred, average=average)
            assert ours == skm.f1_score(y, pred, average=average, zero_division=0), (average, y, pred)


@pytest.mark.parametrize("seed", range(4))
def test_dice_per_region_equals_monai_compute_dice(seed):
    """``dice_per_region`` (our per-item sums) gives the numbers of MONAI's ``compute_dice``
    (``ignore_empty=False``) averaged over items, including items where a region is empty in both maps."""
    from monai.metrics import compute_dice

    g = torch.Generator().manual_seed(seed)
    pred = torch.randint(0, 4, (6, 9, 11), generator=g)
    target = torch.randint(0, 4, (6, 9, 11), generator=g)
    target[0] = 0  # no tumour at all in item 0
    pred[0] = 0
    target[1][target[1] == 3] = 1  # item 1: region ET empty in the target only
    regions = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
    ours = dice_per_region(pred, target, regions)
    for name, labels in regions.items():
        values = torch.tensor(labels)
        p = torch.isin(pred, values).unsqueeze(1).float()
        t = torch.isin(target, values).unsqueeze(1).float()
        monai = 100.0 * compute_dice(p, t, include_background=True, ignore_empty=False).mean().item()
        assert ours[f"dice_{name}"] == monai, name
