"""LFM: our ``Trainer.train_batch`` against a transcription of the official training step, float64.

Official side: njustkmg/NeurIPS24-LFM @ ad44fa0. The model ``model/AudioVideo.py:46-67`` (two encoders,
``cls_a`` and ``cls_v`` each an ``nn.Linear(512, C)`` with its own bias, ``result_b = result_v + result_a``);
the step ``Crema_epoch.py:56-73`` (``train_audio_video``) with ``Alignment`` 38-45 and
``getAlpha_Learnable_Fitted`` 47-53, the schedule evaluated at the epoch as in lines 193-197; the optimiser
``optim.SGD(model.parameters(), lr, momentum, weight_decay)`` (186-188). The classifiers start from our
head's columns and b / 2, as our per-modality biases do.

Mutation proof (run once each, not committed), in ``methods/lfm.py``: the old shared bias b / 2
(``model.unimodal_logits(out.features)`` in ``forward``) fails it with max |Δ| gradients 3.3e-2,
parameters 2.6e-2 over 8 steps; ``out.pred.detach()`` in ``loss`` with 3.0e-2 / 2.2e-2. Unmutated: 0 / 0 / 0.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from _equivalence import MaxDiff, Ours, make_trainer, snapshot, training_batches
from torch import nn

SPEC = {
    "dataset_params": {"n_train": 128, "n_valid": 32, "n_test": 32, "modalities": 2},
    "model_params": {"hidden": 16, "feature_dim": 8},
    "batch_size": 32,
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1.0e-4},
    "method": "lfm",
}


def Alignment(p, q):  # noqa: N802 -- Crema_epoch.py:38-45, verbatim
    p = F.softmax(p, dim=-1)
    q = F.softmax(q, dim=-1)
    m = 0.5 * p + 0.5 * q
    kl_p_m = F.kl_div(p.log(), m, reduction="batchmean")
    kl_q_m = F.kl_div(q.log(), m, reduction="batchmean")
    js_score = 0.5 * (kl_p_m + kl_q_m)
    return js_score


def getAlpha_Learnable_Fitted(epoch):  # noqa: N802 -- Crema_epoch.py:47-53, verbatim
    coef_alpha1 = [
        2.04623704e-01,
        3.35472727e-03,
        1.22989557e-04,
        -2.92947416e-06,
        2.23835486e-08,
        -5.39717505e-11,
    ]
    coef_alpha2 = [
        7.95376296e-01,
        -3.35472727e-03,
        -1.22989557e-04,
        2.92947416e-06,
        -2.23835486e-08,
        5.39717505e-11,
    ]
    alpha1 = sum(c * (epoch**i) for i, c in enumerate(coef_alpha1))
    alpha2 = sum(c * (epoch**i) for i, c in enumerate(coef_alpha2))
    return [alpha1, alpha2]


class AVClassifier(nn.Module):
    """AudioVideo.py:46-67 on our two encoders: ``cls_a`` / ``cls_v`` with their own biases."""

    def __init__(self, model):
        super().__init__()
        a, v = model.modalities
        self.audio_encoder, self.video_encoder = (
            copy.deepcopy(model.encoders[a]),
            copy.deepcopy(model.encoders[v]),
        )
        d, (c, _) = self.audio_encoder.out_dim, model.head.weight.shape
        self.cls_a, self.cls_v = nn.Linear(d, c).double(), nn.Linear(d, c).double()
        with torch.no_grad():
            self.cls_a.weight.copy_(model.head.weight[:, :d])
            self.cls_v.weight.copy_(model.head.weight[:, d:])
            self.cls_a.bias.copy_(model.head.bias / 2)
            self.cls_v.bias.copy_(model.head.bias / 2)

    def forward(self, audio, video):
        a_feature, v_feature = self.audio_encoder(audio), self.video_encoder(video)
        result_a, result_v = self.cls_a(a_feature), self.cls_v(v_feature)
        result_b = result_v + result_a
        return result_b, result_a, result_v, a_feature, v_feature


class Official:
    def __init__(self, model):
        self.model = AVClassifier(model)
        self.modalities = model.modalities
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
        self.cls_k = self.grads = None

    def step(self, epoch, batch) -> None:  # Crema_epoch.py:63-73
        model, criterion = self.model, nn.CrossEntropyLoss(reduction="none")
        self.cls_k = getAlpha_Learnable_Fitted(epoch)  # line 195
        a, v = self.modalities
        self.optimizer.zero_grad()
        o_b, o_a, o_v, a_f, v_f = model(batch.inputs[a], batch.inputs[v])
        loss_alignment = Alignment(o_a, o_v)
        loss_cls = criterion(0.5 * o_v + 0.5 * o_a, batch.target).mean()
        loss = 2 * (self.cls_k[0] * loss_cls + self.cls_k[1] * loss_alignment)
        loss.backward()
        self.grads = snapshot(self.ordered())
        self.optimizer.step()

    def ordered(self) -> list[nn.Parameter]:
        """The official parameters in the order of ours: encoders, then the classifiers' weights (our
        head's columns), then the two biases."""
        m = self.model
        return [*m.audio_encoder.parameters(), *m.video_encoder.parameters(), m.cls_a.weight, m.cls_v.weight,
                m.cls_a.bias, m.cls_v.bias]  # fmt: skip


class Listed:
    """Tensors where ``MaxDiff.add`` wants a model: ``parameters()`` lists them."""

    def __init__(self, tensors):
        self.tensors = tensors

    def parameters(self):
        return self.tensors


def ours_ordered(tr, grad: bool = False) -> list[torch.Tensor]:
    """Our parameters (or their gradients) in the official order, the head weight split in its two
    modality blocks (the code's ``cls_a.weight``, ``cls_v.weight``)."""
    model, d = tr.model, tr.model.encoders[tr.modalities[0]].out_dim

    def get(p):
        return (p.grad if p.grad is not None else torch.zeros_like(p)) if grad else p

    encoders = [get(p) for m in tr.modalities for p in model.encoders[m].parameters()]
    w = get(model.head.weight)
    return [*encoders, w[:, :d], w[:, d:], *(get(tr.method.bias[m]) for m in tr.modalities)]


def test_lfm_step_matches_the_official_step(tmp_path):
    tr = make_trainer(tmp_path, **SPEC)
    ours, ref = Ours(tr), Official(tr.model)
    captured = {}  # our gradients right before the optimiser step
    tr.optimizer.register_step_pre_hook(
        lambda *_: captured.update(grads=[g.clone() for g in ours_ordered(tr, True)])
    )
    diff = MaxDiff()
    for epoch, i, batch in training_batches(tr, 2):
        ours.step(epoch, i, batch)
        ref.step(epoch, batch)
        diff.add(tr.method.weights, ref.cls_k, captured["grads"], ref.grads, Listed(ours_ordered(tr)),
                 Listed(ref.ordered()))  # fmt: skip
    print("lfm:", diff)
    assert diff.steps == 8
    assert diff.coefficients < 1e-12 and diff.gradients < 1e-12 and diff.parameters < 1e-12
