"""MLB: multi-loss balanced training (unimodal losses plus a gradient boost for the weaker
modality and a damping for the stronger one).

Reference: K. Kontras et al., "Improving Multimodal Learning with Multi-Loss Gradient Modulation",
BMVC 2024 (README.md). Official code: kkontras/MLB @ 357b5ce,
``agents/general_agent/helpers/Bias_Infusion.py`` (``Bias_Infusion_MLB`` lines 298-407, 3
modalities ``Bias_Infusion_MLB_3d`` 409-513, regression ``Bias_Infusion_MLB_3d_Reg`` 515-619),
loss in ``agents/general_agent/helpers/Trainer.py:222-236``, config ``configs/CREMA_D/res/MLB.json``.

Per training step::

    loss = L(fused) + sum_m L(h_m(f_m))               # Trainer.py:228-232, weights {combined, c, g} = 1
    backward
    s_m  = mean_i softmax(h_m(f_m))[i, y_i]           # Bias_Infusion.py:336-337 (a MEAN over the batch)
         = L_MSE(h_m(f_m), y)                         #   regression (MLB_3d_Reg, 558-560)
    r_m  = mean_{k != m} s_k / s_m                    # 340-341, 3 modalities 456-458
         = s_m / mean_{k != m} s_k                    #   regression: a larger error is weaker (562-564)
    c_m  = 1 + tanh(alpha * (r_m - 1))                # 343-344; tanh_mode 2 (346-353):
         = 1 + (beta - 1) tanh(alpha (r_m - 1)) if r_m > 1
    in epochs starting_epoch..ending_epoch (inclusive, 401):
        grad(encoder_m, h_m, fused-head weight slice of m) *= c_m          # 403-407

The weaker modality (r_m > 1) gets its gradients amplified up to 2x (or beta x), the stronger one
damped down to 0. ``h_m`` is each encoder's own linear classifier in the code (``enc_0`` carries
it, so its gradient is scaled with the encoder, 403-406); here it is ``UnimodalHeads`` (the
model's ``unimodal_classifier``: one Linear as the code's, ``OGM_Model.py:229``, with the audio-visual
ResNet model's ``unimodal_head: linear``; two layers otherwise), scaled with the encoder. The "fused-head weight slice"
(``fc_0_lin.weight``, one Linear per modality summed into the fused logits, OGM_Model.py:1039-1043)
is the modality's columns of a late concat-fusion linear head here; a model with another fusion
has no such slice and only its encoders and unimodal heads are scaled.

Defaults: ``alpha`` 0.8, epochs 0..1500, plain tanh (MLB.json for CREMA-D and AVE, the ViT runs
too). Generalises to **M modalities** exactly as the code's 3-modality version (ratio to the mean
of the others), and to all **three task kinds**: classification and segmentation (per-pixel
true-class probability, averaged) score by probability, regression by MSE as the code's
``_Reg`` variant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Float
from mmbalance.models.base import MultimodalModel, Output
from mmbalance.training.data import Batch, StrictModel
from mmbalance.training.method import RunContext
from mmbalance.training.method_parts import UnimodalHeadsMethod, concat_linear

__all__ = ["MLBParams", "MLB", "mlb_scores", "mlb_coefficients"]


class MLBParams(StrictModel):
    alpha: float = Field(0.8, gt=0)  # MLB.json (CREMA-D, AVE, ViT)
    starting_epoch: int = Field(0, ge=0)  # first modulated epoch (inclusive)
    ending_epoch: int = Field(1500, ge=0)  # last modulated epoch (inclusive)
    tanh_mode: Literal[1, 2] = 1  # 2: the boost of the weaker modality tops out at beta instead of 2
    tanh_mode_beta: float = Field(2.0, gt=0)  # only for tanh_mode 2 (no default in the code)

    @model_validator(mode="after")
    def _window(self) -> MLBParams:
        if self.ending_epoch < self.starting_epoch:
            raise ValueError(f"ending_epoch ({self.ending_epoch}) < starting_epoch ({self.starting_epoch})")
        return self


def mlb_scores(logits: Sequence[Tensor], target: Tensor, kind: str) -> list[float]:
    """Per modality: the batch mean of the true-class probability (classification: (B, C) and
    (B,); segmentation: (B, C, H, W) and (B, H, W), averaged over pixels too), or the MSE
    (regression)."""
    if kind == "regression":
        scores = [nn.functional.mse_loss(z.reshape(target.shape), target) for z in logits]
    else:
        scores = [z.softmax(dim=1).gather(1, target.unsqueeze(1)).mean() for z in logits]
    return torch.stack(scores).tolist()


def mlb_coefficients(
    scores: Sequence[float], alpha: float, error: bool = False, beta: float | None = None
) -> tuple[list[float], list[float]]:
    """``(ratio, coeff)`` per modality: ``r_m = mean_{k != m} s_k / s_m`` (``error``: the inverse,
    for MSE scores) and ``c_m = 1 + tanh(alpha (r_m - 1))``; with ``beta`` (tanh_mode 2) the
    factor of tanh is ``beta - 1`` where ``r_m > 1``."""
    m, total = len(scores), sum(scores)
    others = [(total - s) / (m - 1) for s in scores]
    ratio = [s / o if error else o / s for s, o in zip(scores, others, strict=True)]
    coeff = []
    for r in ratio:
        t = math.tanh(alpha * (r - 1))
        coeff.append(1 + (beta - 1) * t if beta is not None and r > 1 else 1 + t)
    return ratio, coeff


@METHODS.register
class MLB(UnimodalHeadsMethod):
    name = "mlb"
    Params = MLBParams
    search_space = {
        "alpha": Float(0.1, 3.0, log=True, source="around MLB.json's 0.8 (CREMA-D, AVE; no published grid)"),
    }
    reference = "Kontras et al., BMVC 2024 (MLB); kkontras/MLB agents/general_agent/helpers/Bias_Infusion.py"

    def build(self, ctx: RunContext) -> None:
        super().build(ctx)
        model = ctx.model
        self.kind = ctx.task.kind
        self.ratio = self.coeff = [1.0] * len(ctx.modalities)
        # per modality: encoder + its unimodal head
        self.groups = [
            model.encoder_parameters(m) + list(self.heads.heads[m].parameters()) for m in ctx.modalities
        ]
        # per modality: its columns of the fused head's weight (None: no such columns, not a concat + linear head)
        columns = model.head_columns() if concat_linear(model) else {}
        self.columns = [columns.get(m) for m in ctx.modalities]

    def loss(self, out: Output, batch: Batch, ctx: RunContext) -> Tensor:
        uni = sum(ctx.task_loss(out.modality_logits[m], batch.target) for m in ctx.modalities)
        return ctx.task_loss(out.pred, batch.target) + uni

    @torch.no_grad()
    def after_backward(self, model: MultimodalModel, out: Output, batch: Batch, ctx: RunContext) -> None:
        logits = [out.modality_logits[m].detach() for m in ctx.modalities]
        scores = mlb_scores(logits, batch.target, self.kind)
        beta = self.p.tanh_mode_beta if self.p.tanh_mode == 2 else None
        self.ratio, self.coeff = mlb_coefficients(scores, self.p.alpha, self.kind == "regression", beta)
        if not self.p.starting_epoch <= ctx.epoch <= self.p.ending_epoch:
            return
        for params, cols, c in zip(self.groups, self.columns, self.coeff, strict=True):
            torch._foreach_mul_([p.grad for p in params if p.grad is not None], c)
            if cols is not None and model.head.weight.grad is not None:
                model.head.weight.grad[:, cols] *= c

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        out = {f"ratio/{m}": r for m, r in zip(ctx.modalities, self.ratio, strict=True)}
        return out | {f"coeff/{m}": c for m, c in zip(ctx.modalities, self.coeff, strict=True)}
