"""MILES: Modality-Informed Learning ratE Scheduler.

Reference: A. Guerra-Manzanares, F. E. Shamout, "MILES: Modality-Informed Learning Rate Scheduler for
Balancing Multimodal Learning", IJCNN 2025 (arXiv 2510.17394). What was verified, and against which
source (issue 13): no official code was found (no repository of the authors is stored; the stored
pages about the paper link none), and the paper's Algorithm 1 was not available to us. The algorithm
below is that of a third-party reimplementation that says it implements Algorithm 1 (an ASGML
project's ``scripts/train.py``: ``get_miles_optimizer``, ``train_epoch_miles``,
``miles_adjust_learning_rates``), and ``tests/test_equivalence_miles.py`` runs our loop next to a
transcription of it for three epochs. Its two-modality case analysis (``u_a > 0 > u_b``, ...) always
picks the modality with the larger u, which is what ``argmax`` does here.

Training loss (Eq. 3): ``L = task_loss(pred, y) + gamma * sum_m task_loss(h_m(f_m), y)`` with one
unimodal head h_m per modality. At the end of every epoch, from that epoch's training accuracies
``A`` (fused) and ``A_m`` (head m)::

    u_m   = (A - mean_{k != m} A_k) / A          # conditional utilisation; M = 2: (A_AB - A_B) / A_AB
    delta = max_m u_m - min_m u_m                 # M = 2: |u_A - u_B|
    if delta > tau and not all u_m < 0:  lr(encoder d) = mu * lr,  d = argmax_m u_m; others: lr
    else:                                 every encoder at lr

where ``lr`` is the current learning rate of the non-encoder group (heads and fusion), so the
runner's schedule still applies on top (the reimplementation has no schedule: its base rate is
constant). Which accuracies: ``accuracy_split: train`` (default) counts them on the epoch's training
batches as they are trained; ``valid`` measures them after the epoch on the validation split, in
eval mode, as the reimplementation does (on its test loader; [UNCERTAIN] which split the paper uses).
Deviations: for M > 2 the other modalities' accuracy is their mean (the reimplementation's choice);
[UNCERTAIN] the defaults ``tau = 0.2`` and ``mu = 0.5`` are the reimplementation's values, not
verified from the paper. Classification only (utilisation rates are ratios of accuracies).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Float
from mmbalance.models.base import MultimodalModel, Output
from mmbalance.training.data import Batch, StrictModel
from mmbalance.training.method import Method, RunContext
from mmbalance.training.method_parts import UnimodalHeads

__all__ = ["MILESParams", "MILES", "utilisation", "lr_scales"]


class MILESParams(StrictModel):
    threshold: float = Field(0.2, ge=0)  # tau: utilisation gap that triggers the slow-down
    reduction: float = Field(0.5, gt=0, le=1)  # mu: learning-rate factor of the dominant encoder
    gamma: float = Field(1.0, ge=0)  # weight of the unimodal heads' losses
    accuracy_split: Literal["train", "valid"] = "train"  # where A and A_m are measured (see above)


def utilisation(acc: float, acc_m: dict[str, float]) -> dict[str, float]:
    """``u_m = (A - mean_{k != m} A_k) / A`` (0 when A = 0)."""
    out = {}
    for m in acc_m:
        others = [a for k, a in acc_m.items() if k != m]
        out[m] = (acc - sum(others) / len(others)) / acc if acc > 0 else 0.0
    return out


def lr_scales(u: dict[str, float], threshold: float, reduction: float) -> dict[str, float]:
    """Learning-rate factor per encoder: ``reduction`` for the most utilised one when the gap exceeds
    ``threshold`` (and not every u is negative), else 1."""
    delta = max(u.values()) - min(u.values())
    if delta <= threshold or all(v < 0 for v in u.values()):
        return {m: 1.0 for m in u}
    dominant = max(u, key=u.get)
    return {m: reduction if m == dominant else 1.0 for m in u}


@METHODS.register
class MILES(Method):
    name = "miles"
    Params = MILESParams
    search_space = {
        "threshold": Float(
            0.05, 0.5, source="around the reimplementation's tau 0.2 (paper's grid not available)"
        ),
        "reduction": Float(
            0.1, 0.9, source="around the reimplementation's mu 0.5 (paper's grid not available)"
        ),
        "gamma": Float(0.25, 4.0, log=True, source="around the reimplementation's 1 (no published grid)"),
    }
    tasks = frozenset({"classification"})
    reference = "Guerra-Manzanares & Shamout, MILES: Modality-Informed Learning Rate Scheduler, IJCNN 2025"

    state_attrs = ("scale", "u")

    def build(self, ctx: RunContext) -> None:
        self.heads = UnimodalHeads(ctx.model)
        self.modalities = ctx.model.modalities
        self.scale = {m: 1.0 for m in self.modalities}
        self.u: dict[str, float] = {}
        self._reset_counts()

    def param_groups(self, model: MultimodalModel) -> list[dict[str, Any]]:
        encoder_ids = {id(p) for m in self.modalities for p in model.encoder_parameters(m)}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in encoder_ids]
        # One group per encoder (in modality order), then the rest: heads, fusion (and the method's heads).
        groups = [{"params": model.encoder_parameters(m)} for m in self.modalities]
        return groups + [{"params": rest}]

    def _reset_counts(self) -> None:
        self.correct = {"fused": 0.0, **{m: 0.0 for m in self.modalities}}
        self.seen = 0

    def forward(self, model: MultimodalModel, batch: Batch, ctx: RunContext) -> Output:
        out = model(batch.inputs)
        out.modality_logits.update(self.heads(model, out))
        return out

    def loss(self, out: Output, batch: Batch, ctx: RunContext) -> Tensor:
        y = batch.target
        loss = ctx.task_loss(out.pred, y) + self.p.gamma * sum(
            ctx.task_loss(out.modality_logits[m], y) for m in self.modalities
        )
        self.correct["fused"] += float((out.pred.argmax(1) == y).sum())
        for m in self.modalities:
            self.correct[m] += float((out.modality_logits[m].argmax(1) == y).sum())
        self.seen += len(y)
        return loss

    def on_epoch_start(self, ctx: RunContext) -> None:
        base = ctx.optimizer.param_groups[-1]["lr"]  # the scheduled rate of the non-encoder group
        for group, m in zip(ctx.optimizer.param_groups, self.modalities, strict=False):
            group["lr"] = base * self.scale[m]
        self._reset_counts()

    @torch.no_grad()
    def _count_valid(self, ctx: RunContext) -> None:
        """The epoch's accuracies on the validation split, in eval mode (``accuracy_split: valid``)."""
        self._reset_counts()
        model = ctx.model
        model.eval()
        self.heads.eval()
        for batch in ctx.iterate("valid"):
            out = model(batch.inputs)
            logits = {"fused": out.pred, **self.heads(model, out)}
            for k, x in logits.items():
                self.correct[k] += float((x.argmax(1) == batch.target).sum())
            self.seen += len(batch.target)
        model.train()
        self.heads.train()

    def on_epoch_end(self, ctx: RunContext) -> None:
        if self.p.accuracy_split == "valid":
            self._count_valid(ctx)
        if self.seen == 0:
            return
        acc = {k: v / self.seen for k, v in self.correct.items()}
        self.u = utilisation(acc.pop("fused"), acc)
        self.scale = lr_scales(self.u, self.p.threshold, self.p.reduction)

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        return {
            **{f"lr_scale/{m}": s for m, s in self.scale.items()},
            **{f"utilisation/{m}": u for m, u in self.u.items()},
        }
