"""The contributor's template (``methods/_template.py``), run as a method: the test a new method's file
starts from (copy to ``tests/test_method_<name>.py``), and what keeps ``CONTRIBUTING.md`` honest."""

from __future__ import annotations

import importlib
import math
import re
from pathlib import Path

import pytest
import torch
from _method_helpers import assert_resume_is_exact, first_batch, trainer

from mmbalance.common.registry import METHODS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def template():
    """Registered for one test (its file name keeps it out of ``mmbalance methods``)."""
    module = importlib.import_module("mmbalance.methods._template")
    METHODS.register(module.Template)
    yield module
    METHODS._entries.pop("template")


def test_formula_by_hand(template):
    # L = 0.5 + 2 * (0.25 + 0.75) = 2.5
    loss = template.auxiliary_loss(torch.tensor(0.5), [torch.tensor(0.25), torch.tensor(0.75)], 2.0)
    assert loss.item() == 2.5


def test_heads_are_its_own_parts_trained_moved_and_saved(template, tmp_path):
    tr = trainer(tmp_path, "template", lam=0.5)
    heads = {id(p) for p in tr.method.heads.parameters()}
    assert heads and heads <= {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert set(tr.method.state_dict()) == {"heads", "ema"}
    batch = first_batch(tr)
    out = tr.method.forward(tr.model, batch, tr.ctx)
    ce = torch.nn.functional.cross_entropy
    uni = [ce(out.modality_logits[m], batch.target) for m in tr.ctx.modalities]
    expected = ce(out.pred, batch.target) + 0.5 * sum(uni)
    assert tr.method.loss(out, batch, tr.ctx).item() == pytest.approx(expected.item())
    assert tr.method.ema.tolist() == pytest.approx([0.1 * u.item() for u in uni])  # lerp from 0, beta 0.9


@pytest.mark.parametrize("task", ["classification", "regression", "segmentation"])
def test_trains_on_every_task(template, tmp_path, task):
    tr = trainer(tmp_path, "template", task=task)
    assert math.isfinite(tr.train_batch(first_batch(tr)))
    assert all(math.isfinite(v) for v in tr.method.diagnostics(tr.ctx).values())


def test_resume_is_exact(template, tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "template")


def test_the_guide_names_what_exists():
    guide = (ROOT / "CONTRIBUTING.md").read_text()
    for path in re.findall(r"`((?:methods|tests|mmbalance)/[\w/.]+\.py)`", guide):
        assert (ROOT / path).is_file(), f"CONTRIBUTING.md names {path}, which is not there"
    for hook in re.findall(r"`(?:Method|ctx)\.(\w+)`", guide):
        assert hasattr(importlib.import_module("mmbalance.training.method").Method, hook) or hook in {
            "model",
            "optimizer",
            "modalities",
            "task",
            "task_loss",
            "iterate",
            "epoch",
            "training",
            "optim",
        }, hook
