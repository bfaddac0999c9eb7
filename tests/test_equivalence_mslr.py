"""MSLR: our ``Trainer.train_batch`` against the paper's "keep" strategy, written out.

Reference: paper only (Yao & Mihalcea, Findings of ACL 2022, Sec. 3, the "keep" strategy: each
modality's sub-network keeps the learning rate its unimodal model was tuned with); no official code
was found and BalanceBenchmark (GeWu-Lab/BalanceBenchmark @ 4c1482f) has no MSLR trainer. Written as
one plain SGD per modality encoder at lr * scale_m plus one for the fusion head at lr * head_scale
(the runner's SGD settings), the late-fusion cross-entropy as the only loss. Scales 0.5 / 2 / 1.5
(distinct, so that a rate applied to the wrong group shows). The coefficients compared are the
learning rates.
"""

from __future__ import annotations

import torch
from _equivalence import TWO_MODALITIES, lockstep, make_trainer, snapshot, twin
from torch import nn

LR, SCALES, HEAD_SCALE = 0.05, {"m0": 0.5, "m1": 2.0}, 1.5
SPEC = {
    **TWO_MODALITIES,
    "method": "mslr",
    "method_params": {"lr_scale": SCALES, "head_lr_scale": HEAD_SCALE},
}


class KeepStrategy:
    def __init__(self, model, modalities):
        self.model = model
        sgd = dict(momentum=0.9, weight_decay=1e-4)
        self.optimizers = [
            torch.optim.SGD(model.encoders[m].parameters(), lr=LR * SCALES[m], **sgd) for m in modalities
        ] + [torch.optim.SGD(model.head.parameters(), lr=LR * HEAD_SCALE, **sgd)]
        self.coeff = self.grads = None

    def step(self, batch, epoch, i) -> None:
        for opt in self.optimizers:
            opt.zero_grad()
        loss = nn.CrossEntropyLoss()(self.model(batch.inputs).pred, batch.target)
        loss.backward()
        self.coeff = [opt.param_groups[0]["lr"] for opt in self.optimizers]
        self.grads = snapshot(self.model.parameters())
        for opt in self.optimizers:
            opt.step()


def test_mslr_step_matches_per_modality_optimisers(tmp_path):
    tr = make_trainer(tmp_path, **SPEC)
    assert [m for m in tr.model.modalities] == list(SCALES) and not list(tr.model.fusion.parameters())
    ref = KeepStrategy(twin(tr.model), tr.ctx.modalities)
    lrs = lambda: [g["lr"] for g in tr.optimizer.param_groups]  # noqa: E731
    diff = lockstep(tr, ref, 2, lrs)
    assert diff.steps == 8
    assert diff.coefficients < 1e-15 and diff.gradients < 1e-12 and diff.parameters < 1e-12
