"""AGM: our ``Trainer.train_batch`` against a transcription of the official training step.

Official source: lihong2303/AGM_ICCV2023 @ 5a65542 (the repository decides where BalanceBenchmark's
re-implementation differs): ``model/CREMAD_net.py`` ``Modality_Visual`` / ``Modality_Audio`` /
``Modality_out`` lines 7-23 and ``GradMod`` lines 25-72 (backward hooks that scale the gradient
into each Shapley output; the zero-padded forwards in eval mode *with* gradients);
``run/CREMAD_main.py::train`` lines 48, 63-69, 108-166 (scores, ratios, coefficients, running
means) and 233-244 (conditional clipping); epochs are 1-based (line 611: ``start_epoch = 1``).

What BalanceBenchmark (``balancemm/trainer/AGM_trainer.py``) does differently, and the official code
does not: ``ratio = exp(M/(M-1) * (s_m - mean))`` (line 571, the opposite sign: for two modalities
its coefficients come out swapped), masked forwards under ``no_grad`` (lines 172-175), and a
parameter-wise scaling of the encoder gradients (lines 576-581) instead of the hooks.
"""

from __future__ import annotations

import math

import torch
from _equivalence import MaxDiff, Ours, make_trainer, snapshot, training_batches, twin
from torch import nn

ALPHA = 1.0
SPEC = {
    "dataset_params": {"modalities": 2, "n_train": 128, "n_valid": 32, "n_test": 32},
    "model_params": {"hidden": 16, "feature_dim": 8},
    "batch_size": 32,
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1.0e-4},
    "method": "agm",
    "method_params": {"alpha": ALPHA, "modulation_ends": 1},  # 0-based: epochs 0 and 1
}
MODULATION_STARTS, MODULATION_ENDS = 0, 2  # the same window on the official 1-based epochs


class Modality_Visual(nn.Module):  # noqa: N801 (the official names), CREMAD_net.py:7-11
    def forward(self, total_out, pad_visual_out, pad_audio_out):
        return 0.5 * (total_out - pad_visual_out + pad_audio_out)


class Modality_Audio(nn.Module):  # noqa: N801, CREMAD_net.py:13-17
    def forward(self, total_out, pad_visual_out, pad_audio_out):
        return 0.5 * (total_out - pad_audio_out + pad_visual_out)


class Modality_out(nn.Module):  # noqa: N801, CREMAD_net.py:19-23
    def forward(self, x):
        return x


class GradMod(nn.Module):
    """CREMAD_net.py:25-72, around a copy of our model: ``net(audio, visual, pad_audio, pad_visual)``
    zeroes the raw inputs (``AVClassifier.forward`` lines 100-105)."""

    def __init__(self, model, modalities):
        super().__init__()
        self.model, (self.audio, self.visual) = model, modalities
        self.m_v, self.m_a = Modality_Visual(), Modality_Audio()
        self.m_v_o, self.m_a_o = Modality_out(), Modality_out()
        self.scale_a = self.scale_v = 1.0
        self.m_a_o.register_full_backward_hook(self.hooka)
        self.m_v_o.register_full_backward_hook(self.hookv)

    def net(self, inputs, pad_audio=False, pad_visual=False):
        a, v = inputs[self.audio], inputs[self.visual]
        a = torch.zeros_like(a) if pad_audio else a
        v = torch.zeros_like(v) if pad_visual else v
        return self.model({self.audio: a, self.visual: v}).pred

    def hooka(self, m, ginp, gout):
        gnew = ginp[0].clone()
        return (gnew * self.scale_a,)

    def hookv(self, m, ginp, gout):
        gnew = ginp[0].clone()
        return (gnew * self.scale_v,)

    def update_scale(self, coeff_a, coeff_v):
        self.scale_a, self.scale_v = coeff_a, coeff_v

    def forward(self, inputs):
        total_out = self.net(inputs, pad_audio=False, pad_visual=False)  # :59
        self.model.eval()  # :61
        pad_visual_out = self.net(inputs, pad_audio=False, pad_visual=True)  # :62
        pad_audio_out = self.net(inputs, pad_audio=True, pad_visual=False)  # :63
        zero_padding_out = self.net(inputs, pad_audio=True, pad_visual=True)  # :64
        self.model.train()  # :65-66
        m_a = self.m_a_o(self.m_a(total_out, pad_visual_out, pad_audio_out))  # :67
        m_v = self.m_v_o(self.m_v(total_out, pad_visual_out, pad_audio_out))  # :68
        return total_out, pad_visual_out, pad_audio_out, zero_padding_out, m_a + m_v  # :72


class Official:
    """CREMAD_main.py::train, one iteration of the multimodal AGM branch."""

    def __init__(self, model, modalities):
        self.model = GradMod(model, modalities)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
        self.train_score_a = self.train_score_v = 0.0  # each_epoch_score_a / _v start at 0.
        self.coeff = self.grads = None

    def step(self, batch, epoch, step, total_batch) -> None:
        model, label = self.model, batch.target
        criterion, softmax = nn.CrossEntropyLoss(), nn.Softmax(dim=1)
        iteration = (epoch - 1) * total_batch + step + 1  # :48
        total_out, pad_visual_out, pad_audio_out, zero_padding_out, out = model(batch.inputs)  # :64
        out_a = 0.5 * (total_out - pad_audio_out + pad_visual_out)  # :65
        out_v = 0.5 * (total_out - pad_visual_out + pad_audio_out)  # :66
        loss = criterion(out, label)  # :69
        self.optimizer.zero_grad()  # :108
        score_audio = 0.0  # :130-143
        score_visual = 0.0
        for k in range(out_a.size(0)):
            if torch.isinf(torch.log(softmax(out_a)[k][label[k]])) or softmax(out_a)[k][label[k]] < 1e-8:
                score_audio += -torch.log(torch.tensor(1e-8, dtype=out_a.dtype))
            else:
                score_audio += -torch.log(softmax(out_a)[k][label[k]])
            if torch.isinf(torch.log(softmax(out_v)[k][label[k]])) or softmax(out_v)[k][label[k]] < 1e-8:
                score_visual += -torch.log(torch.tensor(1e-8, dtype=out_v.dtype))
            else:
                score_visual += -torch.log(softmax(out_v)[k][label[k]])
        score_audio = score_audio / out_a.size(0)
        score_visual = score_visual / out_v.size(0)
        ratio_a = math.exp(score_visual.item() - score_audio.item())  # :145
        ratio_v = math.exp(score_audio.item() - score_visual.item())  # :146
        optimal_ratio_a = math.exp(self.train_score_v - self.train_score_a)  # :148
        optimal_ratio_v = math.exp(self.train_score_a - self.train_score_v)  # :149
        coeff_a = math.exp(ALPHA * (min(optimal_ratio_a - ratio_a, 10)))  # :151
        coeff_v = math.exp(ALPHA * (min(optimal_ratio_v - ratio_v, 10)))  # :152
        self.train_score_a = self.train_score_a * (iteration - 1) / iteration + score_audio.item() / iteration
        self.train_score_v = (
            self.train_score_v * (iteration - 1) / iteration + score_visual.item() / iteration
        )
        if MODULATION_STARTS <= epoch <= MODULATION_ENDS:  # :159-165
            model.update_scale(coeff_a, coeff_v)
        loss.backward()  # :166 (and :232 outside the window: the scales keep their last value)
        grad = model.model.head.weight.grad  # :233-238, fc_out of the late-fusion head
        if torch.max(grad) > 1 or torch.min(grad) < -1:
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        self.coeff = [model.scale_a, model.scale_v]
        self.grads = snapshot(model.model.parameters())
        self.optimizer.step()  # :244


def test_agm_step_matches_the_official_gradmod_and_train_loop(tmp_path):
    tr = make_trainer(tmp_path, **SPEC)
    ours, ref = Ours(tr), Official(twin(tr.model), tr.ctx.modalities)
    diff, per_epoch = MaxDiff(), {}
    for epoch, i, batch in training_batches(tr, 3):
        ours.step(epoch, i, batch)
        ref.step(batch, epoch + 1, i, tr.steps_per_epoch)  # the official epochs count from 1
        per_epoch.setdefault(epoch, []).append(tuple(ref.coeff))
        diff.add(tr.method.scale, ref.coeff, ours.grads, ref.grads, tr.model, ref.model.model)
    print("agm:", diff)
    assert diff.steps == 12
    assert (
        len(set(per_epoch[0] + per_epoch[1])) > 1 and len(set(per_epoch[2])) == 1
    )  # frozen after the window
    assert diff.coefficients < 1e-12 and diff.gradients < 1e-12 and diff.parameters < 1e-12


def test_agm_default_window_is_the_official_one_on_0_based_epochs():
    """utils/config.py: modulation_starts 0, modulation_ends 20 on 1-based epochs = epochs 0..19 here."""
    from mmbalance.methods.agm import AGMParams

    p = AGMParams()
    assert (p.modulation_starts, p.modulation_ends) == (0, 19)
