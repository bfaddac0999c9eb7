"""The method API: a balancing method reacts to the one training loop in ``runner.py``.

Before the optimiser exists the runner calls ``method.build(ctx)``: the method builds its own modules
and state there. What it assigns to ``self`` that is a module, a parameter or an optimiser is its own
part: the parts' trainable parameters join the runner's optimiser (unless an optimiser of its own trains
them), the parts move to the device, and they are saved in the checkpoint, with no code of the method's;
plain running state (coefficients, counters) is saved when named in ``state_attrs``. ``ctx.model`` is the
model: a method reads it from there and keeps no reference of its own to the model or its parts.

The runner owns the loop. Per training step it calls, in order::

    out  = method.forward(model, batch, ctx)            # usually model(batch.inputs)
    loss = method.loss(out, batch, ctx)                  # task loss + the method's own terms
    loss.backward()
    method.after_backward(model, out, batch, ctx)        # gradient modulation, aux optimisers
    optimizer.step()

plus ``on_epoch_start`` / ``on_epoch_end`` around each epoch. A method that re-samples the training
data (``Resampling``: Modality valuation, Data Remixing) returns the epoch's samples from ``epoch_samples``; the
runner then batches those instead of the shuffled train split and tells the method each sample's
tag in ``ctx.tags``. Evaluation calls ``forward`` under
``torch.no_grad`` with ``ctx.training = False``. Joint training is the method whose hooks do
nothing. A method never imports a dataset: task knowledge comes from ``ctx.task``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import model_validator
from torch import Tensor, nn

from mmbalance.common.core import ALL_TASKS, MethodNotApplicable
from mmbalance.common.search_space import Dim
from mmbalance.models.base import MultimodalModel, Output
from mmbalance.training.data import Batch, NoParams, StrictModel, TaskInfo

# A method's own parts, by type: what the runner trains, moves and checkpoints for it.
Part = nn.Module | nn.Parameter | torch.optim.Optimizer


@dataclass
class RunContext:
    """What the runner tells a method about the run in progress."""

    task: TaskInfo
    model: MultimodalModel = field(repr=False)
    modalities: list[str]  # the model's modalities, in order
    task_loss: Callable[[Tensor, Tensor], Tensor]
    device: torch.device
    epochs: int
    steps_per_epoch: int
    batch_size: int = 0  # the spec's training batch size
    # Deterministic pass over a split (for prototypes, held-out estimates, ...): unshuffled, or with
    # ``shuffle_round=k`` in the k-th random order of a stream seeded by the run's seed alone.
    iterate: Callable[..., Iterator[Batch]] = field(repr=False, default=None)
    optimizer: torch.optim.Optimizer | None = field(repr=False, default=None)  # None in ``build``
    optim: Any = None  # the spec's optimiser settings (``OptimSpec``: name, lr, momentum, ...)
    # The runner clips the model's gradient norm at this value right before optimizer.step (None: no
    # clipping); a method whose official loop clips once (CGGM) leaves it to the runner when it is set.
    clip_grad_norm: float | None = None
    epoch: int = 0  # 0-based
    step: int = 0  # global step, 0-based
    step_in_epoch: int = 0
    training: bool = True
    # Which of ``Method.turns`` this optimiser step is (MLA: a modality); None for one-step methods.
    turn: str | None = None
    last_turn: bool = True
    # Per sample of the current training batch: the tag ``Resampling.epoch_samples`` gave it (None when
    # the method does not re-sample).
    tags: Tensor | None = None


class Method:
    """Base class; subclasses set ``name`` and override the hooks they need.

    Class attributes:
      ``Params``: pydantic model of the hyper-parameters (spec field ``method_params``), with
        the official defaults.
      ``tasks``: task kinds the method supports (``unsupported``: why the others are refused);
        ``min_modalities``: fewest modalities it needs.
      ``reference``: paper and official code, shown by ``mmbalance methods``.
      ``search_space``: what ``mmbalance tune`` may change, by ``Params`` field (``search_space.py``),
        each dimension citing the paper's or official code's range; the optimiser space is shared.
      ``state_attrs``: plain attributes exact resume restores (its parts are found by type).
    """

    name: ClassVar[str]
    Params: ClassVar[type[StrictModel]] = NoParams
    tasks: ClassVar[frozenset[str]] = ALL_TASKS
    min_modalities: ClassVar[int] = 2
    reference: ClassVar[str] = ""
    search_space: ClassVar[dict[str, Dim]] = {}
    # Why a task kind outside ``tasks`` is refused, in the method's terms (``{kind}``: the task kind); empty:
    # the generic "supports ... tasks" message.
    unsupported: ClassVar[str] = ""
    # Running state (numbers, lists, tensors) that a resumed run must find as the interrupted one left it.
    state_attrs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: StrictModel | None = None) -> None:
        self.p = params if params is not None else self.Params()

    @classmethod
    def variants(cls, params: dict[str, Any], task: TaskInfo) -> list[dict[str, Any]]:
        """Parameter sets a sweep expands one entry into (the unimodal baseline: one per modality)."""
        return [params]

    def check(self, task: TaskInfo) -> None:
        """Raise ``MethodNotApplicable`` if this method cannot run on ``task``."""
        if task.kind not in self.tasks:
            raise MethodNotApplicable(
                self.unsupported.format(kind=task.kind)
                or f"method {self.name!r} supports {sorted(self.tasks)} tasks, not {task.kind!r}"
            )
        if len(task.modalities) < self.min_modalities:
            raise MethodNotApplicable(
                f"method {self.name!r} needs at least {self.min_modalities} modalities, got {len(task.modalities)}"
            )

    def model_modalities(self, modalities: Sequence[str]) -> list[str]:
        """The modalities the model is built with (all of them, except for unimodal training)."""
        return list(modalities)

    def param_groups(self, model: MultimodalModel) -> list[dict[str, Any]]:
        """The model's optimiser parameter groups (a method with per-modality learning rates splits them
        here; a group may carry its own ``lr``, or ``lr_scale`` (a multiple of ``optim.lr``), else the
        spec's ``optim.lr`` applies). The runner adds the method's own parameters to the last group."""
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def selectable(self, epoch: int) -> bool:
        """Whether the model after ``epoch`` is this method's model, so best-validation selection
        may pick it (UMT: not while only its teachers train). Default: every epoch."""
        return True

    # --- hooks ----------------------------------------------------------------------------------
    def build(self, ctx: RunContext) -> None:
        """Build the method's own modules and state (``ctx.optimizer`` is still None); raise
        ``MethodNotApplicable`` if the model does not fit."""

    def forward(self, model: MultimodalModel, batch: Batch, ctx: RunContext) -> Output:
        return model(batch.inputs)

    def loss(self, out: Output, batch: Batch, ctx: RunContext) -> Tensor:
        return ctx.task_loss(out.pred, batch.target)

    def after_backward(self, model: MultimodalModel, out: Output, batch: Batch, ctx: RunContext) -> None:
        pass

    def on_epoch_start(self, ctx: RunContext) -> None:
        pass

    def on_epoch_end(self, ctx: RunContext) -> None:
        pass

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        """Coefficients and other per-step values, logged by the probes as curves."""
        return {}

    # --- own parts: optimiser, device, checkpoint (not overridden) ---------------------------------
    def parts(self) -> dict[str, Part]:
        """The method's own modules, parameters and optimisers: its attributes of those types."""
        return {k: v for k, v in vars(self).items() if isinstance(v, Part)}

    def parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of its parts that the runner's optimiser trains: all but those its own
        optimisers train (CGGM's classifiers)."""
        parts = self.parts().values()
        own = {
            id(p)
            for o in parts
            if isinstance(o, torch.optim.Optimizer)
            for g in o.param_groups
            for p in g["params"]
        }
        found: dict[int, nn.Parameter] = {}
        for part in parts:
            params = (
                [part]
                if isinstance(part, nn.Parameter)
                else []
                if isinstance(part, torch.optim.Optimizer)
                else part.parameters()
            )
            found |= {id(p): p for p in params if p.requires_grad and id(p) not in own}
        return list(found.values())

    def to(self, device: torch.device) -> None:
        for k, part in self.parts().items():
            if isinstance(part, nn.Parameter):
                setattr(self, k, nn.Parameter(part.detach().to(device), requires_grad=part.requires_grad))
            elif isinstance(part, nn.Module):
                part.to(device)

    def state_dict(self) -> dict[str, Any]:
        parts = {
            k: v.detach() if isinstance(v, nn.Parameter) else v.state_dict() for k, v in self.parts().items()
        }
        return {**parts, **{k: getattr(self, k) for k in self.state_attrs}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, part in self.parts().items():
            if isinstance(part, nn.Parameter):
                with torch.no_grad():
                    part.copy_(state[k])
            else:
                part.load_state_dict(state[k])
        for k in self.state_attrs:
            setattr(self, k, state[k])


class ModulationWindow(StrictModel):
    """Parameters of a method that modulates from epoch ``modulation_starts`` to ``modulation_ends``
    (0-based, both inclusive; OGM-GE, AGM, PMR). A subclass declares the two int fields with its own
    defaults, where its other parameters stand (so ``mmbalance methods NAME`` lists them in that order)."""

    @model_validator(mode="after")
    def _window(self) -> ModulationWindow:
        if self.modulation_ends < self.modulation_starts:
            raise ValueError(
                f"modulation_ends ({self.modulation_ends}) < modulation_starts ({self.modulation_starts})"
            )
        return self

    def modulates(self, epoch: int) -> bool:
        return self.modulation_starts <= epoch <= self.modulation_ends


class Resampling(Method):
    """A method that re-samples the training data each epoch (Modality valuation, Data Remixing, BSS)."""

    # True: the runner batches each part of ``epoch_samples`` in the given order (a curriculum).
    ordered_samples: ClassVar[bool] = False
    # True: a part's last incomplete batch is dropped (DataLoader's drop_last), unless it is the only one.
    drop_last: ClassVar[bool] = False

    def epoch_samples(self, ctx: RunContext) -> Sequence[Sequence[tuple[int, int]]] | None:
        """Data re-sampling, called at the start of each training epoch (after ``on_epoch_start``).

        None (default): the train split, shuffled. Otherwise the epoch's samples as parts, each a
        list of ``(index into the train split, tag)``; indices may repeat. The runner shuffles (unless
        ``ordered_samples``) and batches each part on its own (a batch never mixes parts) and runs the
        parts in order; the tags of a batch's samples are in ``ctx.tags`` (e.g. which modalities a
        copy keeps)."""
        return None


class Turns(Method):
    """A method that takes several optimiser steps on each batch (MLA: one per modality)."""

    def turns(self, ctx: RunContext) -> Sequence[str | None]:
        """The optimiser steps the runner takes on each batch, one ``forward``/``loss``/``backward``/
        ``after_backward``/``step`` round each, with ``ctx.turn`` set (MLA: one turn per modality)."""
        raise NotImplementedError
