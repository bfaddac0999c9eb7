"""MMPareto: Pareto-integrated multimodal and unimodal gradients for each encoder.

Reference: Y. Wei, D. Hu, "MMPareto: Boosting Multimodal Learning with Innocent Unimodal Assistance",
ICML 2024. Official code: GeWu-Lab/MMPareto_ICML2024 @ cc923ec, ``code/MMPareto.py::train_epoch``,
``code/min_norm_solvers.py``.

Every modality m has a unimodal head; encoder m serves two tasks, the multimodal loss L_mm and its
own unimodal loss L_m. Per training step::

    g_mm, g_m = grad of L_mm and of L_m w.r.t. encoder m (flattened over the encoder)
    (k_mm, k_m) = (1/2, 1/2)                      if cos(g_mm, g_m) > 0
                = min-norm point of [g_mm, g_m]    otherwise (MGDA, two tasks)
    loss = L_mm + sum_m L_m ; backward             # heads and fusion keep these summed gradients
    for every parameter tensor p of encoder m:
        g_new = 2 k_mm g_mm[p] + 2 k_m g_m[p]
        p.grad = gamma * max(1, |p.grad| / |g_new|) * g_new        # rescaled up to the summed-loss norm

Follows the official code (per-tensor rescaling, the 0.999/0.001 end clamps of ``MinNormSolver``,
``gamma = 1.5``) with the encoders picked by structure (``model.encoder_parameters(m)``) instead of
``'audio'``/``'visual'`` name matching. Generalisations: **M modalities** (each encoder still has
exactly two tasks, so the rule applies per encoder unchanged; M + 1 gradient passes per step);
**regression and segmentation** use the task loss for L_mm and L_m (the code's CE). The unimodal
heads are the model's ``unimodal_classifier`` (two layers on our models; the code's are one Linear).
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
from mmbalance.training.method import RunContext
from mmbalance.training.method_parts import UnimodalHeadsMethod, flat, min_norm_2

__all__ = ["MMParetoParams", "MMPareto", "pareto_weights", "pareto_grad"]


class MMParetoParams(StrictModel):
    gamma: float = Field(1.5, gt=0)  # hard-coded in MMPareto.py ("alpha: 1.5" in BalanceBenchmark)


def pareto_weights(g_mm: Tensor, g_uni: Tensor) -> tuple[float, float, float]:
    """``(k_mm, k_uni, cos)`` for one encoder from its flat multimodal and unimodal gradients."""
    cos = F.cosine_similarity(g_mm, g_uni, dim=0).item()
    if cos > 0:
        return 0.5, 0.5, cos
    k_mm, k_uni = min_norm_2(g_mm, g_uni)
    return k_mm, k_uni, cos


def pareto_grad(
    g_sum: Tensor, g_mm: Tensor, g_uni: Tensor, k_mm: float, k_uni: float, gamma: float
) -> Tensor:
    """The new gradient of one parameter tensor: ``gamma * max(1, |g_sum| / |g_new|) * g_new``."""
    g_new = 2 * k_mm * g_mm + 2 * k_uni * g_uni
    diff = g_sum.norm() / g_new.norm()
    return torch.where(diff > 1, diff, torch.ones_like(diff)) * g_new * gamma


@METHODS.register
class MMPareto(UnimodalHeadsMethod):
    name = "mmpareto"
    Params = MMParetoParams
    search_space = {
        "gamma": Float(
            1.0, 2.5, source="MMPareto.py 1.5 (hard-coded), kkontras/MLB MMPareto.json 1.25; no grid"
        ),
    }
    reference = "Wei & Hu, ICML 2024 (MMPareto); GeWu-Lab/MMPareto_ICML2024 code/MMPareto.py"

    def build(self, ctx: RunContext) -> None:
        super().build(ctx)
        self.params = {m: ctx.model.encoder_parameters(m) for m in ctx.modalities}
        self.k: dict[str, tuple[float, float, float]] = {}

    def loss(self, out: Output, batch: Batch, ctx: RunContext) -> Tensor:
        loss_mm = ctx.task_loss(out.pred, batch.target)
        loss_uni = {m: ctx.task_loss(out.modality_logits[m], batch.target) for m in ctx.modalities}
        if ctx.training:  # the per-task encoder gradients, before the runner's backward of the sum
            self.g_mm, self.g_uni = {}, {}
            for m, params in self.params.items():
                self.g_mm[m] = torch.autograd.grad(loss_mm, params, retain_graph=True, allow_unused=True)
                self.g_uni[m] = torch.autograd.grad(loss_uni[m], params, retain_graph=True, allow_unused=True)
                self.k[m] = pareto_weights(flat(self.g_mm[m], params), flat(self.g_uni[m], params))
        return loss_mm + sum(loss_uni.values())

    @torch.no_grad()
    def after_backward(self, model: MultimodalModel, out: Output, batch: Batch, ctx: RunContext) -> None:
        for m, params in self.params.items():
            k_mm, k_uni, _ = self.k[m]
            for p, g_mm, g_uni in zip(params, self.g_mm[m], self.g_uni[m], strict=True):
                if p.grad is None or g_mm is None or g_uni is None:
                    continue  # a tensor outside one of the two graphs keeps its summed gradient
                p.grad = pareto_grad(p.grad, g_mm, g_uni, k_mm, k_uni, self.p.gamma)
        self.g_mm = self.g_uni = {}

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        out = {}
        for m, (k_mm, _, cos) in self.k.items():
            out[f"k_mm/{m}"], out[f"cos/{m}"] = k_mm, cos
        return out
