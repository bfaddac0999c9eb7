"""Harnesses of the equivalence tests. ``Ours``/``MaxDiff`` (the existing methods): our ``Trainer.train_batch`` next to a transcription of an official
training step, on two copies of one tiny model, for several consecutive steps.

Both sides start from the same weights (a deep copy) and see the same batches. Models and inputs are
float64, so the only differences left are those of the algorithms (float64 rounding, ~1e-15, where
they agree); every test records the largest differences of coefficients, gradients (right before
the optimiser step) and parameters (after it) over all steps, and asserts them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from mmbalance.common.records import RunDir
from mmbalance.common.spec import validate_spec
from mmbalance.training import runner
from mmbalance.training.batching import to_device
from mmbalance.training.data import Batch


def make_trainer(tmp_path: Path, data_root: Path | None = None, **spec) -> runner.Trainer:
    """A float64 ``Trainer`` wired as ``train`` wires it (probes off: they would fit float32 heads)."""
    spec = validate_spec({"dataset": "synthetic", "epochs": 3, "probe_every": 0, **spec})
    adapter = runner.make_adapter(spec, data_root)
    tr = runner.Trainer(spec, adapter, RunDir.of(tmp_path, "t"), torch.device("cpu"), progress=False)
    return to_float64(tr)


def to_float64(tr: runner.Trainer) -> runner.Trainer:
    """The trainer's model, the method's own modules and the methods' passes in float64, in place
    (the probes, which fit float32 heads, off)."""
    tr.probes = None
    tr.model.double()  # keeps the Parameter objects, so the optimiser still holds them
    for module in vars(tr.method).values():  # the method's own modules (CGGM's classifiers)
        if isinstance(module, nn.Module):
            module.double()
    iterate = tr.ctx.iterate  # the methods' own passes (PMR's prototypes) get float64 batches too
    tr.ctx.iterate = lambda *args, **kwargs: (double(b) for b in iterate(*args, **kwargs))
    return tr


def double(batch: Batch) -> Batch:
    target = batch.target.double() if batch.target.is_floating_point() else batch.target
    return Batch({m: x.double() for m, x in batch.inputs.items()}, target, batch.ids)


def training_batches(tr: runner.Trainer, epochs: int) -> Iterator[tuple[int, int, Batch]]:
    """``(epoch, step in epoch, batch)`` in the runner's training order, float64."""
    for epoch in range(epochs):
        for i, batch in enumerate(tr.loader("train", shuffle=True, epoch=epoch)):
            yield epoch, i, double(batch)


def snapshot(params) -> list[Tensor]:
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]


@dataclass
class Ours:
    """Our side: ``train_batch`` with the gradients captured right before ``optimizer.step``."""

    tr: runner.Trainer
    extra: Sequence[nn.Module] = ()  # the method's own trained modules (unimodal heads), after the model's
    grads: list[Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        params = list(self.tr.model.parameters()) + [p for m in self.extra for p in m.parameters()]
        self.tr.optimizer.register_step_pre_hook(lambda *_: setattr(self, "grads", snapshot(params)))

    def step(self, epoch: int, i: int, batch: Batch) -> None:
        ctx = self.tr.ctx
        if i == 0:
            self.tr.model.train()
            ctx.training, ctx.epoch = True, epoch
            self.tr.method.on_epoch_start(ctx)
        ctx.step_in_epoch, ctx.step = i, epoch * self.tr.steps_per_epoch + i
        self.tr.train_batch(batch)

    def end_epoch(self) -> None:
        self.tr.method.on_epoch_end(self.tr.ctx)


@dataclass
class MaxDiff:
    """Largest absolute differences over all compared steps."""

    coefficients: float = 0.0
    gradients: float = 0.0
    parameters: float = 0.0
    steps: int = 0

    def add(self, coeff_ours, coeff_ref, grads_ours, grads_ref, model_ours, model_ref) -> None:
        self.coefficients = max(self.coefficients, _max_abs(coeff_ours, coeff_ref))
        self.gradients = max(
            self.gradients, max(_max_abs(a, b) for a, b in zip(grads_ours, grads_ref, strict=True))
        )
        pairs = zip(model_ours.parameters(), model_ref.parameters(), strict=True)
        self.parameters = max(self.parameters, max(_max_abs(a, b) for a, b in pairs))
        self.steps += 1

    def __str__(self) -> str:
        return (
            f"max |diff| coefficients {self.coefficients:.3g}, gradients {self.gradients:.3g}, "
            f"parameters {self.parameters:.3g} over {self.steps} steps"
        )


# The two-modality setting of the audio-visual official codes (SGD with momentum 0.9, weight decay 1e-4).
TWO_MODALITIES = {
    "dataset_params": {"modalities": 2, "n_train": 128, "n_valid": 32, "n_test": 32},
    "model_params": {"hidden": 16, "feature_dim": 8},
    "batch_size": 32,
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1.0e-4},
}


def lockstep(
    tr: runner.Trainer,
    ref,
    epochs: int,
    coefficients: Callable[[], object] = lambda: [],
    same_rng: bool = False,
    extra: Sequence[nn.Module] = (),
    name: str = "",
) -> MaxDiff:
    """Our steps and ``ref``'s on the same float64 batches for ``epochs`` epochs; the max |Δ|s, printed.

    ``ref.step(batch, epoch, i)`` runs the official iteration on its copy and sets ``ref.coeff``
    (compared with ``coefficients()`` of ours), ``ref.grads`` (right before its optimiser step) and
    ``ref.model``; ``ref.end_epoch(epoch)``, if it has one, runs after each epoch's last step, as
    ``method.on_epoch_end`` does on ours. ``same_rng``: both steps start from one random state (methods
    that sample). ``extra``: the method's own trained modules, compared with ``ref.extra`` (their
    gradients follow the model's in ``ref.grads``).
    """
    ours, diff = Ours(tr, extra), MaxDiff()
    both = nn.ModuleList([tr.model, *extra]), nn.ModuleList([ref.model, *getattr(ref, "extra", ())])
    for epoch, i, batch in training_batches(tr, epochs):
        if same_rng:
            torch.manual_seed(1000 + diff.steps)
        ours.step(epoch, i, batch)
        if same_rng:
            torch.manual_seed(1000 + diff.steps)
        ref.step(batch, epoch, i)
        diff.add(coefficients(), ref.coeff, ours.grads, ref.grads, *both)
        if i == tr.steps_per_epoch - 1:
            ours.end_epoch()
            if hasattr(ref, "end_epoch"):
                ref.end_epoch(epoch)
    print(f"{name or tr.spec.method}: {diff}")
    return diff


def _max_abs(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return (a.detach() - b.detach()).abs().max().item() if a.numel() else 0.0


def twin(module: nn.Module) -> nn.Module:
    """The official side's copy of a module: same weights, separate parameters."""
    return copy.deepcopy(module)


# --- side by side (the 2024-2025 methods): the runner's steps next to an official step on a copy ---
def side_by_side_float64(
    tr: runner.Trainer,
    official_step: Callable[..., object],
    steps: int = 4,
    extra: Sequence[nn.Module] = (),
    same_rng: bool = False,
    batches=None,
    coefficients: Callable[[], object] = lambda: [],
) -> MaxDiff:
    """``side_by_side`` in float64, with the max |Δ| of coefficients, gradients and parameters.

    The trainer is made float64 (``to_float64``), and so are the batches. ``official_step`` (as for
    ``side_by_side``) may return its coefficients, compared with ``coefficients()`` of ours after our
    step; the gradients are compared right before each side's optimiser step, the parameters (model
    and ``extra``) after it, on every step.
    """
    to_float64(tr)
    twin_model, twin_extra = copy.deepcopy(tr.model), [copy.deepcopy(m) for m in extra]
    params = list(twin_model.parameters()) + [p for m in twin_extra for p in m.parameters()]
    opt = runner.make_optimizer(tr.spec, [{"params": params}])
    ours, diff = Ours(tr, extra), MaxDiff()
    both = nn.ModuleList([tr.model, *extra]), nn.ModuleList([twin_model, *twin_extra])
    start = [p.detach().clone() for p in both[0].parameters()]
    if batches is None:
        batches = ((b, None) for b in to_device(tr.loader("train", shuffle=True), tr.device))
    tr.model.train()
    twin_model.train()
    tr.method.on_epoch_start(tr.ctx)
    for i, (batch, tags) in zip(range(steps), batches, strict=False):
        batch = double(batch)
        tr.ctx.step = tr.ctx.step_in_epoch = i
        tr.ctx.tags = tags
        rng = torch.get_rng_state()
        tr.train_batch(batch)
        coeff_ours = coefficients()
        opt.zero_grad(set_to_none=True)
        after = torch.get_rng_state()
        if same_rng:
            torch.set_rng_state(rng)
        coeff_ref = official_step(twin_model, twin_extra, batch, tr.ctx)
        torch.set_rng_state(after)
        grads_ref = snapshot(params)
        opt.step()
        diff.add(coeff_ours, [] if coeff_ref is None else coeff_ref, ours.grads, grads_ref, *both)
    print(f"{tr.spec.method}: {diff}")
    assert diff.parameters == diff.parameters, "NaN parameters"
    assert any(not torch.equal(a, b) for a, b in zip(both[0].parameters(), start, strict=True)), (
        "nothing trained"
    )
    return diff


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
        batches = ((b, None) for b in to_device(tr.loader("train", shuffle=True), tr.device))
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

    from mmbalance.common.records import RunDir

    data = {"n_train": 128, "n_valid": 32, "n_test": 32, "task": task, "modalities": 2}
    spec = small_spec(method=method, method_params=params, dataset_params=data)
    adapter = runner.make_adapter(spec)
    return runner.Trainer(spec, adapter, RunDir.of(tmp_path, "eq"), torch.device("cpu"), progress=False)
