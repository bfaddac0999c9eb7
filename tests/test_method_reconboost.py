from __future__ import annotations

import math

import pytest
import torch
from _method_helpers import assert_resume_is_exact, first_batch, trainer
from conftest import small_spec

from mmbalance.methods.reconboost import boosting_loss
from mmbalance.training.method import MethodNotApplicable
from mmbalance.training.runner import train


def test_boosting_loss_by_hand():
    # p_obj = (0.5, 0.5), softmax(J) = (0.75, 0.25), y = 0: mean over C=2 of (-5 + 0.75) ln 0.5 and 0
    loss = boosting_loss(torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]]), torch.tensor([0]), 5.0, 1.0)
    assert loss.item() == pytest.approx(4.25 * math.log(2) / 2, rel=1e-6)


def test_schedule_stages_and_ensemble(tmp_path):
    tr = trainer(tmp_path, "reconboost", epochs_per_stage=1, correct_epochs=1)
    rb = tr.method
    assert [rb.phase(e) for e in range(4)] == [(0, "boost"), (0, "correct"), (1, "boost"), (1, "correct")]
    assert [rb.learner(s) for s in range(4)] == ["m0", "m1", "m2", "m0"]
    assert (
        rb.ensemble(0) == ["m0"] and rb.ensemble(2) == ["m0", "m1"] and rb.ensemble(9) == ["m0", "m1", "m2"]
    )


def _grads(tr, epoch):
    tr.ctx.epoch = epoch
    tr.method.on_epoch_start(tr.ctx)
    batch = first_batch(tr)
    for p in [*tr.model.parameters(), *tr.method.head.parameters(), tr.method.beta]:
        p.grad = None
    out = tr.method.forward(tr.model, batch, tr.ctx)
    tr.method.loss(out, batch, tr.ctx).backward()


def test_boost_phase_trains_only_the_learner_and_the_shared_head(tmp_path):
    tr = trainer(tmp_path, "reconboost", epochs_per_stage=1, correct_epochs=1)
    _grads(tr, epoch=2)  # stage 1: learner m1, ensemble m0 (+ m1)
    learner = tr.model.encoder_parameters("m1")
    assert learner and all(p.grad is not None for p in learner)
    assert all(p.grad is not None for p in tr.method.head.parameters())
    for m in ("m0", "m2"):
        assert all(p.grad is None for p in tr.model.encoder_parameters(m))
    assert tr.method.beta.grad is None


def test_correction_phase_trains_every_learner_and_the_boost_rate(tmp_path):
    tr = trainer(tmp_path, "reconboost", epochs_per_stage=1, correct_epochs=1)
    _grads(tr, epoch=5)  # stage 2 correction: all three learners in the ensemble
    for m in tr.ctx.modalities:
        assert all(p.grad is not None for p in tr.model.encoder_parameters(m))
    assert tr.method.beta.grad is not None


def test_one_epoch_run_is_finite(tmp_path):
    r = train(small_spec(method="reconboost", epochs=1, method_params={"epochs_per_stage": 1}),
              results=tmp_path, progress=False)  # fmt: skip
    assert r.status == "done" and math.isfinite(r.final["test"]["accuracy"])


def test_resume_is_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "reconboost", epochs_per_stage=1, correct_epochs=1)


def test_refuses_regression(tmp_path):
    with pytest.raises(MethodNotApplicable):
        train(small_spec(method="reconboost", dataset_params={"task": "regression"}), results=tmp_path,
              progress=False)  # fmt: skip


def test_first_stage_uses_the_codes_constant_c0():
    # c0 has shape (B, 1): softmax over one column is 1, so the weight is w1 - w2 = 4 on log p[y] / C
    loss = boosting_loss(torch.zeros(1, 2), torch.zeros(1, 1), torch.tensor([0]), 5.0, 1.0)
    assert loss.item() == pytest.approx(4 * math.log(2) / 2, rel=1e-6)
