"""G-Blending: our ``Trainer`` (blended step and the super-epoch re-weighting) against a transcription.

Reference: BalanceBenchmark, no official code found (GeWu-Lab/BalanceBenchmark @ 4c1482f,
``balancemm/trainer/GBlending_trainer.py``: ``training_step`` lines 292-303, the blended loss
``sum_k w_k CE(logits_k, y)``; the weights of ``super_epoch_origin`` lines 361-373, ``|G / O^2|``
normalised). Where ours departs, as ``gblending.py`` states, the transcription follows ours and says so:
BalanceBenchmark measures G and O by training a padded copy of the model for a super-epoch per head
(lines 306-360), ours on the run's own trajectory (per-sample mean losses of every head over the train
and validation splits, eval mode, at each super-epoch's start); and BalanceBenchmark's unimodal
"heads" are the fused head's shares ``W_m f_m + b / M`` (``avclassify_model.py:277-293``), where the
paper (Wang et al., CVPR 2020, Sec. 4) and ours give each modality its own classifier. The
coefficients compared are the blend weights.
"""

from __future__ import annotations

import torch
from _equivalence import TWO_MODALITIES, double, lockstep, make_trainer, snapshot, twin
from torch import nn

SPEC = {**TWO_MODALITIES, "method": "gblending", "method_params": {"super_epoch": 1}}


class Blended:
    def __init__(self, model, heads, modalities, loader):
        self.model, self.extra, self.mods, self.loader = model, [heads], modalities, loader
        params = [*model.parameters(), *heads.parameters()]
        self.optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)
        self.weights = dict.fromkeys([*modalities, "output"], 1 / (len(modalities) + 1))
        self.start = None
        self.coeff = self.grads = None

    def logits(self, batch):
        out = self.model(batch.inputs)
        return {**{m: self.extra[0].heads[m](out.features[m]) for m in self.mods}, "output": out.pred}

    @torch.no_grad()
    def measure(self):
        """Per-head mean loss on the train and validation splits (ours, see the docstring)."""
        self.model.eval()
        means = {}
        for split in ("train", "valid"):
            total, n = dict.fromkeys(self.weights, 0.0), 0
            for batch in self.loader(split, shuffle=False):
                batch = double(batch)
                for k, z in self.logits(batch).items():
                    total[k] += nn.functional.cross_entropy(z, batch.target).item() * len(batch)
                n += len(batch)
            means[split] = {k: v / n for k, v in total.items()}
        self.model.train()
        return means["train"], means["valid"]

    def step(self, batch, epoch, i) -> None:
        if i == 0:  # super_epoch 1: every epoch
            (now_train, now_valid) = self.measure()
            if self.start is not None:  # :361-373
                (pre_train, pre_valid), weights = self.start, {}
                for k in self.weights:
                    g = now_valid[k] - pre_valid[k]
                    o_pre = pre_valid[k] - pre_train[k]
                    o_now = now_valid[k] - now_train[k]
                    o = o_now - o_pre
                    weights[k] = abs((g) / (o**2))
                sums = sum(weights.values())
                self.weights = {k: w / sums for k, w in weights.items()}
            self.start = (now_train, now_valid)
        criterion = nn.CrossEntropyLoss()  # :295-302
        self.optimizer.zero_grad(set_to_none=True)
        loss = 0
        for k, z in self.logits(batch).items():
            loss += self.weights[k] * criterion(z, batch.target)
        loss.backward()
        self.coeff = list(self.weights.values())
        self.grads = snapshot([*self.model.parameters(), *self.extra[0].parameters()])
        self.optimizer.step()


def test_gblending_blend_and_reweighting_match_the_transcription(tmp_path):
    tr = make_trainer(tmp_path, epochs=3, **SPEC)
    ref = Blended(twin(tr.model), twin(tr.method.heads), tr.ctx.modalities, tr.loader)
    weights = []

    def coefficients():
        weights.append(list(tr.method.weights.values()))
        return weights[-1]

    diff = lockstep(tr, ref, 3, coefficients, extra=[tr.method.heads])
    assert diff.steps == 12 and max(abs(w - 1 / 3) for w in weights[-1]) > 1e-3  # re-weighted
    assert diff.coefficients < 1e-12 and diff.gradients < 1e-12 and diff.parameters < 1e-12
