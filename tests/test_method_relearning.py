from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _method_helpers import assert_resume_is_exact, trainer
from conftest import small_spec

from mmbalance.methods.relearning import purity, reinit_weight
from mmbalance.training.method import MethodNotApplicable
from mmbalance.training.runner import train


def test_purity_by_hand():
    # cluster 0 = labels (0, 0, 1) votes 0 -> 2 right; cluster 1 = labels (1, 2, 2) votes 2 -> 2 right: 4 / 6
    labels = np.array([0, 0, 1, 1, 2, 2])
    clusters = np.array([0, 0, 0, 1, 1, 1])
    assert purity(labels, clusters) == pytest.approx(4 / 6)


def test_reinit_weight_by_hand():
    assert reinit_weight(0.9, 0.6, 3.0) == pytest.approx(math.tanh(0.9))
    assert reinit_weight(0.5, 0.5, 3.0) == 0.0


def test_reinit_moves_only_the_encoders_towards_their_initial_weights(tmp_path):
    tr = trainer(tmp_path, "relearning", reinit_epoch=1, reinit_num=1)
    init = {m: [p.clone() for p in tr.model.encoder_parameters(m)] for m in tr.ctx.modalities}
    with torch.no_grad():
        for p in tr.model.parameters():
            p.add_(0.5)
    moved = {m: [p.clone() for p in tr.model.encoder_parameters(m)] for m in tr.ctx.modalities}
    head = [p.clone() for p in tr.model.head.parameters()]
    tr.ctx.epoch = 1
    tr.method.on_epoch_end(tr.ctx)
    assert tr.model.training and tr.method.done == 1
    for m in tr.ctx.modalities:
        w = tr.method.weights[m]
        assert 0 <= w < 1 and init[m]
        for p, p0, p1 in zip(tr.model.encoder_parameters(m), init[m], moved[m], strict=True):
            torch.testing.assert_close(p, w * p0 + (1 - w) * p1)
    assert any(w > 0 for w in tr.method.weights.values())
    for p, p1 in zip(tr.model.head.parameters(), head, strict=True):
        assert torch.equal(p, p1)
    tr.ctx.epoch = 2
    tr.method.on_epoch_end(tr.ctx)  # reinit_num reached: nothing more
    assert tr.method.done == 1


def test_two_epoch_run_with_a_reinit_is_finite(tmp_path):
    params = {"reinit_epoch": 1}
    r = train(
        small_spec(method="relearning", epochs=2, method_params=params), results=tmp_path, progress=False
    )
    assert r.status == "done" and math.isfinite(r.final["test"]["accuracy"])


def test_resume_is_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "relearning", reinit_epoch=1)


def test_refuses_regression(tmp_path):
    with pytest.raises(MethodNotApplicable):
        train(small_spec(method="relearning", dataset_params={"task": "regression"}), results=tmp_path,
              progress=False)  # fmt: skip
