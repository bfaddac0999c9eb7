"""DGL: disentangled gradient learning (the multimodal loss trains only the fusion head, the
unimodal losses train the encoders).

Reference: "Boosting Multimodal Learning via Disentangled Gradient Learning", ICCV 2025
(arXiv 2507.10213; the repository README). Official code: shicaiwei123/ICCV2025-GDL @ b72a55f,
``main_dgl.py::train_epoch`` (lines 97-154) with ``models/basic_model.py::AVClassifier_DGL``
(line 84) and ``models/fusion_modules.py::ConcatFusion_DGL`` (lines 45-59); the paper notes the best
alpha depends on the software stack (README).

Per training step (the released code)::

    out   = fc_out(cat(a, v).detach())                    # fusion_modules.py:53-56: the fused logits
    out_a = fc_out(cat(a, 0));  out_v = fc_out(cat(0, v))  # fusion_modules.py:57-58: the SAME head,
                                                          #   the other modality zeroed
    (alpha * (CE(out_a, y) + CE(out_v, y))).backward()    # main_dgl.py:108-110
    fusion-module grads <- None                           # main_dgl.py:114-119: the head keeps no
                                                          #   unimodal gradient
    CE(out, y).backward()                                 # main_dgl.py:122
    clip_grad_norm_(40); step                             # main_dgl.py:129, 154

so each encoder is trained by alpha times its own unimodal loss only (the fused loss never reaches
it, ``.detach()``), and the head by the fused loss only. Here the unimodal logits go through the
head with its parameters detached (``torch.func.functional_call``): the same gradients in one
backward pass instead of two, with no gradient to clear.

Defaults: ``alpha`` 4.0 (``main_dgl.py:50``); the released runs use alpha 4 and 5 on CREMA-D
(``cramed_dgl.sh``, 77.48 / 78.12 noted beside them) and 2 or 3 on Kinetics-Sounds
(``ks_dgl.sh``). The released loop clips the gradient norm at 40: set ``optim.clip_grad_norm: 40``
to match (the runner clips after every method's hook).

Generalises the released code to **M modalities** (out_m: every other modality zeroed; the
unimodal losses are summed) and to **every task kind** (the task loss replaces CE; a segmentation
head is applied per pixel). It needs a fusion that concatenates the modality features
(``ConcatFusion``): zeroing a modality's slice of the concatenation is what the code does; a
fusion transformer has no such slice, so those models are refused (``model_params: {fusion:
concat}`` gives the late-fusion variant of the MOSI/IEMOCAP/Food-101 models).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor
from torch.func import functional_call

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Float
from mmbalance.models.base import MultimodalModel, Output
from mmbalance.training.data import Batch, StrictModel
from mmbalance.training.method import Method, RunContext
from mmbalance.training.method_parts import require_concat_fusion

__all__ = ["DGLParams", "DGL", "zero_padded_logits"]


class DGLParams(StrictModel):
    alpha: float = Field(4.0, gt=0)  # weight of the unimodal losses (main_dgl.py:50; runs: 2-5)


def zero_padded_logits(model: MultimodalModel, features: dict[str, Tensor]) -> dict[str, Tensor]:
    """``head(fusion({m: f_m, others: 0}))`` per modality, through a detached copy of the head's
    parameters (fusion_modules.py:57-58): gradients reach the features, not the head."""
    frozen = {k: v.detach() for k, v in model.head.named_parameters()}
    frozen |= dict(model.head.named_buffers())
    out = {}
    for m, f in features.items():
        padded = {k: f if k == m else torch.zeros_like(x) for k, x in features.items()}
        out[m] = functional_call(model.head, frozen, (model.fusion(padded),))
    return out


@METHODS.register
class DGL(Method):
    name = "dgl"
    Params = DGLParams
    search_space = {
        "alpha": Float(0.5, 8.0, log=True, source="main_dgl.py 4; cramed_dgl.sh 4, 5; ks_dgl.sh 2, 3"),
    }
    reference = (
        "Disentangled Gradient Learning, ICCV 2025; shicaiwei123/ICCV2025-GDL main_dgl.py, fusion_modules.py"
    )

    def build(self, ctx: RunContext) -> None:
        why = "zeroes the other modalities' slices of a concatenation before the head (ConcatFusion_DGL)"
        require_concat_fusion(ctx.model, "dgl", why=why)

    def forward(self, model: MultimodalModel, batch: Batch, ctx: RunContext) -> Output:
        out = model(batch.inputs)
        if not ctx.training:
            return out
        # The fused logits from detached features (fusion_modules.py:54): only the head learns from them.
        fused = model.fusion({m: f.detach() for m, f in out.features.items()})
        out = Output(model.head(fused), out.features, fused, out.aux)
        out.modality_logits.update(zero_padded_logits(model, out.features))
        return out

    def loss(self, out: Output, batch: Batch, ctx: RunContext) -> Tensor:
        uni = sum(ctx.task_loss(out.modality_logits[m], batch.target) for m in ctx.modalities)
        return ctx.task_loss(out.pred, batch.target) + self.p.alpha * uni
