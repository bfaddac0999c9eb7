from __future__ import annotations

import math

import pytest
import torch
from _method_helpers import assert_resume_is_exact, first_batch, trainer
from conftest import small_spec

from mmbalance.methods.opm import drop_features, drop_probabilities
from mmbalance.training import runner


def test_drop_probabilities_hand_computed():
    # ratio (2, 0.5): q0 = 0.5 * (1 + 0.5 * tanh(1)) = 0.6903985, q1 = 0 (calcu_q)
    q = drop_probabilities(torch.tensor([6.0, 3.0]), q_base=0.5, lam=0.5)
    assert q.tolist() == pytest.approx([0.5 * (1 + 0.5 * math.tanh(1.0)), 0.0])
    assert drop_probabilities(torch.tensor([6.0, 3.0]), q_base=0.9, lam=1.0)[0].item() == 1.0  # clipped


def test_drop_features_masks_rescales_and_flags_empty_samples():
    feats = {"a": torch.ones(2, 2), "b": torch.ones(2, 6)}
    q = torch.tensor([0.5, 0.0])  # theta = (2 * 0.5 + 6 * 0) / 8 = 0.125
    out, keep = drop_features(feats, q, torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
    assert torch.allclose(out["a"], torch.tensor([[1 / 0.875] * 2, [0.0, 0.0]]))
    assert torch.allclose(out["b"], torch.full((2, 6), 1 / 0.875))
    assert keep.tolist() == [True, True]
    _, keep = drop_features(feats, q, torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    assert keep.tolist() == [False, True]


def test_a_fully_dropped_modality_gets_no_gradient(tmp_path):
    tr = trainer(tmp_path, "opm", q_base=1.0, lam=0.0, p_exe=1.0, warmup_epochs=0)  # dominant: q = 1
    batch = first_batch(tr)
    out = tr.method.forward(tr.model, batch, tr.ctx)
    q = tr.method.q
    assert tr.method.executed and (q == 1).any() and (q == 0).any()
    assert torch.equal(
        out.features["m0"], tr.model.encode(batch.inputs)["m0"]
    )  # probes see undropped features
    tr.model.zero_grad(set_to_none=True)
    tr.method.loss(out, batch, tr.ctx).backward()
    for i, m in enumerate(tr.modalities):
        grads = [p.grad for p in tr.model.encoder_parameters(m)]
        assert grads and all(g is not None for g in grads)
        total = sum(g.abs().sum() for g in grads)
        assert (total == 0) if q[i] == 1 else (total > 0), m


def test_warmup_and_evaluation_use_every_feature(tmp_path):
    tr = trainer(tmp_path, "opm", p_exe=1.0)  # warm-up: epochs 0..5
    batch = first_batch(tr)
    assert torch.equal(tr.method.forward(tr.model, batch, tr.ctx).pred, tr.model(batch.inputs).pred)
    tr.ctx.epoch, tr.ctx.training = 6, False
    assert torch.equal(tr.method.forward(tr.model, batch, tr.ctx).pred, tr.model(batch.inputs).pred)


def test_one_epoch_run_is_finite(tmp_path):
    spec = small_spec(method="opm", epochs=1, method_params={"warmup_epochs": 0})
    r = runner.train(spec, results=tmp_path, progress=False)
    assert r.status == "done" and math.isfinite(r.final["test"]["accuracy"])


def test_resume_is_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "opm", warmup_epochs=0)
