from __future__ import annotations

import math

import pytest
import torch
from _method_helpers import assert_resume_is_exact, first_batch, trainer
from conftest import small_spec

from mmbalance.methods.gblending import FUSED, blend_weights
from mmbalance.training import runner


def test_blend_weights_hand_computed():
    # head a: G = 0.8 - 1.0 = -0.2, O = (0.8 - 0.5) - (1.0 - 0.9) = 0.2 -> |G / O^2| = 5
    # head b: G = 0.7 - 1.0 = -0.3, O = (0.7 - 0.2) - (1.0 - 0.9) = 0.4 -> 0.3 / 0.16 = 1.875
    start = {"a": (0.9, 1.0), "b": (0.9, 1.0)}
    end = {"a": (0.5, 0.8), "b": (0.2, 0.7)}
    w = blend_weights(start, end)
    assert w["a"] == pytest.approx(5 / 6.875) and w["b"] == pytest.approx(1.875 / 6.875)
    assert blend_weights(start, start) == {"a": 0.5, "b": 0.5}  # nothing moved: uniform


def test_loss_is_the_weighted_sum_over_heads(tmp_path):
    tr = trainer(tmp_path, "gblending")
    assert tr.method.weights == {"m0": 0.25, "m1": 0.25, "m2": 0.25, FUSED: 0.25}
    heads = tr.method.heads
    assert {id(p) for p in heads.parameters()} <= {
        id(p) for g in tr.optimizer.param_groups for p in g["params"]
    }
    tr.method.weights = {"m0": 0.1, "m1": 0.2, "m2": 0.3, FUSED: 0.4}
    batch = first_batch(tr)
    out = tr.method.forward(tr.model, batch, tr.ctx)
    ce = torch.nn.functional.cross_entropy
    expected = 0.4 * ce(out.pred, batch.target) + sum(
        w * ce(out.modality_logits[m], batch.target)
        for m, w in zip(tr.modalities, (0.1, 0.2, 0.3), strict=True)
    )
    loss = tr.method.loss(out, batch, tr.ctx)
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    for m in tr.modalities:  # each encoder gets the fused head's and its own head's gradient
        assert tr.model.encoder_parameters(m) and all(
            p.grad is not None for p in tr.model.encoder_parameters(m)
        )
        assert all(p.grad is not None for p in heads.heads[m].parameters())


def test_weights_are_re_estimated_each_super_epoch(tmp_path):
    tr = trainer(tmp_path, "gblending", super_epoch=1)
    tr.method.on_epoch_start(tr.ctx)  # epoch 0: first measurement, uniform weights stay
    first = tr.method.start
    assert set(first) == {"m0", "m1", "m2", FUSED} and tr.method.weights[FUSED] == 0.25
    with torch.no_grad():  # move the model, then measure again
        for p in tr.model.encoder_parameters("m2"):
            p.mul_(1.5)
    tr.ctx.epoch = 1
    tr.method.on_epoch_start(tr.ctx)
    assert tr.model.training
    assert tr.method.weights == pytest.approx(blend_weights(first, tr.method.start))
    assert sum(tr.method.weights.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_two_epoch_run_is_finite(tmp_path, task):
    spec = small_spec(
        method="gblending", epochs=2, method_params={"super_epoch": 1}, dataset_params={"task": task}
    )
    r = runner.train(spec, results=tmp_path, progress=False)
    assert r.status == "done" and math.isfinite(
        r.final["test"]["accuracy" if task == "classification" else "mae"]
    )


def test_resume_is_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "gblending", super_epoch=1)
