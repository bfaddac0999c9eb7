"""Unimodal ensemble: the headroom reference. Every modality trained alone, predictions averaged.

Reference: C. Du, J. Teng, T. Li, Y. Liu, T. Yuan, Y. Wang, Y. Yuan, H. Zhao, "On Uni-Modal Feature
Learning in Supervised Multi-Modal Learning", ICML 2023: an ensemble of separately trained uni-modal
models often beats joint training ("modality laziness": the joint model stops learning a modality's
features once the others fit the training set). The suite reports it next to ``unimodal`` as a
reference row, not as a balancing method: a method that does not beat it has not undone the laziness.

Training is UME's (``ume.py``): one run, one encoder and head per modality, loss = the sum of the
per-modality task losses. The terms share no parameter, so each encoder and head gets exactly the
gradient of its own uni-modal run (SGD, momentum, Adam and weight decay act per parameter): this *is*
independent training, with one shared batch order and one best-validation epoch for the ensemble.
Only the combination differs from UME, which averages logits; a classic ensemble averages
probabilities::

    classification, segmentation (per pixel):  pred = log( mean_m softmax(logits_m) )
    regression:                                 pred = mean_m output_m

``pred`` holds log-probabilities, so the runner's cross-entropy / Dice+CE (softmax of ``pred``) and
argmax read the ensemble's mean probability exactly.
"""

from __future__ import annotations

import math

import torch

from mmbalance.common.registry import METHODS
from mmbalance.methods.ume import UME
from mmbalance.models.base import MultimodalModel, Output
from mmbalance.training.data import Batch
from mmbalance.training.method import RunContext

__all__ = ["UnimodalEnsemble"]


@METHODS.register
class UnimodalEnsemble(UME):
    name = "unimodal_ensemble"
    reference = (
        "Du et al., ICML 2023 (modality laziness): mean probability of independently trained unimodal models"
    )

    def forward(self, model: MultimodalModel, batch: Batch, ctx: RunContext) -> Output:
        out = super().forward(model, batch, ctx)
        logits = torch.stack([out.modality_logits[m] for m in ctx.modalities])
        if ctx.task.kind == "regression":
            out.pred = logits.mean(dim=0)
        else:  # class dimension 1 for (B, C) and (B, C, H, W) alike
            out.pred = torch.logsumexp(logits.log_softmax(dim=2), dim=0) - math.log(len(ctx.modalities))
        return out
