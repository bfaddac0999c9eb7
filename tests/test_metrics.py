"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from mmbalance.metrics import classification_metrics, dice_per_region, mosi_metrics


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
