"""MMCosine: our ``Trainer.train_batch`` against a transcription of the released training step.

Official source: GeWu-Lab/MMCosine_ICASSP23 @ 214797c, ``main_CD.py::train_epoch`` lines 90-147 (the
``args.mmcosine`` branch, lines 113-118; the loss line 138 with ``--lam 0``, the argparse default, so
the NCE term is zero), ``--scaling 10`` (argparse default). The released code splits ``fc_out.weight``
at column 512 (its feature size); the transcription splits at the synthetic feature size. The
coefficients compared are each modality's mean true-class logit (the code's ``fy_a``/``fy_v``, line 125).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _equivalence import TWO_MODALITIES, lockstep, make_trainer, snapshot, twin
from torch import nn

SCALING = 10.0
SPEC = {**TWO_MODALITIES, "method": "mmcosine", "method_params": {"scaling": SCALING}}


class Released:
    def __init__(self, model, modalities):
        self.model, (self.audio, self.visual) = model, modalities
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
        self.coeff = self.grads = None

    def step(self, batch, epoch, i) -> None:
        model, label = self.model, batch.target
        criterion = nn.CrossEntropyLoss()
        self.optimizer.zero_grad()  # :104
        o = model(batch.inputs)  # :109
        a, v = o.features[self.audio], o.features[self.visual]
        d = a.shape[1]  # 512 in the released model
        out_a = torch.mm(
            F.normalize(a, dim=1), F.normalize(torch.transpose(model.head.weight[:, :d], 0, 1), dim=0)
        )
        out_v = torch.mm(
            F.normalize(v, dim=1), F.normalize(torch.transpose(model.head.weight[:, d:], 0, 1), dim=0)
        )
        out_a = out_a * SCALING  # :115-117
        out_v = out_v * SCALING
        out = out_a + out_v
        label_onehot = nn.functional.one_hot(label, num_classes=out_v.size(1))  # :123-125
        fy_a = torch.mean(torch.sum(out_a * label_onehot, dim=1))
        fy_v = torch.mean(torch.sum(out_v * label_onehot, dim=1))
        loss = criterion(out, label)  # :138 (lam 0)
        loss.backward()  # :141
        self.coeff = [fy_a.item(), fy_v.item()]
        self.grads = snapshot(model.parameters())
        self.optimizer.step()  # :143


def test_mmcosine_step_matches_the_released_train_epoch(tmp_path):
    tr = make_trainer(tmp_path, **SPEC)
    ref = Released(twin(tr.model), tr.ctx.modalities)
    diff = lockstep(tr, ref, 2, lambda: [SCALING * c.item() for c in tr.method.target_cos.values()])
    assert diff.steps == 8
    assert diff.coefficients < 1e-12 and diff.gradients < 1e-12 and diff.parameters < 1e-12
