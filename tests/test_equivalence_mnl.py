"""MNL: our ``Trainer.train_batch`` against a transcription of the released training step.

Official source: BaoquanGong/Multimodal-Negative-Learning @ 64cea56, ``train_latefusion.py::model_forward``
lines 117-172 (the ``train`` branch), ``--weight1 0.7`` (line 63). Modality 0 is the code's text, 1 its
image. Two substitutions, both stated in ``mnl.py``: the fused output is the model's own fusion head
(``src/models/latefusion.py:28`` averages the two unimodal logits) and the unimodal classifiers are our
``UnimodalHeads``; the optimiser is the runner's (the code's Adam with grouped weight decay, lines
70-80, is not the method). The coefficients compared are the two negative-learning terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _equivalence import TWO_MODALITIES, lockstep, make_trainer, snapshot, twin
from torch import nn

WEIGHT1 = 0.7
SPEC = {**TWO_MODALITIES, "method": "mnl", "method_params": {"weight1": WEIGHT1}}


class Released:
    def __init__(self, model, heads, modalities):
        self.model, self.extra, (self.txt, self.img) = model, [heads], modalities
        params = [*model.parameters(), *heads.parameters()]
        self.optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)
        self.coeff = self.grads = None

    def step(self, batch, epoch, i) -> None:
        self.optimizer.zero_grad()
        o = self.model(batch.inputs)  # :125
        out = o.pred
        txt_logits = self.extra[0].heads[self.txt](o.features[self.txt])
        img_logits = self.extra[0].heads[self.img](o.features[self.img])
        tgt = batch.target
        label = F.one_hot(tgt, num_classes=out.shape[1])  # :126
        prob_out = F.softmax(out, dim=1)  # :128-132
        prob_out_masked = prob_out.clone()
        prob_out_masked[torch.arange(prob_out.size(0)), tgt] = -1
        _, j_idx = prob_out_masked.max(dim=1)
        txt_tgt_logits = txt_logits[torch.arange(txt_logits.size(0)), tgt]  # :134-141
        txt_j_logits = txt_logits[torch.arange(txt_logits.size(0)), j_idx]
        xi_t = txt_tgt_logits - txt_j_logits
        img_tgt_logits = img_logits[torch.arange(img_logits.size(0)), tgt]
        img_j_logits = img_logits[torch.arange(img_logits.size(0)), j_idx]
        xi_v = img_tgt_logits - img_j_logits
        prob_txt = F.softmax(txt_logits, dim=1)  # :143-147
        prob_v = F.softmax(img_logits, dim=1)
        label_probs_txt = prob_txt[torch.arange(prob_txt.size(0)), tgt]
        label_probs_v = prob_v[torch.arange(prob_v.size(0)), tgt]
        txt_clf_loss = nn.CrossEntropyLoss()(txt_logits, tgt)  # :149-153
        img_clf_loss = nn.CrossEntropyLoss()(img_logits, tgt)
        clf_loss = txt_clf_loss + img_clf_loss + nn.CrossEntropyLoss()(out, tgt)
        loss = torch.mean(clf_loss)
        terms = [0.0, 0.0]  # the text's and the image's negative-learning terms
        valid_mask = (xi_t > xi_v) & (label_probs_txt > label_probs_v)  # :155-161
        if valid_mask.any():
            valid_mask = valid_mask.float().unsqueeze(1)
            boosting_loss = (
                -(label * img_logits.log_softmax(1) * valid_mask)
                - (WEIGHT1) * (txt_logits.detach().softmax(1) * img_logits.log_softmax(1) * valid_mask)
                + (WEIGHT1)
                * (label * txt_logits.detach().softmax(1) * img_logits.log_softmax(1) * valid_mask)
            )
            loss += torch.mean(boosting_loss)
            terms[1] = torch.mean(boosting_loss).item()
        valid_mask = (xi_t <= xi_v) & (label_probs_txt <= label_probs_v)  # :163-169
        if valid_mask.any():
            valid_mask = valid_mask.float().unsqueeze(1)
            boosting_loss = (
                -(label * txt_logits.log_softmax(1) * valid_mask)
                - (WEIGHT1) * (img_logits.detach().softmax(1) * txt_logits.log_softmax(1) * valid_mask)
                + (WEIGHT1)
                * (label * img_logits.detach().softmax(1) * txt_logits.log_softmax(1) * valid_mask)
            )
            loss += torch.mean(boosting_loss)
            terms[0] = torch.mean(boosting_loss).item()
        loss.backward()
        self.coeff = terms
        self.grads = snapshot([*self.model.parameters(), *self.extra[0].parameters()])
        self.optimizer.step()


def test_mnl_step_matches_the_released_model_forward(tmp_path):
    tr = make_trainer(tmp_path, **SPEC)
    ref = Released(twin(tr.model), twin(tr.method.heads), tr.ctx.modalities)
    active = set()

    def coefficients():
        active.update(m for m, v in tr.method.share.items() if v != 0)
        return list(tr.method.share.values())

    diff = lockstep(tr, ref, 2, coefficients, extra=[tr.method.heads])
    assert diff.steps == 8 and active == set(tr.ctx.modalities)  # both directions taught
    assert diff.coefficients < 1e-12 and diff.gradients < 1e-12 and diff.parameters < 1e-12
