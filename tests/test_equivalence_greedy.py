"""Greedy (guided): our ``Trainer`` against a transcription of the released MMTM block and callback.

Official source: nyukat/greedy_multimodal_learning @ a190e03: ``src/balanced_mmtm.py::MMTM_mitigate``
lines 16-154 (squeeze, excitation, running means, the curation mode); ``src/callbacks.py::
Bias_Mitigation_Strong`` lines 174-267 (``compute_BDR`` lines 199-233, the window lines 240-263, the
unlock lines 265-267); ``train.py::blend_loss`` lines 22-28 (the sum of the branches' cross-entropies);
``configs/training_guided.gin``: epsilon 0.01, window 5, ``starting_epoch=2`` (1-based, our 1), SGD lr
0.1, momentum 0, weight decay 0; ``src/model.py:60-62``: ``MMTM(.., .., 4)``, the ratio 4 that
``greedy.py`` marks [UNCERTAIN]. Modality 0 is the code's visual (branch ``net_view_0``), 1 its skeleton.

Substitutions, as ``greedy.py`` states: one MMTM block at the encoder outputs (the code has three
inside ResNet branches), each branch's classifier our ``heads[m]``; and line 114, which updates the
skeleton's running mean from the *visual* excitation (a bug), is transcribed with the skeleton's own.
The coefficients compared are the cumulative ratios M_bypass and M_main of ``compute_BDR``.
"""

from __future__ import annotations

import numpy as np
import torch
from _equivalence import TWO_MODALITIES, lockstep, make_trainer, snapshot, twin
from torch import nn

EPSILON, WINDOW, STARTING_EPOCH = 0.01, 5, 2  # training_guided.gin (epochs 1-based)
SPEC = {
    **TWO_MODALITIES,
    "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0},
    "method": "greedy",
    "method_params": {
        "ratio": 4.0,
        "epsilon": EPSILON,
        "window": WINDOW,
        "starting_epoch": STARTING_EPOCH - 1,
    },
}


class MMTMMitigate:
    """MMTM_mitigate.forward (lines 49-154, the plain branch) on the layers of our block."""

    def __init__(self, mmtm, modalities):
        self.fc_squeeze = mmtm.squeeze
        self.fc_visual, self.fc_skeleton = (mmtm.excite[m] for m in modalities)
        dim_visual = self.fc_visual.out_features
        self.running_avg_weight_visual = torch.zeros(dim_visual, dtype=torch.float64)  # :30-32
        self.running_avg_weight_skeleton = torch.zeros(dim_visual, dtype=torch.float64)
        self.step = 0
        self.relu, self.sigmoid = nn.ReLU(), nn.Sigmoid()

    def __call__(self, visual, skeleton, curation_mode=False, caring_modality=0):
        squeeze_array = []
        for tensor in [visual, skeleton]:  # :94-108
            tview = tensor.view(tensor.shape[:2] + (-1,))
            squeeze_array.append(torch.mean(tview, dim=-1))
        squeeze = torch.cat(squeeze_array, 1)
        excitation = self.relu(self.fc_squeeze(squeeze))
        vis_out = self.sigmoid(self.fc_visual(excitation))  # :107-111
        sk_out = self.sigmoid(self.fc_skeleton(excitation))
        self.running_avg_weight_visual = (
            vis_out.mean(0) + self.running_avg_weight_visual * self.step
        ).detach() / (self.step + 1)  # :113
        self.running_avg_weight_skeleton = (
            sk_out.mean(0) + self.running_avg_weight_skeleton * self.step  # :114 reads vis_out (see above)
        ).detach() / (self.step + 1)
        self.step += 1
        if curation_mode and caring_modality == 0:  # :135-143
            vis_out = torch.stack(vis_out.shape[0] * [self.running_avg_weight_visual]).view(vis_out.shape)
        elif curation_mode and caring_modality == 1:  # :145-152
            sk_out = torch.stack(sk_out.shape[0] * [self.running_avg_weight_skeleton]).view(sk_out.shape)
        return visual * vis_out, skeleton * sk_out


class Released:
    def __init__(self, model, mmtm, heads, modalities):
        self.model, self.extra, self.mods = model, [mmtm, heads], modalities
        self.mmtm = MMTMMitigate(mmtm, modalities)
        params = [*model.parameters(), *mmtm.parameters(), *heads.parameters()]
        self.optimizer = torch.optim.SGD(params, lr=0.1, momentum=0, weight_decay=0.0)  # train.py:47-50
        self.M_bypass_modal_0 = self.M_bypass_modal_1 = self.M_main_modal_0 = self.M_main_modal_1 = (
            0  # :190-197
        )
        self.curation_mode, self.caring_modality, self.unlock = False, None, False
        self.coeff = self.grads = None

    def groups(self):
        """compute_BDR's grouping by name (lines 203-223), by structure: bypass = the modality's
        excitation layer and the shared squeeze; main = the modality's branch (encoder and classifier)."""
        squeeze = list(self.extra[0].squeeze.parameters())
        bypass = [list(self.extra[0].excite[m].parameters()) + squeeze for m in self.mods]
        main = [
            list(self.model.encoders[m].parameters()) + list(self.extra[1][m].parameters()) for m in self.mods
        ]
        return bypass, main

    def compute_BDR(self):  # noqa: N802 (the released name), lines 199-233
        bypass, main = self.groups()
        wn_bypass = [sum((p**2).sum().item() for p in ps) for ps in bypass]
        gn_bypass = [sum((p.grad.data**2).sum().item() for p in ps) for ps in bypass]
        wn_main = [sum((p**2).sum().item() for p in ps) for ps in main]
        gn_main = [sum((p.grad.data**2).sum().item() for p in ps) for ps in main]
        self.M_bypass_modal_0 += gn_bypass[0] / wn_bypass[0]
        self.M_bypass_modal_1 += gn_bypass[1] / wn_bypass[1]
        self.M_main_modal_0 += gn_main[0] / wn_main[0]
        self.M_main_modal_1 += gn_main[1] / wn_main[1]
        BDR_0 = np.log10(self.M_bypass_modal_0 / self.M_main_modal_0)  # noqa: N806
        BDR_1 = np.log10(self.M_bypass_modal_1 / self.M_main_modal_1)  # noqa: N806
        return BDR_0 - BDR_1

    def on_backward_end(self):  # :240-263
        if self.unlock:
            if not self.curation_mode:
                self.d_BDR = self.compute_BDR()
                if abs(self.d_BDR) > EPSILON:
                    biased_direction = np.sign(self.d_BDR)
                    self.curation_mode = True
                    self.curation_step = 0
                    if biased_direction == -1:
                        self.caring_modality = 1
                    elif biased_direction == 1:
                        self.caring_modality = 0
                else:
                    self.curation_mode = False
                    self.caring_modality = 0
            else:
                self.curation_step += 1
                if self.curation_step == WINDOW:
                    self.curation_mode = False
        else:
            self.d_BDR = self.compute_BDR()
            self.curation_mode = False
            self.caring_modality = 0

    def step(self, batch, epoch, i) -> None:
        if i == 0 and epoch + 1 >= STARTING_EPOCH:  # on_epoch_begin, :265-267 (1-based epochs)
            self.unlock = True
        self.optimizer.zero_grad()
        visual, skeleton = (self.model.encoders[m](batch.inputs[m]) for m in self.mods)
        x_0, x_1 = self.mmtm(visual, skeleton, self.curation_mode, self.caring_modality)
        y_hat = [self.extra[1][m](x) for m, x in zip(self.mods, (x_0, x_1), strict=True)]
        loss = sum(nn.CrossEntropyLoss()(y_pred, batch.target) for y_pred in y_hat)  # blend_loss
        loss.backward()
        self.curating = self.curation_mode
        self.on_backward_end()
        self.coeff = [self.M_bypass_modal_0, self.M_bypass_modal_1, self.M_main_modal_0, self.M_main_modal_1]
        self.grads = snapshot([p for m in (self.model, *self.extra) for p in m.parameters()])
        self.optimizer.step()


def test_greedy_matches_the_released_mmtm_and_callback(tmp_path):
    tr = make_trainer(tmp_path, epochs=4, **SPEC)
    tr.method.running = {m: r.double() for m, r in tr.method.running.items()}  # a dict, not a module
    method = tr.method
    ref = Released(twin(tr.model), twin(method.mmtm), twin(method.heads), tr.ctx.modalities)
    curated = []

    def coefficients():
        curated.append(ref.curating)
        return [
            *(method.m_bypass[m] for m in tr.ctx.modalities),
            *(method.m_main[m] for m in tr.ctx.modalities),
        ]

    diff = lockstep(tr, ref, 4, coefficients, extra=[method.mmtm, method.heads])
    assert diff.steps == 16 and 3 <= sum(curated) < 16  # windows opened and closed
    assert diff.coefficients < 1e-12 and diff.gradients < 1e-12 and diff.parameters < 1e-12
