"""InfoReg: our ``Trainer`` (step, anchor and Fisher trace) against a transcription of the released loop.

Official source: GeWu-Lab/InfoReg_CVPR2025 @ 41d887f, ``main.py::train_epoch`` lines 58-347: k from the
audio trace lines 64-72, the epoch's anchor ``global_model`` line 78, the three losses lines 154-216,
the scores and proximal coefficients lines 218-243, the Fisher trace of the audio encoder lines
104-118, 253-257 and 315-341; the trace list starts with 10 zeros (line 438), SGD line 458. Modality 0 is
the code's audio, 1 its visual. The gradient recordings of lines 164-211 (tensorboard only, zeroed
again at line 211) are left out.

Where ours departs (``inforeg.py``): the code's ``elif score_v < score_a`` (line 227) repeats the
first test, so visual is never pulled; ours pulls whichever modality leads, with its own trace's k.
The synthetic data here make m0 (audio) strong and m1 weak, so audio leads, so the two agree on every step here, and
the test asserts that ours never pulled m1. The unimodal heads are the model's ``unimodal_classifier``
(the code's ``head_audio``/``head_video`` are single Linear layers). The coefficients compared are
the proximal coefficients (beta, beta2) and k.
"""

from __future__ import annotations

import copy

import torch
from _equivalence import TWO_MODALITIES, lockstep, make_trainer, snapshot, training_batches, twin
from torch import nn

SPEC = {**TWO_MODALITIES, "method": "inforeg"}


class Released:
    def __init__(self, model, heads, modalities):
        self.model, self.extra, (self.audio, self.visual) = model, [heads], modalities
        params = [*model.parameters(), *heads.parameters()]
        self.optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)  # :458
        self.audio_trace_list = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]  # :438
        self.coeff = self.grads = None

    def start_epoch(self, epoch) -> None:
        if epoch == 0:  # :64-72
            self.k = 1
        else:
            tr1 = sum(self.audio_trace_list[-10:]) / 10
            tr2 = sum(self.audio_trace_list[-11:-1]) / 10
            self.k = (tr1 - tr2) / tr1
        self.global_model = copy.deepcopy(self.model)  # :78
        self.fim_audio = {  # :111-115, the audio encoder's Conv2d/Linear weights
            name: torch.zeros_like(module.weight)
            for name, module in self.model.encoders[self.audio].named_modules()
            if isinstance(module, (nn.Conv2d, nn.Linear)) and module.weight.requires_grad
        }

    def step(self, batch, epoch, i) -> None:
        if i == 0:
            self.start_epoch(epoch)
        model, label, k = self.model, batch.target, self.k
        criterion, softmax, tanh = nn.CrossEntropyLoss(), nn.Softmax(dim=1), nn.Tanh()
        self.optimizer.zero_grad()  # :136
        o = model(batch.inputs)  # :139
        out = o.pred
        out_a = self.extra[0].heads[self.audio](o.features[self.audio])
        out_v = self.extra[0].heads[self.visual](o.features[self.visual])
        loss = criterion(out, label)  # :154-156
        loss_out_v = criterion(out_v, label)
        loss_out_a = criterion(out_a, label)
        loss_out_v.backward(retain_graph=True)  # :214-216
        loss_out_a.backward(retain_graph=True)
        loss.backward()
        score_v = sum([softmax(out_v)[i][label[i]] for i in range(out_v.size(0))])  # :218-219
        score_a = sum([softmax(out_a)[i][label[i]] for i in range(out_a.size(0))])
        if (score_a > score_v) and k > 0.04:  # :222-234
            gap = tanh(score_a - score_v)
            beta = 0.95 * torch.exp(gap)
            beta2 = 0
        elif (score_v < score_a) and k > 0.04:
            gap = tanh(score_v - score_a)
            beta2 = 0.1 * torch.exp(gap)
            beta = 0
        else:
            beta = 0
            beta2 = 0
        audio_net = list(model.encoders[self.audio].parameters())
        visual_net = list(model.encoders[self.visual].parameters())
        with torch.no_grad():  # :237-243 (the code adds outside no_grad to leaf .grad: no graph either way)
            for model_param, global_model_param in zip(
                model.parameters(), self.global_model.parameters(), strict=True
            ):
                if model_param.requires_grad and any(model_param is param for param in audio_net):
                    model_param.grad += beta * (model_param - global_model_param)
                if model_param.requires_grad and any(model_param is param for param in visual_net):
                    model_param.grad += beta2 * (model_param - global_model_param)
        for name, module in model.encoders[self.audio].named_modules():  # :253-257
            if isinstance(module, (nn.Conv2d, nn.Linear)) and module.weight.requires_grad:
                self.fim_audio[name] += module.weight.grad * module.weight.grad
        self.coeff = [float(torch.as_tensor(c).detach()) for c in (beta, beta2, k)]
        self.grads = snapshot([*model.parameters(), *self.extra[0].parameters()])
        self.optimizer.step()  # :289

    def end_epoch(self, epoch) -> None:  # :315-341
        fim_trace_audio = 0
        for name in self.fim_audio:
            fim_trace_audio += self.fim_audio[name].mean().item()
        self.audio_trace_list.append(fim_trace_audio)


def audio_head_start(tr) -> None:
    """Train m0's encoder and unimodal head alone for five epochs (Adam), so that audio leads from the start."""
    m0 = tr.ctx.modalities[0]
    encoder, head = tr.model.encoders[m0], tr.method.heads.heads[m0]
    opt = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=0.01)
    for _, _, batch in training_batches(tr, 5):
        opt.zero_grad()
        nn.functional.cross_entropy(head(encoder(batch.inputs[m0])), batch.target).backward()
        opt.step()


def test_inforeg_matches_the_released_train_epoch(tmp_path):
    tr = make_trainer(tmp_path, epochs=4, **SPEC)
    audio_head_start(tr)
    ref = Released(twin(tr.model), twin(tr.method.heads), tr.ctx.modalities)
    betas, ks = [], []

    def coefficients():
        betas.append(tr.method.beta.tolist())
        ks.append(tr.method.k[0].item())
        return [*betas[-1], ks[-1]]

    diff = lockstep(tr, ref, 4, coefficients, extra=[tr.method.heads])
    assert diff.steps == 16
    assert all(b[1] == 0 for b in betas) and sum(b[0] > 0 for b in betas) >= 4  # audio pulled, never visual
    assert min(ks) < 1  # k computed from the trace (epochs 2 and 3), not only the first epochs' 1
    assert diff.coefficients < 1e-12 and diff.gradients < 1e-12 and diff.parameters < 1e-12
