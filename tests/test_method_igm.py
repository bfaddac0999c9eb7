from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _method_helpers import assert_resume_is_exact, first_batch, trainer
from conftest import small_spec

from mmbalance.methods.igm import flat_matrix, mixup, stage_at
from mmbalance.training.runner import train


class _Bar:
    def update(self, n: int) -> None:
        pass


def test_stage_at_by_hand():
    assert stage_at(0, [25, 50]) == (0, 0)
    assert stage_at(24, [25, 50]) == (0, 0)
    assert stage_at(25, [25, 50]) == (1, 25)
    assert stage_at(74, [25, 50]) == (1, 25)
    assert stage_at(75, [25, 50]) == (2, 75)
    assert stage_at(5, [1]) == (5, 5)


def test_flat_matrix_by_hand():
    # C = R diag(4, 1, 0) R^T: the damping exp(-T (s - 0) / 4) is e^-0.4, e^-0.1, 1 along R's columns
    R = torch.tensor([[1.0, 1.0, 0.0], [1.0, -1.0, 0.0], [0.0, 0.0, math.sqrt(2)]], dtype=torch.float64)
    R = R / math.sqrt(2)
    C = R @ torch.diag(torch.tensor([4.0, 1.0, 0.0], dtype=torch.float64)) @ R.T
    P = flat_matrix(C, temperature=0.4)
    expected = R @ torch.diag(torch.tensor([math.exp(-0.4), math.exp(-0.1), 1.0], dtype=torch.float64)) @ R.T
    torch.testing.assert_close(P, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        flat_matrix(2 * torch.eye(2), 0.4), torch.eye(2)
    )  # a flat spectrum: no damping


def test_mixup_by_hand():
    x = torch.arange(8.0).reshape(4, 2)
    np.random.seed(3)
    torch.manual_seed(3)
    mixed, perm, lam = mixup(x, 1.0)
    np.random.seed(3)
    assert lam == np.random.beta(1.0, 1.0)
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[perm])
    assert sorted(perm.tolist()) == [0, 1, 2, 3]
    assert mixup(x, 0.0)[2] == 1.0


def test_stages_train_one_modality_with_a_fresh_optimiser(tmp_path):
    tr = trainer(tmp_path, "igm", stage_epochs=[1])
    m0, m1 = tr.ctx.modalities[:2]
    tr.train_epoch(0, _Bar())
    assert tr.method.current == m0 and tr.method.P == []
    assert tr.optimizer.state  # momentum buffers of m0's stage
    before = {m: [p.detach().clone() for p in tr.model.encoder_parameters(m)] for m in (m0, m1)}
    tr.ctx.epoch = 1
    tr.method.on_epoch_start(tr.ctx)
    assert not tr.optimizer.state  # a fresh optimiser at the stage start
    assert tr.method.current == m1
    tr.train_epoch(1, _Bar())
    moved = [not torch.equal(a, p) for a, p in zip(before[m1], tr.model.encoder_parameters(m1), strict=True)]
    assert all(moved)
    assert all(torch.equal(a, p) for a, p in zip(before[m0], tr.model.encoder_parameters(m0), strict=True))


def test_matrices_come_from_the_previous_modality_inputs(tmp_path):
    tr = trainer(tmp_path, "igm", stage_epochs=[1], temperature=0.7)
    m0, m1 = tr.ctx.modalities[:2]
    tr.method.current = m1
    P = tr.method.flat_matrices(m0, tr.ctx)
    layers0, layers1 = tr.method.layers[m0], tr.method.layers[m1]
    assert len(layers0) == len(layers1) == 4  # encoder Linear x2, classifier Linear x2 (selected by type)
    # the classifier's first layer of m0 reads the encoder's features: C = sum over batches of mean^T mean
    enc, head = tr.model.encoders[m0], tr.method.heads.heads[m0]
    cov = 0
    with torch.no_grad():
        tr.model.eval()
        for batch in tr.ctx.iterate("train"):
            x = enc(batch.inputs[m0]).mean(0, keepdim=True)
            cov = cov + x.T @ x
    assert head.hidden is layers0[2]
    torch.testing.assert_close(P[2], flat_matrix(cov, 0.7), rtol=1e-5, atol=1e-6)
    paired = [p is not None for p in P]
    shapes = [a.weight.shape == b.weight.shape for a, b in zip(layers1, layers0, strict=True)]
    assert paired == shapes and any(paired)


def test_gradient_is_modified_by_the_paired_matrices(tmp_path):
    tr = trainer(tmp_path, "igm", stage_epochs=[1])
    m0, m1 = tr.ctx.modalities[:2]
    tr.method.current = m1
    tr.method.P = tr.method.flat_matrices(m0, tr.ctx)
    batch = first_batch(tr)
    out = tr.method.forward(tr.model, batch, tr.ctx)
    tr.model.zero_grad(set_to_none=True)
    tr.method.loss(out, batch, tr.ctx).backward()
    raw = [layer.weight.grad.clone() for layer in tr.method.layers[m1]]
    tr.method.after_backward(tr.model, out, batch, tr.ctx)
    changed = 0
    for layer, g, P in zip(tr.method.layers[m1], raw, tr.method.P, strict=True):
        torch.testing.assert_close(layer.weight.grad, g if P is None else g @ P)
        changed += P is not None
    assert changed >= 2


@pytest.mark.parametrize("task", ["classification", "regression", "segmentation"])
def test_two_epoch_run_is_finite(tmp_path, task):
    data = {"task": task, **({"size": 8} if task == "segmentation" else {})}
    r = train(small_spec(method="igm", method_params={"stage_epochs": [1]}, dataset_params=data),
              results=tmp_path, progress=False)  # fmt: skip
    assert r.status == "done"
    assert all(math.isfinite(v) for v in r.final["test"].values() if isinstance(v, float))


def test_resume_is_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "igm", stage_epochs=[1], rho=0.05)
