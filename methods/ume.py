"""UME: uni-modal ensemble. Each modality is trained alone; the prediction averages their outputs.

Reference: C. Du, J. Teng, T. Li, Y. Liu, T. Yuan, Y. Wang, Y. Yuan, H. Zhao, "On Uni-Modal Feature
Learning in Supervised Multi-Modal Learning", ICML 2023 (UME and UMT). No official code was found in
the stored sources; BalanceBenchmark has no UME trainer. Following the paper: uni-modal models are
trained independently, each with its own loss, and at test time their outputs are averaged::

    logits_m = head_m(encoder_m(x_m))                  # one classifier per modality (UnimodalHeads)
    loss     = sum_m task_loss(logits_m, y)            # no fused term: encoders never interact
    pred     = mean_m logits_m

One run trains all M uni-modal models at once: the loss is a sum of terms that share no parameter,
so each encoder and head gets exactly the gradient its own uni-modal run would get (with SGD, Adam
and weight decay alike, which act per parameter). The model's own fusion head gets no gradient and
is unused. Task-agnostic: classification, regression (mean of the scalar outputs) and segmentation
(mean of the per-pixel logits); any number of modalities.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmbalance.common.registry import METHODS
from mmbalance.models.base import MultimodalModel, Output
from mmbalance.training.data import Batch
from mmbalance.training.method import RunContext
from mmbalance.training.method_parts import UnimodalHeadsMethod

__all__ = ["UME"]


@METHODS.register
class UME(UnimodalHeadsMethod):
    name = "ume"
    reference = "Du et al., ICML 2023 (Uni-Modal Ensemble); no official code found"

    def build(self, ctx: RunContext) -> None:
        super().build(ctx)
        self.losses: dict[str, Tensor] = {}

    def forward(self, model: MultimodalModel, batch: Batch, ctx: RunContext) -> Output:
        out = super().forward(model, batch, ctx)
        out.pred = torch.stack([out.modality_logits[m] for m in ctx.modalities]).mean(dim=0)
        return out

    def loss(self, out: Output, batch: Batch, ctx: RunContext) -> Tensor:
        self.losses = {m: ctx.task_loss(out.modality_logits[m], batch.target) for m in ctx.modalities}
        return sum(self.losses.values())

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        return {f"loss/{m}": v.item() for m, v in self.losses.items()}
