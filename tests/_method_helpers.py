"""Shared helpers of the balancing-method tests: a real runner ``Trainer`` on tiny synthetic data,
one batch's gradients, and an interrupted-then-resumed run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import small_spec

from mmbalance import runner
from mmbalance.batching import to_device
from mmbalance.records import RunDir

TINY = {"n_train": 128, "n_valid": 32, "n_test": 32}


# Methods whose defaults need more epochs than the tests' 2-3 epoch runs (DI-MML: 150 of stage 1, then stage 2).
SHORT_RUN_PARAMS = {"di_mml": {"stage1_epochs": 1, "contrast_epoch": 0}}


def trainer(tmp_path: Path, method: str, task: str = "classification", **params) -> runner.Trainer:
    """A Trainer wired exactly as ``train`` wires it (model, optimiser, context, ``method.setup``)."""
    spec = small_spec(method=method, method_params=params, dataset_params={**TINY, "task": task})
    adapter = runner.make_adapter(spec)
    return runner.Trainer(spec, adapter, RunDir.of(tmp_path, "t"), torch.device("cpu"), progress=False)


def first_batch(tr: runner.Trainer):
    return next(iter(to_device(tr.loader("train", shuffle=True), tr.device)))


def grads_after(tr: runner.Trainer, batch, hook: bool = True) -> dict[str, torch.Tensor]:
    """Gradients of every model parameter after one forward/backward (and ``after_backward`` if ``hook``)."""
    tr.model.zero_grad(set_to_none=True)
    out = tr.method.forward(tr.model, batch, tr.ctx)
    loss = tr.method.loss(out, batch, tr.ctx) if hook else tr.task_loss(out.pred, batch.target)
    loss.backward()
    if hook:
        tr.method.after_backward(tr.model, out, batch, tr.ctx)
    return {n: p.grad.clone() for n, p in tr.model.named_parameters() if p.grad is not None}


def assert_resume_is_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, **params) -> None:
    """A run interrupted after its first epoch and resumed ends with the uninterrupted run's numbers."""
    spec = small_spec(method=method, method_params=params, dataset_params=TINY, epochs=2)
    full = runner.train(spec, results=tmp_path / "full", progress=False)
    original = runner.Trainer.train_epoch

    def interrupt(self, epoch, bar):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, epoch, bar)

    monkeypatch.setattr(runner.Trainer, "train_epoch", interrupt)
    with pytest.raises(KeyboardInterrupt):
        runner.train(spec, results=tmp_path / "cut", progress=False)
    monkeypatch.setattr(runner.Trainer, "train_epoch", original)
    resumed = runner.train(spec, results=tmp_path / "cut", progress=False)
    assert resumed.status == "done"
    assert json.dumps(resumed.final["test"], sort_keys=True) == json.dumps(full.final["test"], sort_keys=True)
    assert (resumed.path / "curves.csv").read_text() == (full.path / "curves.csv").read_text()
