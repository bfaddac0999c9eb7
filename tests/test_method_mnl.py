from __future__ import annotations

import math

import pytest
import torch
from _method_helpers import assert_resume_is_exact, first_batch, trainer
from conftest import small_spec

from mmbalance.methods.mnl import hardest_negative, negative_learning_loss
from mmbalance.training.method import MethodNotApplicable
from mmbalance.training.runner import train


def test_hardest_negative_skips_the_target():
    assert hardest_negative(
        torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 1.0]]), torch.tensor([1, 0])
    ).tolist() == [2, 2]


def test_negative_learning_loss_by_hand():
    # d: z = (2, 0), p_d = (s, 1 - s), s = sigmoid(2); w: uniform. xi_d = 2 > xi_w = 0 and s > 0.5 -> mask 1.
    # entries: c=0: ln 2 (the w1 terms cancel on the target), c=1: w1 (1 - s) ln 2; mean over the 2 entries
    z_d, z_w, y, j = torch.tensor([[2.0, 0.0]]), torch.zeros(1, 2), torch.tensor([0]), torch.tensor([1])
    s = 1 / (1 + math.exp(-2))
    loss = negative_learning_loss(z_d, z_w, y, j, w1=0.7)
    assert loss.item() == pytest.approx((math.log(2) + 0.7 * (1 - s) * math.log(2)) / 2, rel=1e-6)
    assert negative_learning_loss(z_w, z_d, y, j, w1=0.7).item() == 0.0  # the stronger one is not taught


def test_the_negative_term_reaches_only_the_weaker_modality(tmp_path):
    tr = trainer(tmp_path, "mnl")
    batch = first_batch(tr)
    out = tr.method.forward(tr.model, batch, tr.ctx)
    j = hardest_negative(out.pred, batch.target)
    mods = tr.ctx.modalities
    pairs = [(d, w) for d in mods for w in mods if d != w]
    d, w = max(
        pairs,
        key=lambda p: negative_learning_loss(
            out.modality_logits[p[0]], out.modality_logits[p[1]], batch.target, j, 0.7
        ).item(),
    )
    term = negative_learning_loss(out.modality_logits[d], out.modality_logits[w], batch.target, j, 0.7)
    assert term.item() > 0
    teacher = tr.model.encoder_parameters(d) + list(tr.method.heads.heads[d].parameters())
    student = tr.model.encoder_parameters(w) + list(tr.method.heads.heads[w].parameters())
    assert teacher and student
    g_t = torch.autograd.grad(term, teacher, retain_graph=True, allow_unused=True)
    g_s = torch.autograd.grad(term, student, allow_unused=True)
    assert all(g is None or g.abs().sum() == 0 for g in g_t)
    assert any(g is not None and g.abs().sum() > 0 for g in g_s)


def test_loss_is_the_ce_sum_plus_the_averaged_pair_terms(tmp_path):
    tr = trainer(tmp_path, "mnl")
    batch = first_batch(tr)
    out = tr.method.forward(tr.model, batch, tr.ctx)
    y, mods = batch.target, tr.ctx.modalities
    j = hardest_negative(out.pred, y)
    expected = tr.task_loss(out.pred, y) + sum(tr.task_loss(out.modality_logits[m], y) for m in mods)
    for w in mods:
        expected = (
            expected
            + sum(
                negative_learning_loss(out.modality_logits[d], out.modality_logits[w], y, j, 0.7)
                for d in mods
                if d != w
            )
            / 2
        )
    torch.testing.assert_close(tr.method.loss(out, batch, tr.ctx), expected)


def test_one_epoch_run_is_finite(tmp_path):
    r = train(small_spec(method="mnl", epochs=1), results=tmp_path, progress=False)
    assert r.status == "done" and math.isfinite(r.final["test"]["accuracy"])


def test_resume_is_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "mnl")


def test_refuses_regression(tmp_path):
    with pytest.raises(MethodNotApplicable):
        train(
            small_spec(method="mnl", dataset_params={"task": "regression"}), results=tmp_path, progress=False
        )
