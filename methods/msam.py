"""M-SAM: Modality-Aware Sharpness-Aware Minimisation.

Reference: H. R. Nowdeh (Rajoli), J. Ji, X. Ma, F. Afghah, "Modality-Aware SAM: Sharpness-Aware-
Minimization Driven Gradient Modulation for Harmonized Multimodal Learning", NeurIPS 2025
(arXiv 2510.24919). What was verified, and against which source (issue 13): no official code exists
(the OpenReview page, openreview.net/forum?id=22O1ejTxj3, says "The code will be released"; no
repository of the authors is stored), and the paper's algorithm box was not available to us. The
update rule below agrees with two independent third-party restatements: the summary this file was
written from, and junaidaliop.github.io/zij/math/msammodalityawaresam/ (``m_d = argmax_m v_m``,
``L_d = v_{m_d} l``, ``L_s = sum_{m != m_d} v_m l``, ``eps = rho grad L_d / ||grad L_d||``,
``theta <- theta - eta [grad L_d(theta + eps) + grad L_s(theta) + lambda theta]``).
``tests/test_equivalence_msam.py`` runs our step next to a transcription of that rule.

Per step, with l the fused task loss and theta all trained parameters:

1. Dominant modality: Shapley values of the batch accuracy over the modalities,
   ``v(S)`` = accuracy of the model with the modalities outside S zeroed (2^M - 1 forwards, no grad,
   eval mode, AGM's convention ``v(empty) = 0``); ``d = argmax_m phi_m``.
2. Loss split: ``L_d = w_d l`` and ``L_s = (1 - w_d) l`` with ``w_m = relu(phi_m) / sum_k relu(phi_k)``.
3. SAM on the dominant part only::

       eps   = rho * grad L_d(theta) / ||grad L_d(theta)||     # = rho * g / ||g||, g = grad l(theta)
       g_adv = grad l(theta + eps)                           # a second forward/backward
       grad  = w_d * g_adv + (1 - w_d) * g                   # = grad L_d(theta+eps) + grad L_s(theta)

   then the runner's optimiser step (weight decay at theta).

Deviations / uncertain points: [UNCERTAIN] both restatements weight the loss by the raw Shapley
values (``weights: shapley``: ``grad = v_d g_adv + (sum_{m != d} v_m) g``, a step scaled by the
batch accuracy, and a negative share ascends); the default ``weights: normalised`` uses
``w_m = relu(v_m) / sum relu(v)`` instead, so the step size stays that of joint training. ``rho = 0.05`` is SAM's usual default, not a value from the paper. The masked forwards run in
eval mode (as AGM's) so they do not move batch-norm statistics. Classification and segmentation
(pixel accuracy); regression is refused (the dominance test is an accuracy).
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import torch
from pydantic import Field

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Float
from mmbalance.models.base import MultimodalModel, Output
from mmbalance.training.data import Batch, StrictModel
from mmbalance.training.method import Method, RunContext
from mmbalance.training.method_parts import accuracy, masked_inputs, shapley_values

__all__ = ["MSAMParams", "MSAM", "dominance_weights"]


class MSAMParams(StrictModel):
    rho: float = Field(0.05, gt=0)  # SAM neighbourhood radius
    # normalised: w = relu(v) / sum relu(v) (ours); shapley: the raw Shapley values, as restated.
    weights: Literal["normalised", "shapley"] = "normalised"


def dominance_weights(phi: dict[str, float]) -> dict[str, float]:
    """``w_m = relu(phi_m) / sum relu(phi)``; uniform when no modality has a positive share."""
    pos = {m: max(v, 0.0) for m, v in phi.items()}
    total = sum(pos.values())
    return {m: v / total for m, v in pos.items()} if total > 0 else {m: 1 / len(phi) for m in phi}


@METHODS.register
class MSAM(Method):
    name = "msam"
    Params = MSAMParams
    search_space = {
        "rho": Float(
            0.01, 0.5, log=True, source="SAM's grid {0.01 ... 0.5} (Foret et al., ICLR 2021); no M-SAM grid"
        ),
    }
    tasks = frozenset({"classification", "segmentation"})
    reference = "Nowdeh et al., Modality-Aware SAM, NeurIPS 2025 (arXiv 2510.24919)"

    def build(self, ctx: RunContext) -> None:
        self.phi: dict[str, float] = {}
        self.w: dict[str, float] = {}

    @torch.no_grad()
    def accuracy_shapley(
        self, model: MultimodalModel, batch: Batch, modalities: list[str]
    ) -> dict[str, float]:
        was_training = model.training
        model.eval()
        value = {}
        for size in range(1, len(modalities) + 1):
            for s in itertools.combinations(modalities, size):
                s = frozenset(s)
                value[s] = accuracy(model(masked_inputs(batch.inputs, s)).pred, batch.target)
        model.train(was_training)
        return shapley_values(value, modalities)

    def after_backward(self, model: MultimodalModel, out: Output, batch: Batch, ctx: RunContext) -> None:
        self.phi = self.accuracy_shapley(model, batch, ctx.modalities)
        self.w = dominance_weights(self.phi) if self.p.weights == "normalised" else dict(self.phi)
        w_d = self.w[max(self.phi, key=self.phi.get)]
        w_s = sum(self.w.values()) - w_d  # 1 - w_d when normalised
        params = [p for group in ctx.optimizer.param_groups for p in group["params"] if p.grad is not None]
        g = [p.grad.clone() for p in params]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in g]))
        eps = [self.p.rho * math.copysign(1.0, w_d) * x / (norm + 1e-12) for x in g]  # along grad L_d = w_d g
        with torch.no_grad():
            for p, e in zip(params, eps, strict=True):
                p.add_(e)
        for p in params:
            p.grad = None
        with torch.enable_grad():
            ctx.task_loss(self.forward(model, batch, ctx).pred, batch.target).backward()
        with torch.no_grad():
            for p, e, g0 in zip(params, eps, g, strict=True):
                p.sub_(e)
                g_adv = p.grad if p.grad is not None else torch.zeros_like(g0)
                p.grad = w_d * g_adv + w_s * g0

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        return {
            **{f"shapley_acc/{m}": v for m, v in self.phi.items()},
            **{f"weight/{m}": v for m, v in self.w.items()},
        }
