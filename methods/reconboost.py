"""ReconBoost: boosting-style alternating training of the modality learners.

Reference: C. Hua, Q. Xu, S. Bao, Z. Yang, Q. Huang, "ReconBoost: Boosting Can Achieve Modality
Reconcilement", ICML 2024. Official code: huacong/ReconBoost @ 14ab57a (files read at 441eb51),
``train.py::main``, ``models/dynamic_net.py::DynamicNet``.

Each modality learner is ``g_m = h(f_m(x_m))``: its encoder and ONE head ``h`` shared by all
learners; the ensemble predicts ``F(x) = beta * sum_m g_m`` with a learnable boost rate ``beta``.
Training runs in stages; stage s trains the learner of modality ``a = modalities[s % M]``:

1. ``epochs_per_stage`` epochs of the boosting loss (only ``f_a`` and ``h`` get gradients)::

       J = beta * sum_{k in ensemble, k != a} g_k(x_k)         # no grad; see c0 below
       L = mean_{i,c} [ -w1 T log softmax(g_a) + w2 T softmax(J) log softmax(g_a) ]
         = mean_i -(w1 - w2 softmax(J)[i, y_i]) / C * log softmax(g_a)[i, y_i]

   so the samples the other learners already fit get less weight. Before any other learner
   exists the code uses a constant ``c0`` broadcast to shape (B, 1), whose softmax over one column
   is 1, so the weight is ``w1 - w2`` for every sample; we do the same;
2. ``correct_epochs`` epochs of joint correction of the whole ensemble: ``L = CE(F(x), y)``
   (all encoders, the head and beta).

The stage and phase are a pure function of the epoch, so resume needs no extra state.
Evaluation uses the learners trained so far.

Deviations: the official code gives each phase its own SGD optimiser (lr 0.01, wd 5e-4); here the
runner's one optimiser steps whichever parameters got gradients (the others have ``grad None`` and are
skipped, momentum included). The released "GA" regulariser ``alpha * MSE(softmax(g_a), softmax(g_prev))``
detaches *both* arguments, so it contributes no gradient; ``ga_gradient: false`` (default) follows the
code and skips it, ``true`` lets its gradient reach ``g_a`` (the paper's intent). The head is the model's
``unimodal_classifier`` (the official 512-256-C MLP is the same shape of head). Classification only:
the boosting weight is the other learners' probability of the true class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Epochs, Float
from mmbalance.models.base import MultimodalModel, Output
from mmbalance.training.data import Batch, StrictModel
from mmbalance.training.method import Method, RunContext
from mmbalance.training.method_parts import common_feature_dim, num_outputs

__all__ = ["ReconBoostParams", "ReconBoost", "boosting_loss"]


class ReconBoostParams(StrictModel):
    weight1: float = Field(5.0, gt=0)  # w1, weight of the learner's own CE
    weight2: float = Field(1.0, ge=0)  # w2, discount by the other learners' true-class probability
    alpha: float = Field(0.5, ge=0)  # GA (reconcilement) term weight
    ga_gradient: bool = False  # False: the released code (the GA term has no gradient)
    epochs_per_stage: int = Field(4, ge=1)  # boosting epochs of one learner
    correct_epochs: int = Field(4, ge=0)  # joint correction epochs after each stage
    boost_rate: float = Field(1.0, gt=0)  # initial beta (learnable)


def boosting_loss(logits: Tensor, join_logits: Tensor, target: Tensor, w1: float, w2: float) -> Tensor:
    """``mean_{i,c} [-w1 T log p + w2 T softmax(J) log p]`` with ``p = softmax(logits)``, T one-hot."""
    T = F.one_hot(target, logits.shape[1]).to(logits.dtype)
    log_p = logits.log_softmax(dim=1)
    return (-w1 * T * log_p + w2 * T * join_logits.softmax(dim=1).detach() * log_p).mean()


@METHODS.register
class ReconBoost(Method):
    name = "reconboost"
    Params = ReconBoostParams
    # w1 > w2 keeps every sample's boosting weight w1 - w2 p positive. ``alpha`` is not searched: its GA
    # term has no gradient unless ``ga_gradient`` (the released code). Stage lengths: the official 4 + 4
    # epochs repeat over hundreds of epochs; here a stage is a share of the run, at least one epoch each.
    search_space = {
        "weight1": Float(2.0, 10.0, log=True, source="around train.py's 5 (no published grid)"),
        "weight2": Float(0.25, 1.0, log=True, source="train.py's 1, at the top (no published grid)"),
        "epochs_per_stage": Epochs(0.05, 0.25, minimum=1, source="train.py 4 per stage; suite 1 of 12"),
        "correct_epochs": Epochs(0.05, 0.25, minimum=1, source="train.py 4 per stage; suite 1 of 12"),
    }
    tasks = frozenset({"classification"})
    reference = "Hua et al., ReconBoost: Boosting Can Achieve Modality Reconcilement, ICML 2024"

    def build(self, ctx: RunContext) -> None:
        model = ctx.model
        first = model.modalities[0]
        common_feature_dim(model, "reconboost")
        self.head = model.unimodal_classifier(first, num_outputs(model))
        self.beta = nn.Parameter(torch.tensor(self.p.boost_rate))
        self.modalities = model.modalities
        self.epoch = 0
        self.last_loss: dict[str, float] = {}

    # --- the schedule: stage, phase and learners, from the epoch ---------------------------------
    def phase(self, epoch: int) -> tuple[int, str]:
        length = self.p.epochs_per_stage + self.p.correct_epochs
        stage, within = divmod(epoch, length)
        return stage, "boost" if within < self.p.epochs_per_stage else "correct"

    def learner(self, stage: int) -> str:
        return self.modalities[stage % len(self.modalities)]

    def ensemble(self, epoch: int) -> list[str]:
        """Learners added so far (a stage's learner joins at the end of its boosting phase; the
        evaluation after a boosting epoch already counts it)."""
        stage, _ = self.phase(epoch)
        return [m for m in self.modalities if any(self.learner(s) == m for s in range(stage + 1))]

    def on_epoch_start(self, ctx: RunContext) -> None:
        self.epoch = ctx.epoch

    # --- hooks -------------------------------------------------------------------------------------
    def forward(self, model: MultimodalModel, batch: Batch, ctx: RunContext) -> Output:
        stage, phase = self.phase(self.epoch)
        if ctx.training and phase == "boost":
            a = self.learner(stage)
            features = {a: model.encoders[a](batch.inputs[a])}
            with torch.no_grad():
                for k in self.modalities:
                    if k != a:
                        features[k] = model.encoders[k](batch.inputs[k])
                others = [k for k in self.ensemble(self.epoch) if k != a]
                if others:
                    join = self.beta * sum(self.head(features[k]) for k in others)
                else:  # the code's constant c0, a (B, 1) tensor: softmax over one column is 1
                    join = torch.zeros(len(batch.target), 1, device=batch.target.device)
                prev = self.head(features[self.learner(stage - 1)]) if stage > 0 else None
            logits = self.head(features[a])
            aux = {"join": join} if prev is None else {"join": join, "prev": prev}
            return Output(logits, features, features[a], aux=aux)
        features = model.encode(batch.inputs)
        pred = self.beta * sum(self.head(features[k]) for k in self.ensemble(self.epoch))
        return Output(pred, features, torch.cat(list(features.values()), dim=1))

    def loss(self, out: Output, batch: Batch, ctx: RunContext) -> Tensor:
        if "join" not in out.aux:  # correction phase (or evaluation): the ensemble's task loss
            loss = ctx.task_loss(out.pred, batch.target)
            self.last_loss = {"correct": loss.item()}
            return loss
        loss = boosting_loss(out.pred, out.aux["join"], batch.target, self.p.weight1, self.p.weight2)
        self.last_loss = {"boost": loss.item()}
        if self.p.ga_gradient and "prev" in out.aux:
            ga = F.mse_loss(out.pred.softmax(dim=1), out.aux["prev"].softmax(dim=1))
            loss = loss + self.p.alpha * ga
            self.last_loss["ga"] = ga.item()
        return loss

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        stage, phase = self.phase(self.epoch)
        learner = self.modalities.index(self.learner(stage))
        return {
            "boost_rate": self.beta.item(),
            "stage": stage,
            "learner": learner,
            "correcting": float(phase == "correct"),
            **self.last_loss,
        }
