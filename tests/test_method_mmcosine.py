from __future__ import annotations

import math

import pytest
import torch
from _method_helpers import assert_resume_is_exact, first_batch, trainer
from conftest import small_spec

from mmbalance.methods.mmcosine import cosine_logits
from mmbalance.training import runner


def test_cosine_logits_hand_computed():
    # m0: f (3, 4) -> (0.6, 0.8); m1: f (0, 2) -> (0, 1). W rows: c0 = [1, 0 | 0, 5], c1 = [0, 1 | 1, 0]
    weight = torch.tensor([[1.0, 0.0, 0.0, 5.0], [0.0, 1.0, 1.0, 0.0]])
    feats = {"m0": torch.tensor([[3.0, 4.0]]), "m1": torch.tensor([[0.0, 2.0]])}
    logits = cosine_logits(feats, weight, scaling=10.0)
    assert logits["m0"][0].tolist() == pytest.approx([6.0, 8.0])  # 10 * (0.6, 0.8)
    assert logits["m1"][0].tolist() == pytest.approx([10.0, 0.0])  # 10 * (1, 0)


def test_logits_ignore_feature_and_weight_norms():
    torch.manual_seed(0)
    feats = {"a": torch.randn(4, 3), "b": torch.randn(4, 5)}
    weight = torch.randn(2, 8)
    base = cosine_logits(feats, weight, 10.0)
    scaled = cosine_logits({"a": feats["a"] * 7.0, "b": feats["b"] * 0.1}, weight * 3.0, 10.0)
    for m in feats:
        assert torch.allclose(base[m], scaled[m], atol=1e-5)
        assert base[m].abs().max() <= 10.0 + 1e-5


def test_forward_uses_the_head_weight_slices_and_trains_every_encoder(tmp_path):
    tr = trainer(tmp_path, "mmcosine")
    batch = first_batch(tr)
    out = tr.method.forward(tr.model, batch, tr.ctx)
    expected = cosine_logits(tr.model.encode(batch.inputs), tr.model.head.weight, 10.0)
    assert torch.allclose(out.pred, sum(expected.values()), atol=1e-5)
    tr.method.loss(out, batch, tr.ctx).backward()
    selected = [tr.model.head.weight] + [p for m in tr.modalities for p in tr.model.encoder_parameters(m)]
    assert selected and all(p.grad is not None and p.grad.abs().sum() > 0 for p in selected)
    assert tr.model.head.bias.grad is None  # cosine logits have no bias
    assert math.isfinite(tr.method.diagnostics(tr.ctx)["cos_true/m0"])


def test_refuses_regression(tmp_path):
    spec = small_spec(method="mmcosine", dataset_params={"task": "regression"})
    with pytest.raises(ValueError, match="no classes"):
        runner.train(spec, results=tmp_path, progress=False)


def test_one_epoch_run_is_finite(tmp_path):
    r = runner.train(small_spec(method="mmcosine", epochs=1), results=tmp_path, progress=False)
    assert r.status == "done" and math.isfinite(r.final["test"]["accuracy"])


def test_resume_is_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "mmcosine")
