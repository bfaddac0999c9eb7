"""DI-MML: detached multimodal learning; each encoder is trained on its own (own classifier, a
classifier shared by all modalities, a contrastive term on the dimensions only one modality
finds discriminative), then a fusion classifier is trained on the frozen features.

Reference: Fan et al., "Detached and Interactive Multimodal Learning", ACM MM 2024. Official code: fanyunfeng-bit/DI-MML @ 83b9b7a: stage 1 ``main_CFT.py``
(``train_epoch`` lines 54-105, ``get_indices`` 154-210, ``main`` 214-330), the contrastive loss
``loss/contrast_loss.py::SupConLoss`` (lines 4-36), stage 2 ``main_CFT_stage2.py``
(``train_combine_classifier_epoch`` 57-122); run commands in ``README.md``.

Stage 1 (``stage1_epochs``; main_CFT.py:71-98), per step::

    loss = sum_m CE(h_m(f_m), y) + w sum_m CE(g(f_m), y) + [epoch >= 20] L_c       # line 95
        h_m: modality m's own classifier; g: one Linear shared by all modalities (line 85-89, 239)
    L_c  = mean_i -log( exp(f_v[i, A] . f_a[i, A].detach() / T) / sum_j exp(f_v[i, A] . f_a[j, A].detach() / T) )
         + the same with a and v swapped on the dimensions V                        # contrast_loss.py:20-34
    A (V): the feature dimensions discriminative for audio (visual) only, chosen once at epoch 20
           (main_CFT.py:302-304) on the train split, models in eval mode (get_indices 154-210):
        class means mu_m[c]; hit_m[i, d] = [argmin_c |f_m[i, d] - mu_m[c, d]| == y_i]
        top_m = {d : mean_i hit_m[i, d] > mean_{i, d} hit_m};  A = top_a - top_v;  V = top_v - top_a

Stage 2 (the remaining epochs; main_CFT_stage2.py:84-120): encoders frozen (eval mode, no
gradient), only the fusion classifier is trained: ``CE(head([f_a; f_v]), y)``, by a fresh optimiser
(SGD lr ``stage2_lr`` 1e-3, momentum 0.9, weight decay 1e-4, StepLR 70 / 0.1; lines 284-286), not the
stage-1 one. Best-epoch selection only looks at stage-2 epochs.

Prediction (``valid_combine_classifier``, main_CFT_stage2.py:176-186), a confidence-weighted mix of
the stage-1 unimodal classifiers and the fusion classifier, per sample::

    o = (h_a(f_a), h_v(f_v), head([f_a; f_v]))
    w = softmax_k( max_c softmax(o_k)_c / T2 )              # T2: ``stage2_temperature``
    pred = sum_k w_k o_k

Defaults: stage 1 150 epochs (main_CFT.py:27), stage 2 20 (stage2 argparse), w = 1
(``--weight``), contrast from epoch 20, temperature 1 (argparse; the README runs use 50 on
CREMA-D and ModelNet, 10 on AVE and UCF), stage-2 temperature 1 (argparse; README stage-2 runs: 1
on CREMA-D and UCF, 3 on AVE and ModelNet), SGD lr 1e-3, batch 16.

Where this file generalises:

- **One run** instead of two scripts: the stage-2 fusion classifier is the model's own head,
  trained from its initial weights after stage 1 (the code trains a fresh ``fusion_module``).
- **M modalities**: a modality's "only" dimensions are its top dimensions that no other modality
  has among its top ones; every other modality is pulled towards it on them (M = 2: the code); the
  prediction mixes the M unimodal classifiers and the fusion one.
- ``h_m`` are ``UnimodalHeads`` (the code's one Linear, main_CFT.py ``AClassifier``: the audio-visual
  ResNet model's ``unimodal_head: linear``; two layers on the other models); ``g`` needs equal
  feature sizes.
- Evaluation in stage-1 epochs uses the same mix (the fusion classifier untrained); they are never selected.
- **Classification only**: the dimension selection uses class means and labels. The stage-2
  classifier reads the concatenated features, so fusions other than concat are refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Epochs, Float
from mmbalance.models.base import MultimodalModel, Output
from mmbalance.training.data import Batch, StrictModel
from mmbalance.training.method import MethodNotApplicable, RunContext
from mmbalance.training.method_parts import (
    UnimodalHeadsMethod,
    common_feature_dim,
    num_outputs,
    require_concat_fusion,
)

__all__ = ["DIMMLParams", "DIMML", "discriminative_dims", "confidence_mix", "contrast_loss"]

STAGE2_LR_STEP, STAGE2_LR_GAMMA = 70, 0.1  # the stage-2 StepLR (main_CFT_stage2.py:286)


class DIMMLParams(StrictModel):
    stage1_epochs: int = Field(150, ge=1)  # detached unimodal training (main_CFT.py:27); then the fusion head
    weight: float = Field(1.0, ge=0)  # w, the shared classifier's losses (main_CFT.py:44)
    temperature: float = Field(1.0, gt=0)  # T (argparse; README runs: 50 CREMA-D/ModelNet, 10 AVE/UCF)
    contrast_epoch: int = Field(
        20, ge=0
    )  # dimensions chosen and L_c on from this epoch (main_CFT.py:93, 302)
    # T2 of the prediction's confidence weights (main_CFT_stage2.py:48, 184; README stage-2 runs: 1 or 3)
    stage2_temperature: float = Field(1.0, gt=0)
    stage2_lr: float = Field(1e-3, gt=0)  # the stage-2 optimiser's (main_CFT_stage2.py:33, 284)

    @model_validator(mode="after")
    def _order(self) -> DIMMLParams:
        if self.contrast_epoch >= self.stage1_epochs:
            raise ValueError(
                f"contrast_epoch ({self.contrast_epoch}) must fall in stage 1 (stage1_epochs {self.stage1_epochs})"
            )
        return self


def discriminative_dims(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """(N, D) features -> bool (D,): dimensions whose nearest class mean is the true class more often
    than average (main_CFT.py:167-204)."""
    counts = torch.bincount(labels, minlength=num_classes).float()
    means = torch.zeros(num_classes, features.shape[1]).index_add_(0, labels, features) / counts[:, None]
    nearest = (features[:, None, :] - means[None]).abs().argmin(dim=1)  # (N, D)
    hit = (nearest == labels[:, None]).float()
    return hit.mean(0) > hit.mean()


def confidence_mix(logits: list[Tensor], temperature: float) -> Tensor:
    """``sum_k w_k o_k`` with ``w = softmax_k(max_c softmax(o_k)_c / T)`` per sample
    (main_CFT_stage2.py:180-186)."""
    confidence = torch.stack([z.softmax(dim=1).amax(dim=1) for z in logits])  # (K, B)
    w = (confidence / temperature).softmax(dim=0)
    return sum(w_k[:, None] * z for w_k, z in zip(w, logits, strict=True))


def contrast_loss(anchor: Tensor, other: Tensor, dims: Tensor, temperature: float) -> Tensor:
    """``mean_i -log softmax_j(other[i, dims] . anchor[j, dims].detach() / T)[i]`` (contrast_loss.py:20-31)."""
    logits = other[:, dims] @ anchor[:, dims].detach().T / temperature
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


@METHODS.register
class DIMML(UnimodalHeadsMethod):
    name = "di_mml"
    Params = DIMMLParams
    # The validator wants contrast_epoch < stage1_epochs: the two ranges are disjoint, so every sample is
    # valid in runs of 3 epochs or more.
    search_space = {
        "stage1_epochs": Epochs(0.5, 0.85, minimum=2, source="main_CFT.py: 150 + 20 epochs; suite 6 of 12"),
        "contrast_epoch": Epochs(0.0, 0.35, source="main_CFT.py: from epoch 20 of 170; suite 3 of 12"),
        "weight": Float(0.25, 4.0, log=True, source="around --weight 1 (no published grid)"),
        "temperature": Float(
            1.0, 50.0, log=True, source="argparse 1; README runs 10 (AVE, UCF), 50 (CREMA-D)"
        ),
        "stage2_temperature": Float(
            0.5, 5.0, log=True, source="stage-2 argparse 1; README runs 1 (CREMA-D, UCF), 3 (AVE, ModelNet)"
        ),
        # the stage-2 optimiser is the method's own, so the shared optim.lr dimension does not reach it
        "stage2_lr": Float(1e-4, 1e-1, log=True, source="main_CFT_stage2.py:33 lr 1e-3 (no published grid)"),
    }
    tasks = frozenset({"classification"})
    reference = "Fan et al., ACM MM 2024 (DI-MML); fanyunfeng-bit/DI-MML main_CFT.py, main_CFT_stage2.py"

    state_attrs = ("only",)

    def build(self, ctx: RunContext) -> None:
        super().build(ctx)
        model = ctx.model
        self.shared = nn.Linear(common_feature_dim(model, "di_mml"), num_outputs(model))
        require_concat_fusion(model, "di_mml")  # the stage-2 classifier reads the concatenated features
        if (
            ctx.epochs <= self.p.stage1_epochs
        ):  # else the fusion head is never trained (mfeat at 8 epochs: 16%)
            raise MethodNotApplicable(
                f"di_mml: stage1_epochs ({self.p.stage1_epochs}) leaves no stage-2 epoch in a run of "
                f"{ctx.epochs} epochs; set method_params.stage1_epochs below {ctx.epochs}"
            )
        self.num_classes = ctx.task.num_classes
        self.only: dict[str, Tensor] | None = None  # each modality's "only" dimensions (bool masks)
        # main_CFT_stage2.py:284-286: a fresh optimiser for the fusion classifier (holds no state until stage 2)
        self.stage2_optimizer = torch.optim.SGD(
            model.head.parameters(), lr=self.p.stage2_lr, momentum=0.9, weight_decay=1e-4
        )

    def selectable(self, epoch: int) -> bool:
        return epoch >= self.p.stage1_epochs

    def on_epoch_start(self, ctx: RunContext) -> None:
        if ctx.epoch >= self.p.contrast_epoch and self.only is None:
            self.only = self.choose_dims(ctx)

    @torch.no_grad()
    def choose_dims(self, ctx: RunContext) -> dict[str, Tensor]:
        model = ctx.model
        model.eval()  # main_CFT.py:166-167
        feats: dict[str, list[Tensor]] = {m: [] for m in ctx.modalities}
        labels = []
        for batch in ctx.iterate("train"):
            for m, f in model(batch.inputs).features.items():
                feats[m].append(f.float().cpu())
            labels.append(batch.target.cpu())
        model.train()
        y = torch.cat(labels)
        top = {m: discriminative_dims(torch.cat(feats[m]), y, self.num_classes) for m in ctx.modalities}
        return {m: top[m] & ~torch.stack([top[k] for k in top if k != m]).any(0) for m in top}

    def forward(self, model: MultimodalModel, batch: Batch, ctx: RunContext) -> Output:
        if not ctx.training:  # valid_combine_classifier (main_CFT_stage2.py:176-186)
            out = super().forward(model, batch, ctx)
            logits = [out.modality_logits[m] for m in ctx.modalities] + [out.pred]
            out.pred = confidence_mix(logits, self.p.stage2_temperature)
            return out
        if ctx.epoch >= self.p.stage1_epochs:  # stage 2: frozen encoders (eval mode, no gradient)
            model.encoders.eval()
            with torch.no_grad():
                features = model.encode(batch.inputs)
            fused = model.fusion(features)
            return Output(model.head(fused), features, fused)
        out = super().forward(model, batch, ctx)
        out.aux.update({f"shared/{m}": self.shared(f) for m, f in out.features.items()})
        return out

    def loss(self, out: Output, batch: Batch, ctx: RunContext) -> Tensor:
        y = batch.target
        if ctx.epoch >= self.p.stage1_epochs:
            return ctx.task_loss(out.pred, y)
        mods = ctx.modalities
        loss = sum(ctx.task_loss(out.modality_logits[m], y) for m in mods)
        loss = loss + self.p.weight * sum(ctx.task_loss(out.aux[f"shared/{m}"], y) for m in mods)
        if ctx.epoch >= self.p.contrast_epoch:
            f = out.features
            for m, dims in self.only.items():
                dims = dims.to(f[m].device)
                loss = loss + sum(contrast_loss(f[m], f[k], dims, self.p.temperature) for k in mods if k != m)
        return loss

    @torch.no_grad()
    def after_backward(self, model: MultimodalModel, out: Output, batch: Batch, ctx: RunContext) -> None:
        if ctx.epoch >= self.p.stage1_epochs:  # the stage-2 optimiser steps; the run's finds no gradient
            self.stage2_optimizer.step()
            self.stage2_optimizer.zero_grad(set_to_none=True)

    def on_epoch_end(self, ctx: RunContext) -> None:
        # main_CFT_stage2.py:120, StepLR(70, 0.1) after each stage-2 epoch; kept in the optimiser's own lr,
        # which its checkpointed state holds
        if ctx.epoch >= self.p.stage1_epochs and (ctx.epoch - self.p.stage1_epochs + 1) % STAGE2_LR_STEP == 0:
            for group in self.stage2_optimizer.param_groups:
                group["lr"] *= STAGE2_LR_GAMMA
