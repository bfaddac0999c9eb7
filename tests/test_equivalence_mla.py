"""MLA: our ``Trainer.train_batch`` (one optimiser step per modality turn) against a transcription of
the official alternating step.

Official source: Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation @ ab6c184,
``main.py::train_epoch``, the ``gs_flag`` branch, lines 419-470 (one forward; per modality the shared
``fc_out``, backward, ``GSPlugin.before_update``, step, ``zero_grad``; then the gradients deleted),
``utils/utils.py::GSPlugin`` lines 12-41. At HEAD ``before_update`` looks for the parameter name
``"module.weight"`` (line 32), which the plain ``nn.Linear`` head does not have, so the projection
never fires: the released step is our ``gs: false``. (Our ``gs: true`` makes it fire, with the
scalar denominator ``a + r k`` where the code writes the (D, D) matrix ``alpha + k r``; see mla.py.)
"""

from __future__ import annotations

import torch
from _equivalence import MaxDiff, Ours, make_trainer, snapshot, training_batches, twin
from torch import nn

SPEC = {
    "dataset_params": {"modalities": 2, "n_train": 128, "n_valid": 32, "n_test": 32},
    "model_params": {"hidden": 16, "feature_dim": 8},
    "batch_size": 32,
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1.0e-4},
    "method": "mla",
    "method_params": {"gs": False},
}


class Official:
    def __init__(self, model, fc_out, modalities):
        self.model, self.fc_out, self.mods = model, fc_out, modalities
        params = list(model.parameters()) + list(fc_out.parameters())
        self.optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)
        self.grads = None

    def step(self, batch) -> None:
        criterion, label = nn.CrossEntropyLoss(), batch.target
        self.optimizer.zero_grad()  # :164
        a, v = (self.model.encoders[m](batch.inputs[m]) for m in self.mods)  # :431, one forward
        for f in (a, v):  # :432-454
            out = self.fc_out(f)
            loss = criterion(out, label)
            loss.backward()
            # gs_plugin.before_update(...): no parameter is named "module.weight", nothing happens
            self.grads = snapshot(self.model.parameters())
            self.optimizer.step()
            self.optimizer.zero_grad()
        for p in self.model.parameters():  # :468-470
            if p.grad is not None:
                del p.grad


def test_mla_turns_match_the_official_alternating_step(tmp_path):
    tr = make_trainer(tmp_path, **SPEC)
    ours, ref = Ours(tr), Official(twin(tr.model), twin(tr.method.head), tr.ctx.modalities)
    diff = MaxDiff()
    for epoch, i, batch in training_batches(tr, 2):
        ours.step(epoch, i, batch)
        ref.step(batch)
        diff.add([], [], ours.grads, ref.grads, tr.model, ref.model)
        diff.parameters = max(diff.parameters, (tr.method.head.weight - ref.fc_out.weight).abs().max().item())
    print("mla:", diff)
    assert diff.steps == 8
    assert diff.gradients < 1e-12 and diff.parameters < 1e-12
