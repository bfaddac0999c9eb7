"""Equivalence with an official training step: the runner trains its model with the method for a
few steps while a copy of the same model (and of the method's own modules) is trained on the same
batches by a transcription of the official step; the parameters must stay together."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from mmbalance import runner


def side_by_side(
    tr: runner.Trainer,
    official_step: Callable[..., None],
    steps: int = 4,
    extra: Sequence[nn.Module] = (),
    same_rng: bool = False,
    batches=None,
) -> float:
    """Max |Δ| over every parameter (model and ``extra`` modules) after each of ``steps`` steps.

    ``official_step(model, extra_copies, batch, ctx)`` computes the official gradients on the copy
    (``.grad`` of its parameters, zeroed before the call); the copy's optimiser is the runner's
    optimiser class and settings, so only the gradients can differ. ``same_rng``: the official step
    starts from the random-generator state our step started from (methods that sample).
    ``batches``: ``(batch, tags)`` pairs to train on (a re-sampled epoch; ``ctx.tags`` is set for both
    steps), else the shuffled train split.
    """
    twin = copy.deepcopy(tr.model)
    twin_extra = [copy.deepcopy(m) for m in extra]
    params = list(twin.parameters()) + [p for m in twin_extra for p in m.parameters()]
    opt = runner.make_optimizer(tr.spec, [{"params": params}])
    ours = list(tr.model.parameters()) + [p for m in extra for p in m.parameters()]
    start = [p.detach().clone() for p in ours]
    worst = 0.0
    if batches is None:
        batches = ((b, None) for b in runner._batches(tr.loader("train", shuffle=True), tr.device))
    tr.model.train()
    twin.train()
    tr.method.on_epoch_start(tr.ctx)
    for i, (batch, tags) in zip(range(steps), batches, strict=False):
        tr.ctx.step = tr.ctx.step_in_epoch = i
        tr.ctx.tags = tags
        rng = torch.get_rng_state()
        tr.train_batch(batch)
        opt.zero_grad(set_to_none=True)
        after = torch.get_rng_state()
        if same_rng:
            torch.set_rng_state(rng)
        official_step(twin, twin_extra, batch, tr.ctx)
        torch.set_rng_state(after)
        opt.step()
        worst = max(worst, max((a - b).abs().max().item() for a, b in zip(ours, params, strict=True)))
    assert worst == worst, "NaN parameters"
    assert any(not torch.equal(a, b) for a, b in zip(ours, start, strict=True)), "nothing trained"
    return worst


def two_modality_trainer(tmp_path, method: str, task: str = "classification", **params) -> runner.Trainer:
    """A runner Trainer on two synthetic modalities (the official codes' audio-visual shape)."""
    from conftest import small_spec

    from mmbalance.records import RunDir

    data = {"n_train": 128, "n_valid": 32, "n_test": 32, "task": task, "modalities": 2}
    spec = small_spec(method=method, method_params=params, dataset_params=data)
    adapter = runner.make_adapter(spec)
    return runner.Trainer(spec, adapter, RunDir.of(tmp_path, "eq"), torch.device("cpu"), progress=False)
