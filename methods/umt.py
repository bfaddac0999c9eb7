"""UMT: uni-modal teachers. A late-fusion model distils each encoder from a uni-modal teacher.

Reference: C. Du et al., "On Uni-Modal Feature Learning in Supervised Multi-Modal Learning", ICML 2023.
No official code was found in the stored sources; the loss follows BalanceBenchmark
(GeWu-Lab/BalanceBenchmark @ 4c1482f, ``balancemm/trainer/UMT_trainer.py``) and its defaults
(``configs/trainer_config.yaml``: ``scaling: 10``)::

    loss = task_loss(pred, y) + scaling * sum_m MSE(f_m, teacher_m(x_m))     # f_m: student feature

Staged in one run (the paper and BalanceBenchmark load teachers trained beforehand):

1. epochs ``[0, teacher_epochs)``: uni-modal training of every encoder with its own head, exactly
   UME (``methods/ume.py``); the run's prediction in this stage is UME's ensemble.
2. at epoch ``teacher_epochs``: the trained encoders become frozen teachers (eval mode), and the
   model restarts from its initial weights with fresh optimiser state, as a student trained from
   scratch; from then on the loss above.

Best-validation selection only considers stage-2 epochs (``selectable``), so the reported model is
always the student. The staging is this suite's; the teacher-student pair and the distillation
loss are the paper's. Task-agnostic (the distillation is on features, the task loss is the
adapter's); any number of modalities.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Epochs, Float
from mmbalance.methods.ume import UME
from mmbalance.models.base import MultimodalModel, Output
from mmbalance.training.data import Batch, StrictModel
from mmbalance.training.method import RunContext

__all__ = ["UMTParams", "UMT"]


class UMTParams(StrictModel):
    scaling: float = Field(10.0, ge=0)  # weight of the feature distillation (BalanceBenchmark default)
    teacher_epochs: int | None = Field(None, ge=1)  # length of stage 1; None: half of the run's epochs


@METHODS.register
class UMT(UME):
    name = "umt"
    Params = UMTParams
    search_space = {
        "scaling": Float(
            1.0, 50.0, log=True, source="around BalanceBenchmark's default 10 (no published grid)"
        ),
        # Stage 1 is this suite's (the paper trains its teachers beforehand); default half of the run.
        "teacher_epochs": Epochs(
            0.25, 0.75, minimum=1, source="suite: half of the run (no official staging)"
        ),
    }
    reference = "Du et al., ICML 2023 (Uni-Modal Teacher); loss as BalanceBenchmark UMT_trainer.py"

    state_attrs = ("initial", "distilling")

    def build(self, ctx: RunContext) -> None:
        super().build(ctx)
        self.switch_epoch = (
            self.p.teacher_epochs if self.p.teacher_epochs is not None else max(1, ctx.epochs // 2)
        )
        self.initial = copy.deepcopy(ctx.model.state_dict())  # the student restarts from here
        # Frozen copies of the encoders, given the stage-1 weights when distillation begins.
        self.teachers = self._freeze(copy.deepcopy(ctx.model.encoders))
        self.distilling = False
        self.distill: dict[str, Tensor] = {}

    def on_epoch_start(self, ctx: RunContext) -> None:
        if ctx.epoch == self.switch_epoch and not self.distilling:
            self.teachers.load_state_dict(ctx.model.encoders.state_dict())
            self.distilling = True
            ctx.model.load_state_dict(self.initial)
            for p in ctx.model.parameters():
                ctx.optimizer.state.pop(p, None)  # no momentum carried over from the teachers' training

    def selectable(self, epoch: int) -> bool:
        return epoch >= self.switch_epoch  # the reported model is the student, never stage 1's ensemble

    @staticmethod
    def _freeze(encoders: nn.ModuleDict) -> nn.ModuleDict:
        encoders.eval()
        for p in encoders.parameters():
            p.requires_grad_(False)
        return encoders

    def forward(self, model: MultimodalModel, batch: Batch, ctx: RunContext) -> Output:
        if not self.distilling:  # stage 1: uni-modal training (UME)
            return super().forward(model, batch, ctx)
        return model(batch.inputs)

    def loss(self, out: Output, batch: Batch, ctx: RunContext) -> Tensor:
        if not self.distilling:
            return super().loss(out, batch, ctx)
        with torch.no_grad():
            targets = {m: self.teachers[m](batch.inputs[m]) for m in ctx.modalities}
        self.distill = {m: F.mse_loss(out.features[m], targets[m]) for m in ctx.modalities}
        return ctx.task_loss(out.pred, batch.target) + self.p.scaling * sum(self.distill.values())

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        if not self.distilling:
            return super().diagnostics(ctx)
        return {f"distill/{m}": v.item() for m, v in self.distill.items()}
