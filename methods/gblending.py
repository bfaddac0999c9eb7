"""G-Blending: gradient blending. Weight each head's loss by its generalisation-to-overfitting ratio.

Reference: W. Wang, D. Tran, M. Feiszli, "What Makes Training Multi-Modal Classification Networks
Hard?", CVPR 2020. No official code was found; the weights follow the paper's online Gradient-Blending
and BalanceBenchmark's re-implementation (GeWu-Lab/BalanceBenchmark @ 4c1482f,
``balancemm/trainer/GBlending_trainer.py::super_epoch_origin``, ``configs/trainer_config.yaml``:
``super_epoch: 10``).

Heads k = every modality's unimodal head and the fused head. Training loss::

    loss = sum_k w_k task_loss(logits_k, y)

Every ``super_epoch`` epochs the weights are re-estimated from how each head's train and validation
losses moved over the last super-epoch (start -> end)::

    G_k = L_val_end - L_val_start                                 # generalisation change
    O_k = (L_val_end - L_train_end) - (L_val_start - L_train_start)   # overfitting change
    w_k = |G_k / O_k^2|,  normalised to sum 1                     # paper: w* ~ G / O^2

Deviation, stated plainly: the paper and BalanceBenchmark measure G and O by training a *copy* of
the model for a super-epoch once per head (M + 1 extra super-epochs each time). Here they are
measured on the run's own multi-head trajectory (the heads train jointly under the current blend),
which costs one no-grad pass over the train and validation splits per super-epoch instead. The first
super-epoch trains with equal weights 1 / (M + 1). Losses are per-sample means (BalanceBenchmark sums
batch losses over loaders of different lengths). Task-agnostic (losses only): all three task kinds,
any number of modalities. Prediction: the fused head.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Epochs
from mmbalance.models.base import Output
from mmbalance.training.data import Batch, StrictModel
from mmbalance.training.method import RunContext
from mmbalance.training.method_parts import UnimodalHeadsMethod

__all__ = ["GBlendingParams", "GBlending", "blend_weights"]

FUSED = "fused"  # the multimodal head's key among the blended heads


class GBlendingParams(StrictModel):
    super_epoch: int = Field(10, ge=1)  # epochs between weight estimates (BalanceBenchmark default)
    train_batches: int | None = Field(None, ge=1)  # batches of the train split measured (None: all)


def blend_weights(start: dict[str, tuple[float, float]], end: dict[str, tuple[float, float]],
                  eps: float = 1e-12) -> dict[str, float]:  # fmt: skip
    """Normalised ``|G_k / O_k^2|`` from per-head ``(train_loss, valid_loss)`` at the start and the
    end of a super-epoch."""
    raw = {}
    for k, (train_end, val_end) in end.items():
        train_start, val_start = start[k]
        g = val_end - val_start
        o = (val_end - train_end) - (val_start - train_start)
        raw[k] = abs(g / max(o * o, eps))
    total = sum(raw.values())
    if total == 0:  # no head moved: keep the blend uniform
        return {k: 1 / len(raw) for k in raw}
    return {k: v / total for k, v in raw.items()}


@METHODS.register
class GBlending(UnimodalHeadsMethod):
    name = "gblending"
    Params = GBlendingParams
    search_space = {
        "super_epoch": Epochs(
            0.15, 0.5, minimum=1, source="BalanceBenchmark's 10 (no published grid); suite 4 of 12"
        ),
    }
    reference = "Wang, Tran & Feiszli, CVPR 2020 (Gradient-Blending); weights as BalanceBenchmark's trainer"

    state_attrs = ("weights", "start")

    def build(self, ctx: RunContext) -> None:
        super().build(ctx)
        keys = [*ctx.modalities, FUSED]
        self.weights = {k: 1 / len(keys) for k in keys}
        self.start: dict[str, tuple[float, float]] | None = None

    def loss(self, out: Output, batch: Batch, ctx: RunContext) -> Tensor:
        logits = {**{m: out.modality_logits[m] for m in ctx.modalities}, FUSED: out.pred}
        return sum(self.weights[k] * ctx.task_loss(z, batch.target) for k, z in logits.items())

    def on_epoch_start(self, ctx: RunContext) -> None:
        if ctx.epoch % self.p.super_epoch != 0:
            return
        losses = self.measure(ctx)
        if self.start is not None:
            self.weights = blend_weights(self.start, losses)
        self.start = losses

    @torch.no_grad()
    def measure(self, ctx: RunContext) -> dict[str, tuple[float, float]]:
        """Per-head mean task loss on the train and validation splits: ``{head: (train, valid)}``."""
        model = ctx.model
        model.eval()
        means = {}
        for split, limit in (("train", self.p.train_batches), ("valid", None)):
            total, n = dict.fromkeys(self.weights, 0.0), 0
            for batch in ctx.iterate(split, max_batches=limit):
                out = model(batch.inputs)
                logits = {**self.heads(model, out), FUSED: out.pred}
                for k, z in logits.items():
                    total[k] += ctx.task_loss(z, batch.target).item() * len(batch)
                n += len(batch)
            means[split] = {k: v / n for k, v in total.items()}
        model.train()
        return {k: (means["train"][k], means["valid"][k]) for k in self.weights}

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        return {f"weight/{k}": w for k, w in self.weights.items()}
