"""UME: our ``Trainer.train_batch`` against the paper's uni-modal ensemble training, written out.

Reference: paper only (Du et al., ICML 2023, Sec. 4 "Uni-Modal Ensemble"): no official code was
found, and BalanceBenchmark (GeWu-Lab/BalanceBenchmark @ 4c1482f) has no UME trainer. Each
modality's encoder and classifier are trained alone with their own cross-entropy; M independent
uni-modal runs are written as M separate optimisers (one per modality, the runner's SGD settings),
so the test also checks the claim of ``ume.py`` that one summed loss with one optimiser is the same
training. The coefficients compared are the uni-modal losses.
"""

from __future__ import annotations

import torch
from _equivalence import TWO_MODALITIES, lockstep, make_trainer, twin
from torch import nn

SPEC = {**TWO_MODALITIES, "method": "ume"}


class UniModalRuns:
    """One uni-modal run per modality: encoder_m -> classifier_m, cross-entropy, its own SGD."""

    def __init__(self, model, heads, modalities):
        self.model, self.extra, self.mods = model, [heads], modalities
        self.optimizers = {
            m: torch.optim.SGD(
                [*model.encoders[m].parameters(), *heads.heads[m].parameters()],
                lr=0.05, momentum=0.9, weight_decay=1e-4,
            )
            for m in modalities
        }  # fmt: skip
        self.coeff = self.grads = None

    def step(self, batch, epoch, i) -> None:
        criterion, losses = nn.CrossEntropyLoss(), []
        for m in self.mods:
            self.optimizers[m].zero_grad(set_to_none=True)
            logits = self.extra[0].heads[m](self.model.encoders[m](batch.inputs[m]))
            loss = criterion(logits, batch.target)
            loss.backward()
            losses.append(loss.item())
        self.coeff = losses
        params = [*self.model.parameters(), *self.extra[0].parameters()]
        self.grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
        for opt in self.optimizers.values():
            opt.step()


def test_ume_step_equals_independent_unimodal_runs(tmp_path):
    tr = make_trainer(tmp_path, **SPEC)
    ref = UniModalRuns(twin(tr.model), twin(tr.method.heads), tr.ctx.modalities)
    losses = lambda: [v.item() for v in tr.method.losses.values()]  # noqa: E731
    diff = lockstep(tr, ref, 2, losses, extra=[tr.method.heads])
    assert diff.steps == 8
    assert diff.coefficients < 1e-12 and diff.gradients < 1e-12 and diff.parameters < 1e-12
