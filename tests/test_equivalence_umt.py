"""UMT: our ``Trainer`` (both stages) against BalanceBenchmark's distillation step, written out.

Reference: BalanceBenchmark, no official code (GeWu-Lab/BalanceBenchmark @ 4c1482f,
``balancemm/trainer/UMT_trainer.py::training_step`` lines 129-147: cross-entropy of the fused output
plus ``scaling * MSE(teacher feature, student feature)`` per modality, teachers under ``no_grad``;
``scaling`` 10, ``configs/trainer_config.yaml``). BalanceBenchmark loads teachers trained beforehand;
the staging (uni-modal training in epoch 0, then a fresh student from the initial weights and a fresh
optimiser) is this suite's, transcribed from ``umt.py``'s docstring: stage 1 is UME's independent
uni-modal runs (``test_equivalence_ume.py``). BalanceBenchmark follows the paper's loss (Du et al.,
ICML 2023, Sec. 4.2); it departs from it only in loading the teachers rather than training them.
The coefficients compared are the uni-modal losses (stage 1) and the distillation MSEs (stage 2).
"""

from __future__ import annotations

import copy

import torch
from _equivalence import TWO_MODALITIES, lockstep, make_trainer, snapshot, twin
from test_equivalence_ume import UniModalRuns
from torch import nn

SCALING = 10.0
SPEC = {**TWO_MODALITIES, "method": "umt", "method_params": {"scaling": SCALING, "teacher_epochs": 1}}


class Staged(UniModalRuns):
    def __init__(self, model, heads, modalities):
        super().__init__(model, heads, modalities)
        self.initial = copy.deepcopy(model.state_dict())
        self.teachers = None

    def step(self, batch, epoch, i) -> None:
        if epoch < 1:
            return super().step(batch, epoch, i)
        if self.teachers is None:  # the teachers: stage 1's encoders; the student starts again
            self.teachers = copy.deepcopy(self.model.encoders).eval()
            self.model.load_state_dict(self.initial)
            self.optimizer = torch.optim.SGD(
                [*self.model.parameters(), *self.extra[0].parameters()],
                lr=0.05,
                momentum=0.9,
                weight_decay=1e-4,
            )
        criterion, mse = nn.CrossEntropyLoss(), nn.MSELoss()  # :132-133
        self.optimizer.zero_grad(set_to_none=True)
        out = self.model(batch.inputs)  # :136-137
        loss = criterion(out.pred, batch.target)  # :138
        self.coeff = []
        for m in self.mods:  # :140-144
            with torch.no_grad():
                out_unimodal = self.teachers[m](batch.inputs[m])
            distill = mse(out_unimodal, out.features[m])
            loss += SCALING * distill
            self.coeff.append(distill.item())
        loss.backward()  # :146
        self.grads = snapshot([*self.model.parameters(), *self.extra[0].parameters()])
        self.optimizer.step()


def test_umt_stages_match_unimodal_runs_then_the_balancebenchmark_step(tmp_path):
    tr = make_trainer(tmp_path, epochs=3, **SPEC)
    ref = Staged(twin(tr.model), twin(tr.method.heads), tr.ctx.modalities)

    def coefficients():
        values = tr.method.distill if tr.method.teachers is not None else tr.method.losses
        return [v.item() for v in values.values()]

    diff = lockstep(tr, ref, 3, coefficients, extra=[tr.method.heads])
    assert diff.steps == 12 and ref.teachers is not None
    assert diff.coefficients < 1e-12 and diff.gradients < 1e-12 and diff.parameters < 1e-12
