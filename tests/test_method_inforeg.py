from __future__ import annotations

import math

import pytest
import torch
from _method_helpers import assert_resume_is_exact, first_batch, trainer
from conftest import small_spec

from mmbalance.methods.inforeg import fisher_layers, proximal_beta, window_indicator
from mmbalance.training import runner
from mmbalance.training.method import MethodNotApplicable


def test_window_indicator_hand_computed():
    assert window_indicator([0.0] * 10 + [2.0], 10) == pytest.approx(1.0)  # (0.2 - 0) / 0.2
    assert window_indicator([0.0] * 10 + [2.0, 4.0], 10) == pytest.approx((0.6 - 0.2) / 0.6)
    assert window_indicator([0.0] * 10, 10) == 1.0  # no trace yet


def test_proximal_beta_hand_computed():
    beta = proximal_beta(torch.tensor([5.0, 3.0]), torch.tensor([1.0, 1.0]), 0.95, 0.04)
    assert beta.tolist() == pytest.approx([0.95 * math.exp(math.tanh(2.0)), 0.0])  # 2.49114
    assert proximal_beta(torch.tensor([5.0, 3.0]), torch.tensor([0.01, 1.0]), 0.95, 0.04).tolist() == [
        0.0,
        0.0,
    ]
    beta = proximal_beta(torch.tensor([1.0, 4.0, 3.5]), torch.tensor([1.0, 1.0, 1.0]), 0.95, 0.04)
    assert beta.tolist() == pytest.approx([0.0, 0.95 * math.exp(math.tanh(0.5)), 0.0])  # gap to the runner-up


def test_pull_acts_on_the_dominant_encoder_only(tmp_path):
    tr = trainer(tmp_path, "inforeg")
    batch = first_batch(tr)
    tr.method.on_epoch_start(tr.ctx)
    tr.method.anchor = {m: [a - 1.0 for a in anchors] for m, anchors in tr.method.anchor.items()}  # p - a = 1
    out = tr.method.forward(tr.model, batch, tr.ctx)
    tr.model.zero_grad(set_to_none=True)
    tr.method.loss(out, batch, tr.ctx).backward()
    plain = {m: [p.grad.clone() for p in tr.model.encoder_parameters(m)] for m in tr.modalities}
    head = tr.model.head.weight.grad.clone()
    tr.method.after_backward(tr.model, out, batch, tr.ctx)
    beta = tr.method.beta
    assert (beta > 0).sum() == 1  # k = 1 in epoch 0, so the dominant modality is pulled
    for i, m in enumerate(tr.modalities):
        params = tr.model.encoder_parameters(m)
        assert params
        for p, g in zip(params, plain[m], strict=True):
            assert torch.allclose(p.grad - g, torch.full_like(g, beta[i].item()), atol=1e-5)
    assert torch.equal(tr.model.head.weight.grad, head)
    for m in tr.modalities:  # the Fisher trace reads every Linear weight of each encoder
        layers = fisher_layers(tr.model.encoders[m])
        assert len(layers) == 2 and all(f.sum() > 0 for f in tr.method.fisher[m])


def test_refuses_regression():
    with pytest.raises(MethodNotApplicable, match="no classes"):
        spec = small_spec(method="inforeg", dataset_params={"task": "regression"})
        runner.make_method(spec).check(runner.make_adapter(spec).task)


def test_two_epoch_run_is_finite(tmp_path):
    r = runner.train(small_spec(method="inforeg", epochs=2), results=tmp_path, progress=False)
    assert r.status == "done" and math.isfinite(r.final["test"]["accuracy"])


def test_resume_is_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "inforeg")
