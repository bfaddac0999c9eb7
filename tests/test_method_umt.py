from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _method_helpers import assert_resume_is_exact, first_batch, trainer
from conftest import small_spec

from mmbalance.training import runner


def test_stage_switch_freezes_teachers_and_restarts_the_student(tmp_path):
    tr = trainer(tmp_path, "umt", teacher_epochs=1)
    initial = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.train_epoch(0, bar=type("Bar", (), {"update": lambda self, n: None})())  # stage 1: UME
    trained = {m: [p.detach().clone() for p in tr.model.encoder_parameters(m)] for m in tr.modalities}
    assert not torch.equal(trained["m0"][0], initial["encoders.m0.net.0.weight"])
    tr.ctx.epoch = 1
    tr.method.on_epoch_start(tr.ctx)
    teachers = tr.method.teachers
    for m in tr.modalities:
        t = list(teachers[m].parameters())
        assert t and all(not p.requires_grad for p in t)
        assert all(torch.equal(a, b) for a, b in zip(t, trained[m], strict=True))
    assert all(torch.equal(v, initial[k]) for k, v in tr.model.state_dict().items())
    assert not any(p in tr.optimizer.state for p in tr.model.parameters())


def test_stage_two_loss_is_task_plus_scaled_feature_distillation(tmp_path):
    tr = trainer(tmp_path, "umt", teacher_epochs=1, scaling=3.0)
    tr.ctx.epoch = 1
    tr.method.on_epoch_start(tr.ctx)
    with torch.no_grad():  # make student and teachers differ
        for p in tr.model.encoder_parameters("m1"):
            p.add_(0.1)
    batch = first_batch(tr)
    out = tr.method.forward(tr.model, batch, tr.ctx)
    loss = tr.method.loss(out, batch, tr.ctx)
    teach = {m: tr.method.teachers[m](batch.inputs[m]) for m in tr.modalities}
    distill = sum(F.mse_loss(out.features[m], teach[m]) for m in tr.modalities)
    assert distill > 0
    assert loss.item() == pytest.approx(
        (F.cross_entropy(out.pred, batch.target) + 3.0 * distill).item(), rel=1e-5
    )
    loss.backward()
    assert all(p.grad is not None for p in tr.model.encoder_parameters("m1"))
    assert all(p.grad is None for p in tr.method.teachers.parameters())


def test_two_epoch_run_is_finite_and_reports_the_student(tmp_path):
    spec = small_spec(method="umt", epochs=2, method_params={"teacher_epochs": 1})
    r = runner.train(spec, results=tmp_path, progress=False)
    assert r.status == "done" and math.isfinite(r.final["test"]["accuracy"])
    assert r.final["best_epoch"] == 1  # epoch 0 trains the teachers only


def test_resume_across_the_stage_switch_is_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "umt", teacher_epochs=1)
