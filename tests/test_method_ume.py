from __future__ import annotations

import math

import pytest
import torch
from _method_helpers import assert_resume_is_exact, first_batch, trainer
from conftest import small_spec

from mmbalance.training import runner


def test_prediction_is_the_mean_of_the_unimodal_heads_and_loss_their_sum(tmp_path):
    tr = trainer(tmp_path, "ume")
    batch = first_batch(tr)
    out = tr.method.forward(tr.model, batch, tr.ctx)
    logits = [out.modality_logits[m] for m in tr.modalities]
    assert torch.allclose(out.pred, (logits[0] + logits[1] + logits[2]) / 3)
    loss = tr.method.loss(out, batch, tr.ctx)
    expected = sum(torch.nn.functional.cross_entropy(z, batch.target) for z in logits)
    assert loss.item() == pytest.approx(expected.item())


def test_encoders_learn_alone_and_the_fused_head_is_unused(tmp_path):
    tr = trainer(tmp_path, "ume")
    batch = first_batch(tr)
    heads = tr.method.heads.heads
    assert {id(p) for p in heads.parameters()} <= {
        id(p) for g in tr.optimizer.param_groups for p in g["params"]
    }
    out = tr.method.forward(tr.model, batch, tr.ctx)
    tr.method.loss(out, batch, tr.ctx).backward()
    for m in tr.modalities:
        params = tr.model.encoder_parameters(m) + list(heads[m].parameters())
        assert params and all(p.grad is not None for p in params)
    assert all(p.grad is None for p in tr.model.head.parameters())
    # encoder m0's gradient is exactly that of its own unimodal loss
    enc = tr.model.encoder_parameters("m0")
    own = torch.autograd.grad(
        torch.nn.functional.cross_entropy(
            heads["m0"](tr.model.encoders["m0"](batch.inputs["m0"])), batch.target
        ),
        enc,
    )
    assert all(torch.allclose(p.grad, g, atol=1e-6) for p, g in zip(enc, own, strict=True))


@pytest.mark.parametrize("task", ["classification", "regression", "segmentation"])
def test_one_epoch_run_is_finite(tmp_path, task):
    spec = small_spec(
        method="ume", epochs=1, dataset_params={"task": task, "n_train": 64, "n_valid": 32, "n_test": 32}
    )
    r = runner.train(spec, results=tmp_path, progress=False)
    key = {"classification": "accuracy", "regression": "mae", "segmentation": "dice_mean"}[task]
    assert r.status == "done" and math.isfinite(r.final["test"][key])


def test_resume_is_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "ume")
