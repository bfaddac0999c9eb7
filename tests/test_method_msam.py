from __future__ import annotations

import copy
import math

import pytest
import torch
from _method_helpers import assert_resume_is_exact, first_batch, trainer
from conftest import small_spec

from mmbalance.methods.msam import dominance_weights
from mmbalance.training.method import MethodNotApplicable
from mmbalance.training.runner import train


def test_dominance_weights_by_hand():
    assert dominance_weights({"a": 0.6, "b": 0.2, "c": -0.1}) == pytest.approx(
        {"a": 0.75, "b": 0.25, "c": 0.0}
    )
    assert dominance_weights({"a": -0.1, "b": 0.0}) == {"a": 0.5, "b": 0.5}


def test_shapley_of_accuracy_sums_to_the_full_accuracy(tmp_path):
    tr = trainer(tmp_path, "msam")
    batch = first_batch(tr)
    phi = tr.method.accuracy_shapley(tr.model, batch, tr.ctx.modalities)
    with torch.no_grad():
        full = (tr.model(batch.inputs).pred.argmax(1) == batch.target).float().mean().item()
    assert sum(phi.values()) == pytest.approx(full)
    assert tr.model.training  # the masked forwards ran in eval mode and restored train mode


def test_gradient_is_the_sam_gradient_of_the_dominant_share(tmp_path):
    tr = trainer(tmp_path, "msam", rho=0.5)
    batch = first_batch(tr)
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    tr.model.zero_grad(set_to_none=True)
    out = tr.method.forward(tr.model, batch, tr.ctx)
    tr.method.loss(out, batch, tr.ctx).backward()
    g = {n: p.grad.clone() for n, p in tr.model.named_parameters()}
    tr.method.after_backward(tr.model, out, batch, tr.ctx)
    phi = tr.method.phi
    w_d = dominance_weights(phi)[max(phi, key=phi.get)]
    # by hand: perturb a copy along rho * g / ||g||, take its gradient, blend
    norm = torch.sqrt(sum(x.pow(2).sum() for x in g.values()))
    shifted = copy.deepcopy(tr.model)
    with torch.no_grad():
        for n, p in shifted.named_parameters():
            p.add_(0.5 * g[n] / norm)
    tr.task_loss(shifted(batch.inputs).pred, batch.target).backward()
    g_adv = {n: p.grad for n, p in shifted.named_parameters()}
    selected = [n for n, _ in tr.model.named_parameters()]
    assert selected
    for n, p in tr.model.named_parameters():
        torch.testing.assert_close(p, before[n], rtol=0, atol=1e-6)  # parameters restored
        torch.testing.assert_close(p.grad, w_d * g_adv[n] + (1 - w_d) * g[n])
    assert not torch.allclose(tr.model.encoders["m0"].net[0].weight.grad, g["encoders.m0.net.0.weight"])


def test_one_epoch_run_is_finite(tmp_path):
    r = train(small_spec(method="msam", epochs=1), results=tmp_path, progress=False)
    assert r.status == "done" and math.isfinite(r.final["test"]["accuracy"])


def test_resume_is_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "msam")


def test_refuses_regression(tmp_path):
    with pytest.raises(MethodNotApplicable):
        train(
            small_spec(method="msam", dataset_params={"task": "regression"}), results=tmp_path, progress=False
        )
