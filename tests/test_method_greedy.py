from __future__ import annotations

import math

import pytest
import torch
from _method_helpers import assert_resume_is_exact, first_batch, trainer
from conftest import small_spec

from mmbalance.methods.greedy import MMTM, bdr
from mmbalance.training.runner import train


def test_bdr_by_hand():
    b = bdr({"a": 10.0, "b": 1.0}, {"a": 1.0, "b": 10.0})
    assert b == pytest.approx({"a": 1.0, "b": -1.0})


def test_mmtm_excitation_by_hand():
    mmtm = MMTM({"a": 1, "b": 1}, ratio=4.0)  # squeeze size int(2 * 2 / 4) = 1
    with torch.no_grad():
        mmtm.squeeze.weight.fill_(1.0), mmtm.squeeze.bias.zero_()
        mmtm.excite["a"].weight.fill_(1.0), mmtm.excite["a"].bias.zero_()
        mmtm.excite["b"].weight.fill_(-1.0), mmtm.excite["b"].bias.zero_()
    e = mmtm({"a": torch.tensor([[1.0]]), "b": torch.tensor([[2.0]])})  # z = relu(1 + 2) = 3
    assert e["a"].item() == pytest.approx(1 / (1 + math.exp(-3)))
    assert e["b"].item() == pytest.approx(1 / (1 + math.exp(3)))


def _step(tr, batch):
    for p in [*tr.model.parameters(), *tr.method.mmtm.parameters(), *tr.method.heads.parameters()]:
        p.grad = None
    out = tr.method.forward(tr.model, batch, tr.ctx)
    tr.method.loss(out, batch, tr.ctx).backward()
    tr.method.after_backward(tr.model, out, batch, tr.ctx)
    return out


def test_curation_cuts_the_cared_modality_off_its_excitation_path(tmp_path):
    tr = trainer(tmp_path, "greedy", starting_epoch=0, epsilon=0.0, window=2)
    batch = first_batch(tr)
    _step(tr, batch)  # accumulates BDR from the (main, bypass) groups and opens a window
    assert all(v > 0 for v in tr.method.m_main.values()) and all(v > 0 for v in tr.method.m_bypass.values())
    b = bdr(tr.method.m_bypass, tr.method.m_main)
    c = tr.method.caring
    assert c == max(b, key=b.get) and tr.method.left == 2
    _step(tr, batch)  # curated step: c's excitation is the running mean, a constant
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in tr.method.mmtm.excite[c].parameters())
    for m in tr.ctx.modalities:
        if m != c:
            assert any(
                p.grad is not None and p.grad.abs().sum() > 0 for p in tr.method.mmtm.excite[m].parameters()
            )
        enc = tr.model.encoder_parameters(m)
        assert enc and all(p.grad is not None for p in enc)
    assert tr.method.left == 1


def test_no_curation_before_the_starting_epoch(tmp_path):
    tr = trainer(tmp_path, "greedy", starting_epoch=1, epsilon=0.0)
    _step(tr, first_batch(tr))
    assert tr.method.left == 0 and tr.method.caring is None


@pytest.mark.parametrize("task", ["classification", "regression", "segmentation"])
def test_one_epoch_run_is_finite(tmp_path, task):
    r = train(small_spec(method="greedy", epochs=1, method_params={"starting_epoch": 0},
                         dataset_params={"task": task, "n_train": 64, "n_valid": 16, "n_test": 16}),
              results=tmp_path, progress=False)  # fmt: skip
    assert r.status == "done" and math.isfinite(r.final["test"]["loss"])


def test_resume_is_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "greedy", starting_epoch=0)
