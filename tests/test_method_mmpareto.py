from __future__ import annotations

import math

import pytest
import torch
from _method_helpers import assert_resume_is_exact, first_batch, trainer
from conftest import small_spec

from mmbalance.methods.mmpareto import pareto_grad, pareto_weights
from mmbalance.training import runner
from mmbalance.training.method_parts import flat, min_norm_2


def test_min_norm_of_two_vectors_hand_computed():
    # g1 = (1, 0), g2 = (-1, 1): gamma = -(v12 - v22) / (v11 + v22 - 2 v12) = 3 / 5
    assert min_norm_2(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])) == pytest.approx((0.6, 0.4))
    # the official end clamps: v12 >= v11 -> 0.999; v12 >= v22 -> 0.001
    assert min_norm_2(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0])) == pytest.approx((0.999, 0.001))
    assert min_norm_2(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0])) == pytest.approx((0.001, 0.999))


def test_weights_are_equal_when_gradients_agree():
    assert pareto_weights(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0]))[:2] == (0.5, 0.5)
    k_mm, k_uni, cos = pareto_weights(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0]))
    assert (k_mm, k_uni) == pytest.approx((0.6, 0.4)) and cos == pytest.approx(-1 / math.sqrt(2))


def test_new_gradient_is_rescaled_to_the_summed_norm_times_gamma():
    # g_new = 2 * 0.5 * (1, 0) + 2 * 0.5 * (0, 1) = (1, 1); |g_sum| / |g_new| = 5 / sqrt(2) > 1
    g = pareto_grad(
        torch.tensor([3.0, 4.0]), torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), 0.5, 0.5, 1.5
    )
    assert g.tolist() == pytest.approx([1.5 * 5 / math.sqrt(2)] * 2)
    # smaller summed gradient: no rescaling, only gamma
    g = pareto_grad(
        torch.tensor([0.1, 0.0]), torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), 0.5, 0.5, 1.5
    )
    assert g.tolist() == pytest.approx([1.5, 1.5])


def test_only_encoder_gradients_are_replaced(tmp_path):
    tr = trainer(tmp_path, "mmpareto")
    batch = first_batch(tr)
    heads = tr.method.heads
    assert {id(p) for p in heads.parameters()} <= {
        id(p) for g in tr.optimizer.param_groups for p in g["params"]
    }
    tr.model.zero_grad(set_to_none=True)
    heads.zero_grad(set_to_none=True)
    out = tr.method.forward(tr.model, batch, tr.ctx)
    loss = tr.method.loss(out, batch, tr.ctx)
    # expected encoder gradients, from the two losses each encoder serves
    ce = torch.nn.functional.cross_entropy
    expected = {}
    for m in tr.modalities:
        params = tr.model.encoder_parameters(m)
        g_mm = torch.autograd.grad(ce(out.pred, batch.target), params, retain_graph=True)
        g_u = torch.autograd.grad(ce(out.modality_logits[m], batch.target), params, retain_graph=True)
        k_mm, k_u, _ = pareto_weights(flat(g_mm, params), flat(g_u, params))
        expected[m] = (g_mm, g_u, k_mm, k_u)
    loss.backward()
    summed = {id(p): p.grad.clone() for p in [*tr.model.parameters(), *heads.parameters()]}
    tr.method.after_backward(tr.model, out, batch, tr.ctx)
    encoder_ids = set()
    for m, (g_mm, g_u, k_mm, k_u) in expected.items():
        params = tr.model.encoder_parameters(m)
        assert params
        for p, a, b in zip(params, g_mm, g_u, strict=True):
            encoder_ids.add(id(p))
            assert torch.allclose(p.grad, pareto_grad(summed[id(p)], a, b, k_mm, k_u, 1.5), atol=1e-6)
            assert not torch.allclose(p.grad, summed[id(p)])
    rest = [p for p in [*tr.model.parameters(), *heads.parameters()] if id(p) not in encoder_ids]
    assert rest and all(torch.equal(p.grad, summed[id(p)]) for p in rest)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_one_epoch_run_is_finite(tmp_path, task):
    spec = small_spec(method="mmpareto", epochs=1, dataset_params={"task": task})
    r = runner.train(spec, results=tmp_path, progress=False)
    assert r.status == "done" and math.isfinite(
        r.final["test"]["accuracy" if task == "classification" else "mae"]
    )


def test_resume_is_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "mmpareto")
