"""Shared helpers of the balancing-method tests: a real runner ``Trainer`` on tiny synthetic data,
one batch's gradients, and an interrupted-then-resumed run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import small_spec

from mmbalance.common.records import RunDir
from mmbalance.training import runner
from mmbalance.training.batching import to_device

TINY = {"n_train": 128, "n_valid": 32, "n_test": 32}


# Methods whose defaults need more epochs than the tests' 2-3 epoch runs (DI-MML: 150 of stage 1, then stage 2).
SHORT_RUN_PARAMS = {"di_mml": {"stage1_epochs": 1, "contrast_epoch": 0}}


def trainer(tmp_path: Path, method: str, task: str = "classification", **params) -> runner.Trainer:
    """A Trainer wired exactly as ``train`` wires it (model, optimiser, context, ``method.build``)."""
    spec = small_spec(method=method, method_params=params, dataset_params={**TINY, "task": task})
    adapter = runner.make_adapter(spec)
    return runner.Trainer(spec, adapter, RunDir.of(tmp_path, "t"), torch.device("cpu"), progress=False)


# LNLN trains its own network (model_params.arch: lnln) on the MSA regression datasets: the CH-SIMS fixture.
LNLN_TINY = {"arch": "lnln", "lnln": {"dim": 8, "mlp_dim": 8, "heads": 2, "dim_head": 4, "tokens": 2, "depth": 1,
             "proxy_depth": 1, "check_depth": 1, "reconstructor_depth": 1, "language_depth": 1, "fusion_depth": 1,
             "discriminator_hidden": 4}}  # fmt: skip


def lnln_trainer(tmp_path: Path, **params) -> runner.Trainer:
    """A Trainer of the ``lnln`` method on the tiny LNLN network and the CH-SIMS fixture."""
    from mmbalance.common.spec import validate_spec
    from mmbalance.fixtures import sims

    sims.write(tmp_path / "data")
    spec = validate_spec({"dataset": "sims", "method": "lnln", "method_params": params, "model_params": LNLN_TINY,
                          "epochs": 2, "batch_size": 8, "probe_every": 2})  # fmt: skip
    adapter = runner.make_adapter(spec, tmp_path / "data")
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
