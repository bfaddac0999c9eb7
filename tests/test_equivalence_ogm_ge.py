"""OGM-GE: our ``Trainer.train_batch`` against a transcription of the released training step.

Official source: GeWu-Lab/OGM-GE_CVPR2022 @ 343dc1d, ``main.py::train_epoch`` lines 77-150 (concat
fusion, ``--modulation OGM_GE``), optimiser line 246 (SGD, momentum 0.9, weight decay 1e-4), epochs
0-based (line 275). Two modalities, as the released code; alpha 0.8 (the README's CREMA-D tip).

One reading is ours: the released loop modulates the 4-D conv kernels of each encoder
(``len(parms.grad.size()) == 4``, lines 136 and 143). The synthetic encoders are MLPs, which have no
conv kernel, so the transcription takes their weight matrices (``dim >= 2``), our documented default
``params: weights`` (``params: conv`` filters the same list by ``dim == 4``).
"""

from __future__ import annotations

import torch
from _equivalence import MaxDiff, Ours, make_trainer, snapshot, training_batches, twin
from torch import nn

ALPHA = 0.8
SPEC = {
    "dataset_params": {"modalities": 2, "n_train": 128, "n_valid": 32, "n_test": 32},
    "model_params": {"hidden": 16, "feature_dim": 8},
    "batch_size": 32,
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1.0e-4},
    "method": "ogm_ge",
    "method_params": {"alpha": ALPHA},
}


class Released:
    """main.py::train_epoch, one iteration (lines 77-150), on a copy of our late-fusion model."""

    def __init__(self, model, modalities):
        self.model, (self.audio, self.visual) = model, modalities
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)  # :246
        self.coeff = self.grads = None

    def step(self, batch, epoch: int, modulation_starts: int = 0, modulation_ends: int = 50) -> None:
        model, label = self.model, batch.target
        criterion, softmax, relu, tanh = nn.CrossEntropyLoss(), nn.Softmax(dim=1), nn.ReLU(), nn.Tanh()
        self.optimizer.zero_grad()  # :77
        o = model(batch.inputs)  # :80
        a, v, out = o.features[self.audio], o.features[self.visual], o.pred
        weight_size = model.head.weight.size(1)  # :88-93, the concat branch
        out_v = (
            torch.mm(v, torch.transpose(model.head.weight[:, weight_size // 2 :], 0, 1)) + model.head.bias / 2
        )
        out_a = (
            torch.mm(a, torch.transpose(model.head.weight[:, : weight_size // 2], 0, 1)) + model.head.bias / 2
        )
        loss = criterion(out, label)  # :95
        loss.backward()  # :98
        score_v = sum([softmax(out_v)[i][label[i]] for i in range(out_v.size(0))])  # :105
        score_a = sum([softmax(out_a)[i][label[i]] for i in range(out_a.size(0))])  # :106
        ratio_v = score_v / score_a  # :108
        ratio_a = 1 / ratio_v  # :109
        if ratio_v > 1:  # :119-124
            coeff_v = 1 - tanh(ALPHA * relu(ratio_v))
            coeff_a = 1
        else:
            coeff_a = 1 - tanh(ALPHA * relu(ratio_a))
            coeff_v = 1
        if modulation_starts <= epoch <= modulation_ends:  # :132-148 (weight matrices: see the docstring)
            for parms in model.encoders[self.audio].parameters():
                if len(parms.grad.size()) >= 2:
                    parms.grad = parms.grad * coeff_a + torch.zeros_like(parms.grad).normal_(
                        0, parms.grad.std().item() + 1e-8
                    )
            for parms in model.encoders[self.visual].parameters():
                if len(parms.grad.size()) >= 2:
                    parms.grad = parms.grad * coeff_v + torch.zeros_like(parms.grad).normal_(
                        0, parms.grad.std().item() + 1e-8
                    )
        self.coeff = [float(torch.as_tensor(c).detach()) for c in (coeff_a, coeff_v)]
        self.grads = snapshot(model.parameters())
        self.optimizer.step()


def test_ogm_ge_step_matches_the_released_train_epoch(tmp_path):
    tr = make_trainer(tmp_path, **SPEC)
    ours, ref = Ours(tr), Released(twin(tr.model), tr.ctx.modalities)
    diff, damped = MaxDiff(), set()
    for epoch, i, batch in training_batches(tr, 2):
        torch.manual_seed(1000 + diff.steps)  # the GE noise: the same draws on both sides
        ours.step(epoch, i, batch)
        torch.manual_seed(1000 + diff.steps)
        ref.step(batch, epoch)
        damped |= {m for m, c in zip(tr.ctx.modalities, ref.coeff, strict=True) if c < 1}
        diff.add(tr.method.coeff, ref.coeff, ours.grads, ref.grads, tr.model, ref.model)
    print("ogm_ge:", diff)
    assert damped and diff.steps == 8
    assert diff.coefficients < 1e-12 and diff.gradients < 1e-12 and diff.parameters < 1e-12
