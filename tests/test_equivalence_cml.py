"""CML: our ``Trainer.train_batch`` against BalanceBenchmark's CML step, written out.

Reference: BalanceBenchmark, no official code read (GeWu-Lab/BalanceBenchmark @ 4c1482f,
``balancemm/trainer/CML_trainer.py``: ``conf_loss`` lines 19-22, the epoch's removal order lines
62-67, ``training_step`` two-modality branch lines 170-203; the shares
``models/avclassify_model.py::unimodality_calculate`` lines 277-293, ``W_m f_m + b / M``;
``configs/trainer_config.yaml``: ``lam: 0.1``). The removal order is drawn once per epoch with
Python's ``random.shuffle``; the transcription is handed the order our run drew (``torch.randperm``),
since no two programs share a generator. Where BalanceBenchmark departs from the paper (Ma et al.,
ICML 2023, Eq. 8): the hinge is on the batch sum of confidence differences, not per sample, and
``conf_loss``'s "trick 1" sign is computed but unused.
"""

from __future__ import annotations

import torch
from _equivalence import TWO_MODALITIES, lockstep, make_trainer, snapshot, twin
from torch import nn

LAM = 0.1
SPEC = {**TWO_MODALITIES, "method": "cml", "method_params": {"lam": LAM}}


def conf_loss(conf, pred, conf_x, pred_x, label):  # :19-22
    sign = (~((pred == label) & (pred_x != label))).long()
    return (max(0, torch.sub(conf_x, conf).sum())), sign.sum()


class BalanceBenchmark:
    def __init__(self, model, modalities, drawn_order):
        self.model, self.mods, self.drawn_order = model, modalities, drawn_order
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
        self.coeff = self.grads = None

    def unimodality_calculate(self, o):  # avclassify_model.py:277-293 (concat)
        result, now_size, fc_out = {"output": o.pred}, 0, self.model.head
        for m in self.mods:
            d = o.features[m].shape[1]
            w = fc_out.weight[:, now_size : now_size + d]
            result[m] = torch.mm(o.features[m], torch.transpose(w, 0, 1)) + fc_out.bias / len(self.mods)
            now_size += d
        return result

    def step(self, batch, epoch, i) -> None:
        if i == 0:  # :62-67, the epoch's order; pop() removes from the end
            self.random_dict = list(reversed(self.drawn_order()))
        criterion, softmax, label = nn.CrossEntropyLoss(), nn.Softmax(dim=1), batch.target
        self.optimizer.zero_grad()
        _loss_c = 0
        unimodal_result = self.unimodality_calculate(self.model(batch.inputs))  # :175-180
        out_s = unimodal_result["output"]
        random_dict = self.random_dict.copy()  # :181
        for i in range(len(self.mods) - 1):  # :182-200
            removed_mm = random_dict.pop()
            out_p = out_s - unimodal_result[removed_mm] + self.model.head.bias / 2
            conf_s, pred_s = torch.max(softmax(out_s), dim=1)
            conf_p, pred_p = torch.max(softmax(out_p), dim=1)
            if i == 0:
                loss = criterion(out_s, label)
            loss_p = criterion(out_p, label)
            loss_pc, _ = conf_loss(conf_s, pred_s, conf_p, pred_p, label)
            loss += loss_p
            _loss_c += loss_pc
            out_s = out_p
        loss = (loss) / 2 + LAM * _loss_c  # :201
        loss.backward()  # :210
        self.coeff = [float(torch.as_tensor(_loss_c).detach())]
        self.grads = snapshot(self.model.parameters())
        self.optimizer.step()


def test_cml_step_matches_the_balancebenchmark_trainer(tmp_path):
    tr = make_trainer(tmp_path, epochs=4, **SPEC)
    ref = BalanceBenchmark(twin(tr.model), tr.ctx.modalities, lambda: tr.method.order)
    penalties, orders = [], set()

    def coefficients():
        penalties.append(float(tr.method.penalty))
        orders.add(tuple(tr.method.order))
        return [penalties[-1]]

    torch.manual_seed(0)  # a global-RNG state whose epoch orders differ
    diff = lockstep(tr, ref, 4, coefficients)
    assert diff.steps == 16 and len(orders) == 2 and max(penalties) > 0  # both orders; the hinge is active
    assert diff.coefficients < 1e-12 and diff.gradients < 1e-12 and diff.parameters < 1e-12
