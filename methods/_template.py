"""TEMPLATE (copy to ``methods/<name>.py``; every line marked TEMPLATE is yours to replace).

This file is the method contract in one place, and runs: ``tests/test_template_method.py`` trains it
and resumes it, and the matrix (``make test-slow``) runs it on every dataset. Its file name starts with
an underscore, so ``mmbalance methods`` does not list it. The guide is ``CONTRIBUTING.md``.

TEMPLATE: the paper and its official code, then the algorithm in the paper's symbols, then where this
file follows the code, where it generalises and where code and paper disagree (follow the code). Here:

Reference: the multi-task baseline of Gradient-Blending (W. Wang, D. Tran, M. Feiszli, "What Makes
Training Multi-modal Classification Networks Hard?", CVPR 2020, Sec. 3: "uni-modal losses added to the
multi-modal one"); no official code. Per step::

    z_m  = head_m(f_m)                                  # one classifier per modality (UnimodalHeads)
    L    = task_loss(pred, y) + lambda * sum_m task_loss(z_m, y)
    ema_m <- beta * ema_m + (1 - beta) * task_loss(z_m, y)   # logged, and kept for exact resume

Task-agnostic (classification, regression, segmentation), any number of modalities, any fusion.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field
from torch import Tensor

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Float
from mmbalance.models.base import MultimodalModel, Output
from mmbalance.training.data import Batch, StrictModel
from mmbalance.training.method import Method, RunContext
from mmbalance.training.method_parts import UnimodalHeads

__all__ = ["TemplateParams", "Template", "auxiliary_loss"]


class TemplateParams(StrictModel):  # TEMPLATE: the paper's hyper-parameters, official defaults, sources
    lam: float = Field(1.0, ge=0)  # weight of the uni-modal losses (the paper adds them unweighted)
    beta: float = Field(0.9, ge=0, lt=1)  # smoothing of the logged uni-modal losses


def auxiliary_loss(fused: Tensor, unimodal: Sequence[Tensor], lam: float) -> Tensor:
    """``L = L_fused + lambda * sum_m L_m`` from the loss values (a formula: unit-tested by hand)."""
    return fused + lam * sum(unimodal)


@METHODS.register
class Template(Method):
    name = "template"  # TEMPLATE: the method's public name (a literal: the registry reads it unimported)
    Params = TemplateParams
    reference = "Template for contributors (Gradient-Blending's multi-task baseline, CVPR 2020)"
    search_space = {"lam": Float(0.1, 4.0, log=True, source="TEMPLATE: the paper's grid or the code's range")}
    # Plain running state that exact resume restores; the heads (a module) are saved without a list.
    state_attrs = ("ema",)

    def build(self, ctx: RunContext) -> None:
        # Own modules, before the optimiser exists: the runner trains, moves and checkpoints them.
        self.heads = UnimodalHeads(ctx.model)
        self.ema = torch.zeros(len(ctx.modalities))

    def forward(self, model: MultimodalModel, batch: Batch, ctx: RunContext) -> Output:
        out = model(batch.inputs)
        out.modality_logits.update(self.heads(model, out))
        return out

    def loss(self, out: Output, batch: Batch, ctx: RunContext) -> Tensor:
        uni = [ctx.task_loss(out.modality_logits[m], batch.target) for m in ctx.modalities]
        if ctx.training:
            with torch.no_grad():
                self.ema = torch.lerp(torch.stack(uni).detach().float().cpu(), self.ema, self.p.beta)
        return auxiliary_loss(ctx.task_loss(out.pred, batch.target), uni, self.p.lam)

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        return {f"loss_ema/{m}": v for m, v in zip(ctx.modalities, self.ema.tolist(), strict=True)}
