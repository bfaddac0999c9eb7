from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _method_helpers import assert_resume_is_exact, first_batch, trainer
from conftest import small_spec

from mmbalance.methods.cml import confidence_penalty
from mmbalance.training import runner
from mmbalance.training.method import MethodNotApplicable


def test_confidence_penalty_hand_computed():
    fewer = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])  # conf 0.75, 0.5
    more = torch.tensor([[0.0, 0.0], [0.0, math.log(4.0)]])  # conf 0.5, 0.8
    assert confidence_penalty(fewer, more).item() == pytest.approx(0.0)  # 0.25 - 0.3 < 0: hinge on the sum
    assert confidence_penalty(more, fewer).item() == pytest.approx(0.05)
    assert confidence_penalty(fewer[:1], more[:1]).item() == pytest.approx(0.25)


def test_removing_a_modality_equals_zeroing_its_features(tmp_path):
    tr = trainer(tmp_path, "cml", lam=0.5)
    batch = first_batch(tr)
    tr.method.order = ["m1", "m0", "m2"]  # remove m1, then m0; m2 stays
    out = tr.method.forward(tr.model, batch, tr.ctx)
    loss = tr.method.loss(out, batch, tr.ctx)
    feats = tr.model.encode(batch.inputs)

    def without(*gone):
        return tr.model.head(tr.model.fusion({m: f * 0 if m in gone else f for m, f in feats.items()}))

    z0, z1, z2 = out.pred, without("m1"), without("m1", "m0")
    ce = F.cross_entropy
    expected = (ce(z0, batch.target) + ce(z1, batch.target) + ce(z2, batch.target)) / 3
    expected = expected + 0.5 * (confidence_penalty(z1, z0) + confidence_penalty(z2, z1))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()  # every encoder and the head are trained
    params = [p for m in tr.modalities for p in tr.model.encoder_parameters(m)] + [tr.model.out_layer.weight]
    assert params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_refuses_regression():
    spec = small_spec(method="cml", dataset_params={"task": "regression"})
    with pytest.raises(MethodNotApplicable, match="confidence"):
        runner.make_method(spec).check(runner.make_adapter(spec).task)


def test_one_epoch_run_is_finite(tmp_path):
    r = runner.train(small_spec(method="cml", epochs=1), results=tmp_path, progress=False)
    assert r.status == "done" and math.isfinite(r.final["test"]["accuracy"])


def test_resume_is_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "cml")
