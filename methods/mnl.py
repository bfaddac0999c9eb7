"""MNL: Multimodal Negative Learning.

Reference: B. Gong, X. Gao, P. Zhu, Q. Hu, B. Cao, "Multimodal Negative Learning", NeurIPS 2025
(arXiv 2510.20877). Official code: BaoquanGong/Multimodal-Negative-Learning @ 64cea56,
``train_latefusion.py::model_forward``.

Every modality has its own classifier (logits z_m, probabilities p_m); the fused prediction is trained
with them: ``L = CE(pred) + sum_m CE(z_m)``. Per sample, j is the hardest non-target class of the
fused prediction and ``xi_m = z_m[y] - z_m[j]`` modality m's margin. Where a dominant modality d beats
a weaker w on both the margin and the true-class probability (``xi_d > xi_w`` and
``p_d[y] > p_w[y]``), w also learns from d's *non-target* distribution::

    L_{d->w} = mean_{i,c} mask_i * [ -T log p_w - w1 p_d log p_w + w1 T p_d log p_w ]   # p_d detached
             = mean_{i,c} mask_i * [ -T log p_w - w1 (1 - T) p_d log p_w ]

(mean over the B x C entries, as ``torch.mean`` in the code): its own CE plus a soft-label CE towards
the dominant modality's probabilities on the negative classes, weight ``w1`` (code default 0.7).

Generalisations and deviations: M modalities sum ``L_{d->w}`` over ordered pairs and divide by M - 1
(for M = 2 the code's two masked terms exactly, except at an exact tie, which the code gives to the
second modality and we give to nobody). The fused prediction is the model's own fusion head (the code
averages the two unimodal logits); the unimodal classifiers are ``UnimodalHeads``. Classification only
(the terms are defined on class distributions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Float
from mmbalance.models.base import MultimodalModel, Output
from mmbalance.training.data import Batch, StrictModel
from mmbalance.training.method import Method, RunContext
from mmbalance.training.method_parts import UnimodalHeads

__all__ = ["MNLParams", "MNL", "negative_learning_loss", "hardest_negative"]


class MNLParams(StrictModel):
    weight1: float = Field(0.7, ge=0)  # w1, weight of the negative-class distillation (code default)


def hardest_negative(pred: Tensor, target: Tensor) -> Tensor:
    """Index of the most probable non-target class of the fused prediction, (B,)."""
    p = pred.detach().softmax(dim=1).clone()
    p[torch.arange(len(target)), target] = -1
    return p.argmax(dim=1)


def negative_learning_loss(z_d: Tensor, z_w: Tensor, target: Tensor, j: Tensor, w1: float) -> Tensor:
    """``L_{d->w}``: the weak modality's loss on samples where d dominates it (see module docstring)."""
    i = torch.arange(len(target))
    xi_d, xi_w = z_d[i, target] - z_d[i, j], z_w[i, target] - z_w[i, j]
    p_d = z_d.detach().softmax(dim=1)
    mask = ((xi_d > xi_w) & (p_d[i, target] > z_w.softmax(dim=1)[i, target])).float().unsqueeze(1)
    T = F.one_hot(target, z_w.shape[1]).to(z_w.dtype)
    log_p_w = z_w.log_softmax(dim=1)
    return (mask * (-T * log_p_w - w1 * p_d * log_p_w + w1 * T * p_d * log_p_w)).mean()


@METHODS.register
class MNL(Method):
    name = "mnl"
    Params = MNLParams
    search_space = {
        "weight1": Float(0.1, 2.0, log=True, source="around train_latefusion.py's 0.7 (no published grid)"),
    }
    tasks = frozenset({"classification"})
    reference = "Gong et al., Multimodal Negative Learning, NeurIPS 2025"

    def build(self, ctx: RunContext) -> None:
        self.heads = UnimodalHeads(ctx.model)
        self.share: dict[str, float] = {}

    def forward(self, model: MultimodalModel, batch: Batch, ctx: RunContext) -> Output:
        out = model(batch.inputs)
        out.modality_logits.update(self.heads(model, out))
        return out

    def loss(self, out: Output, batch: Batch, ctx: RunContext) -> Tensor:
        y, mods = batch.target, ctx.modalities
        z = out.modality_logits
        loss = ctx.task_loss(out.pred, y) + sum(ctx.task_loss(z[m], y) for m in mods)
        j = hardest_negative(out.pred, y)
        nl = {}
        for w in mods:  # each weaker modality learns from every modality that dominates it
            terms = [negative_learning_loss(z[d], z[w], y, j, self.p.weight1) for d in mods if d != w]
            nl[w] = sum(terms) / len(terms)
        self.share = {w: float(v.detach()) for w, v in nl.items()}
        return loss + sum(nl.values())

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        return {f"negative_loss/{m}": v for m, v in self.share.items()}
