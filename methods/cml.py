"""CML: calibrating multimodal learning. Removing a modality must not make the model more confident.

Reference: H. Ma, Q. Zhang, C. Zhang, B. Wu, H. Fu, J. T. Zhou, Q. Hu, "Calibrating Multimodal
Learning", ICML 2023. The official code was not read (not in the stored sources); this file follows
BalanceBenchmark's re-implementation (GeWu-Lab/BalanceBenchmark @ 4c1482f,
``balancemm/trainer/CML_trainer.py``; ``configs/trainer_config.yaml``: ``lam: 0.1``).

With a late concat fusion and a linear head, dropping modality m from the prediction removes its
additive share ``W_m f_m`` (the bias stays). Each epoch draws a random removal order; per step the
modalities are removed one by one, S_0 = all > S_1 > ... > S_{M-1}::

    z_j   = logits with the modalities of S_j only
    conf  = max_c softmax(z)                                          # per sample
    loss  = (1 / M) sum_{j<M} task_loss(z_j, y) + lam sum_{j>=1} max(0, sum_i conf_j[i] - conf_{j-1}[i])

The hinge is on the batch sum (as BalanceBenchmark; the paper writes it per sample). The removal
order is drawn from the global torch RNG, so a resumed run repeats it. Generalisations: any number
of modalities (the trainer hard-codes 2 or 3 with ``bias / M`` corrections), segmentation (the
confidence is per pixel, summed). Regression is refused: a regression output has no confidence.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Float
from mmbalance.models.base import MultimodalModel, Output
from mmbalance.training.data import Batch, StrictModel
from mmbalance.training.method import Method, RunContext
from mmbalance.training.method_parts import LINEAR, require_concat_fusion

__all__ = ["CMLParams", "CML", "confidence_penalty"]


class CMLParams(StrictModel):
    lam: float = Field(0.1, ge=0)  # weight of the confidence penalty (BalanceBenchmark default)


def confidence_penalty(fewer: Tensor, more: Tensor) -> Tensor:
    """``max(0, sum_i conf(fewer)_i - conf(more)_i)``, conf = max softmax probability (per pixel too)."""
    return torch.relu((fewer.softmax(dim=1).amax(dim=1) - more.softmax(dim=1).amax(dim=1)).sum())


@METHODS.register
class CML(Method):
    name = "cml"
    Params = CMLParams
    search_space = {
        "lam": Float(0.01, 1.0, log=True, source="around BalanceBenchmark's 0.1 (no published grid)"),
    }
    tasks = frozenset({"classification", "segmentation"})
    reference = "Ma et al., ICML 2023 (CML); as BalanceBenchmark CML_trainer.py"
    unsupported = "cml penalises prediction confidence; a regression output has no confidence"

    def build(self, ctx: RunContext) -> None:
        require_concat_fusion(ctx.model, "cml", LINEAR)  # removing a modality = subtracting its share
        self.modalities = list(ctx.modalities)
        self.order = list(self.modalities)
        self.penalty = torch.zeros(())

    def on_epoch_start(self, ctx: RunContext) -> None:
        self.order = [self.modalities[i] for i in torch.randperm(len(self.modalities)).tolist()]

    def forward(self, model: MultimodalModel, batch: Batch, ctx: RunContext) -> Output:
        out = model(batch.inputs)
        if ctx.training:
            out.aux.update({f"share/{m}": z for m, z in model.unimodal_logits(out.features).items()})
        return out

    def loss(self, out: Output, batch: Batch, ctx: RunContext) -> Tensor:
        if not ctx.training:
            return ctx.task_loss(out.pred, batch.target)
        z, losses, penalty = out.pred, [ctx.task_loss(out.pred, batch.target)], 0
        b = ctx.model.head.bias
        # a share carries b / M; removing W_m f_m keeps the whole bias, as the trainer's "+ bias / M"
        bias = 0 if b is None else b.view(1, -1, *[1] * (z.dim() - 2)) / len(self.modalities)
        for m in self.order[:-1]:  # remove one modality at a time; the last one stays
            fewer = z - out.aux[f"share/{m}"] + bias
            losses.append(ctx.task_loss(fewer, batch.target))
            penalty = penalty + confidence_penalty(fewer, z)
            z = fewer
        self.penalty = penalty.detach()
        return sum(losses) / len(self.modalities) + self.p.lam * penalty

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        return {"penalty": float(self.penalty)}
