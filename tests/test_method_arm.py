from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _method_helpers import assert_resume_is_exact, first_batch, trainer
from conftest import small_spec

from mmbalance.methods.arm import feature_scales, ncmi, nmi, pcmi
from mmbalance.training.method import MethodNotApplicable
from mmbalance.training.runner import train


def test_nmi_by_hand():
    x = np.array([0.0, 0.0, 1.0, 1.0])
    assert nmi(x, x, bins=2) == pytest.approx(1.0)  # I = H = ln 2
    assert nmi(x, np.array([0.0, 1.0, 0.0, 1.0]), bins=2) == pytest.approx(0.0)
    assert nmi(np.zeros(4), np.zeros(4), bins=2) == 0.0  # no entropy: 0, not the code's NaN


def test_ncmi_as_released_by_hand():
    # x = y, z independent; every joint cell (x, y, z) in {(0,0,0), (0,0,1), (1,1,0), (1,1,1)} is 1/4, p(z) = 1/2.
    # The released conditional_entropy divides along the first axis: the (x, z) and (y, z) marginals
    # (all 1/4) broadcast to eight cells of 1/2 -> 4 ln 2 each; the joint to four cells of 1/2 -> 2 ln 2.
    # (4 + 4 - 2) ln 2 / (8 ln 2) = 0.75 (the textbook NCMI would be 1)
    x, z = np.array([0.0, 0.0, 1.0, 1.0]), np.array([0.0, 1.0, 0.0, 1.0])
    assert ncmi(x, x, z, bins=2) == pytest.approx(0.75)


def test_contribution_and_scales_by_hand():
    assert pcmi(0.5, 0.4, 0.3, 0.1) == pytest.approx(0.5 * 0.3 + 0.4 * (0.3 - 0.1))
    assert feature_scales({"a": 2.0, "v": 1.0}) == pytest.approx({"a": 0.5, "v": 2.0})
    assert feature_scales({"a": 1.0, "b": 2.0, "c": 3.0}) == pytest.approx({"a": 2.5, "b": 1.0, "c": 0.5})


def test_prediction_scales_the_features_by_the_batch_coefficients(tmp_path):
    tr = trainer(tmp_path, "arm")
    batch = first_batch(tr)
    out = tr.method.forward(tr.model, batch, tr.ctx)
    scale = tr.method.scale
    assert set(scale) == set(tr.ctx.modalities) and all(v > 0 for v in scale.values())
    with torch.no_grad():
        f = tr.model.encode(batch.inputs)
        fused = torch.cat([scale[m] * f[m] for m in tr.ctx.modalities], dim=1)
        torch.testing.assert_close(out.pred, tr.method.fc(tr.method.fuse(fused)))
        # by hand for modality m0: its own NMI / NCMI against z and the other scores
        z = tr.method.neck(torch.cat([f[m] for m in tr.ctx.modalities], dim=1))
        s = {
            k: tr.method.fc(v).softmax(1).gather(1, batch.target[:, None]).mean().item() for k, v in f.items()
        }
        s0 = tr.method.fc(z).softmax(1).gather(1, batch.target[:, None]).mean().item()
    v = {k: t.reshape(-1).numpy() for k, t in f.items()}
    zs = z.reshape(-1).numpy()
    contribution = {}
    for m in tr.ctx.modalities:
        others = [k for k in tr.ctx.modalities if k != m]
        c = np.mean([ncmi(v[m], zs, v[k], 2) for k in others])
        contribution[m] = s0 * nmi(v[m], zs, 30) + np.mean([s[k] for k in others]) * (nmi(v[m], zs, 30) - c)
    assert scale == pytest.approx(feature_scales(contribution))
    out.pred.sum().backward()  # the loss reaches the encoders, W_h and fc; not the neck
    assert tr.method.fuse.weight.grad is not None and tr.method.neck.weight.grad is None
    assert all(p.grad is not None for m in tr.ctx.modalities for p in tr.model.encoder_parameters(m))


def test_evaluation_reads_no_labels_unless_asked(tmp_path):
    for mode, depends in (("train", False), ("labels", True)):
        tr = trainer(tmp_path / mode, "arm", eval_coefficients=mode)
        tr.train_epoch(0, type("Bar", (), {"update": lambda self, n: None})())
        tr.ctx.training = False
        batch = first_batch(tr)
        with torch.no_grad():
            a = tr.method.forward(tr.model, batch, tr.ctx).pred
            batch.target = (batch.target + 1) % tr.adapter.task.num_classes
            b = tr.method.forward(tr.model, batch, tr.ctx).pred
        assert torch.equal(a, b) != depends, mode
    assert tr.method.eval_scale != {m: 1.0 for m in tr.ctx.modalities}  # the epoch's mean coefficients


def test_two_epoch_run_is_finite(tmp_path):
    r = train(small_spec(method="arm", method_params={"init_std": None}), results=tmp_path, progress=False)
    assert r.status == "done" and math.isfinite(r.final["test"]["accuracy"])


def test_resume_is_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "arm")


def test_refuses_regression(tmp_path):
    with pytest.raises(MethodNotApplicable, match="arm"):
        train(
            small_spec(method="arm", dataset_params={"task": "regression"}), results=tmp_path, progress=False
        )
