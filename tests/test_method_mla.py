from __future__ import annotations

import math

import pytest
import torch
from _method_helpers import assert_resume_is_exact, first_batch, trainer
from conftest import small_spec

from mmbalance.methods.mla import entropy_weights, gs_update
from mmbalance.training.method import MethodNotApplicable
from mmbalance.training.runner import train


def test_gs_update_by_hand():
    # r = [1, 0], k = P r^T = [1, 0]^T, P - k k^T / (0.1 + 1) = diag(1 - 1/1.1, 1), then / ||.||_F
    P = gs_update(torch.eye(2), torch.tensor([[1.0, 0.0], [1.0, 0.0]]), a=0.1)
    d = 1 - 1 / 1.1
    norm = math.sqrt(d**2 + 1)
    torch.testing.assert_close(P, torch.tensor([[d / norm, 0.0], [0.0, 1 / norm]]))


def test_entropy_weights_by_hand():
    # batch-axis softmax: uniform (H = 4 * 0.5 ln 2 = 2 ln 2) vs one-hot columns (H ~ 0)
    # -> weights 1 : e^{2 ln 2} = 1 : 4
    w = entropy_weights({"a": torch.zeros(2, 2), "b": torch.tensor([[30.0, 30.0], [-30.0, -30.0]])})
    assert w["a"].item() == pytest.approx(0.2, abs=1e-6)
    assert w["b"].item() == pytest.approx(0.8, abs=1e-6)


def test_a_turn_trains_only_its_encoder_and_projects_the_shared_head(tmp_path):
    tr = trainer(tmp_path, "mla")
    assert list(tr.method.turns(tr.ctx)) == tr.ctx.modalities
    batch = first_batch(tr)
    tr.method.steps_taken = 1  # past the run's first step, where the code starts projecting
    tr.ctx.turn, tr.ctx.step_in_epoch = "m1", 2
    out = tr.method.forward(tr.model, batch, tr.ctx)
    loss = tr.method.loss(out, batch, tr.ctx)
    tr.model.zero_grad(set_to_none=True)
    tr.method.head.zero_grad(set_to_none=True)
    loss.backward()
    raw = tr.method.head.weight.grad.clone()
    P0 = tr.method.P.clone()
    tr.method.after_backward(tr.model, out, batch, tr.ctx)
    a = 0.1 ** (2 / tr.ctx.steps_per_epoch + 1)
    P = gs_update(P0, out.features["m1"], a)
    torch.testing.assert_close(tr.method.head.weight.grad, raw @ P.T)
    active = tr.model.encoder_parameters("m1")
    assert active and all(p.grad is not None and p.grad.abs().sum() > 0 for p in active)
    for m in ("m0", "m2"):
        assert all(p.grad is None for p in tr.model.encoder_parameters(m))
    assert all(p.grad is None for p in tr.model.head.parameters())  # the model's own head is unused


def test_one_epoch_run_is_finite(tmp_path):
    r = train(small_spec(method="mla", epochs=1), results=tmp_path, progress=False)
    assert r.status == "done" and math.isfinite(r.final["test"]["accuracy"])
    spec = small_spec(
        method="mla", epochs=1, method_params={"fusion": "average"}, dataset_params={"task": "regression"}
    )
    r = train(spec, results=tmp_path, progress=False)
    assert r.status == "done" and math.isfinite(r.final["test"]["loss"])


def test_resume_is_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "mla")


def test_entropy_fusion_refuses_regression(tmp_path):
    with pytest.raises(MethodNotApplicable, match="entropy"):
        trainer(tmp_path, "mla", task="regression")
