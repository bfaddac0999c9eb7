from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from _method_helpers import assert_resume_is_exact, first_batch, trainer
from test_equivalence_lfm import Alignment, getAlpha_Learnable_Fitted  # the official functions, transcribed

from mmbalance.methods.lfm import LFM, alignment, fitted_weights
from mmbalance.models.transformer import MSAModelParams, build_msa_model
from mmbalance.training.method import MethodNotApplicable


def test_schedule_and_alignment_hand_computed():
    assert fitted_weights(0) == pytest.approx((0.204623704, 0.795376296))
    assert fitted_weights(10) == pytest.approx((0.2477589, 0.7522411), abs=1e-6)
    assert sum(fitted_weights(123)) == pytest.approx(1.0)
    assert fitted_weights(37) == pytest.approx(tuple(getAlpha_Learnable_Fitted(37)))
    # p = (0.5, 0.5), q = (0.25, 0.75), mix (0.375, 0.625): 0.5 (KL(mix||p) + KL(mix||q)) = 0.0348412
    p, q = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, math.log(3.0)]])
    assert alignment([p, q]).item() == pytest.approx(0.0348412, abs=1e-6)
    assert alignment([p, q]).item() == pytest.approx(Alignment(p, q).item(), abs=1e-7)
    assert alignment([p, p, p]).item() == pytest.approx(0.0, abs=1e-7)


def test_loss_is_built_from_the_head_shares_and_reaches_every_encoder(tmp_path):
    tr = trainer(tmp_path, "lfm")
    batch = first_batch(tr)
    tr.model.zero_grad(set_to_none=True)
    out = tr.method.forward(tr.model, batch, tr.ctx)
    shares = tr.model.unimodal_logits(out.features, tr.method.bias)
    assert set(shares) == set(tr.modalities)
    # each share has its own bias, none the head's (AudioVideo.py:54-55), and the prediction is their mean
    assert all(b.data_ptr() != tr.model.head.bias.data_ptr() for b in tr.method.bias.values())
    assert torch.allclose(out.pred, sum(shares.values()) / 3)
    a_cls, a_align = fitted_weights(0)
    expected = 2 * (
        a_cls * F.cross_entropy(out.pred, batch.target) + a_align * alignment(list(shares.values()))
    )
    loss = tr.method.loss(out, batch, tr.ctx)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    for m in tr.modalities:
        params = tr.model.encoder_parameters(m)
        assert params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params if p.dim() > 1)
        assert tr.method.bias[m].grad.abs().sum() > 0
    assert tr.model.head.bias.grad is None  # replaced by the per-modality biases
    trained = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert id(tr.model.head.bias) not in trained and all(id(b) in trained for b in tr.method.bias.values())


def test_stretch_covers_the_released_curve(tmp_path):
    tr = trainer(tmp_path, "lfm", stretch=True)
    tr.ctx.epoch = 1
    tr.method.on_epoch_start(tr.ctx)  # 2 epochs: epoch 1 -> released epoch 100
    assert tr.method.weights == pytest.approx(fitted_weights(100))


def test_segmentation_trains_and_refusals(tmp_path):
    tr = trainer(tmp_path, "lfm", task="segmentation")
    assert math.isfinite(tr.train_batch(first_batch(tr)))
    with pytest.raises(MethodNotApplicable, match="no classes"):
        trainer(tmp_path, "lfm", task="regression")
    model = build_msa_model({"a": 4, "b": 4}, 3, MSAModelParams(proj_dim=8, num_heads=2, layers=2))
    with pytest.raises(MethodNotApplicable, match="late concat fusion"):
        LFM().build(SimpleNamespace(model=model))


def test_resume_is_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "lfm")
