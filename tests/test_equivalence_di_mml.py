"""DI-MML: our ``Trainer.train_batch`` and evaluation against a transcription of the official two
scripts, float64.

Official side: fanyunfeng-bit/DI-MML @ 83b9b7a. Stage 1 ``main_CFT.py``: ``train_epoch`` 71-98 (own
classifiers, the shared ``classifier`` on both modalities, ``SupConLoss`` from the contrast epoch),
``get_indices`` 154-210 (models in eval mode), the optimiser over both networks and the shared
classifier ``SGD(lr, momentum 0.9, weight_decay 1e-4)`` 249-250; ``loss/contrast_loss.py:4-36``
(``SupConLoss``). Stage 2 ``main_CFT_stage2.py``: ``train_combine_classifier_epoch`` 84-120 (frozen
encoders in eval mode, CE on the fusion classifier), its own ``SGD(classifier.parameters(), lr 1e-3,
momentum 0.9, weight_decay 1e-4)`` 284-286, and ``valid_combine_classifier`` 176-198 (the
confidence-weighted mix of the three classifiers). The modules start as copies of ours (the code's
``fusion_module.fc_out`` is our concat head); one run here is the code's stage 1 then stage 2.

Compared per step: gradients right before each optimiser step and parameters after it; per epoch, as
the coefficients, the evaluation's mixed logits on the test split and its accuracy.

Mutation proof (run once each, not committed), in ``methods/di_mml.py``: the mix's weights without the
temperature (``confidence.softmax(dim=0)`` in ``confidence_mix``; stage2_temperature is 3 here) fails it
with max |Δ| coefficients (mixed logits) 1.2e-3; the stage-2 step left to the run's optimiser (``return``
first in ``after_backward``) with gradients 0.32, parameters 5.0e-2; the contrast term dropped (``0 *``
before its sum in ``loss``) with gradients 9.5e-3. Unmutated: 2.8e-17 / 2.8e-17 / 1.4e-17 over 8 steps.
"""

from __future__ import annotations

import copy

import pytest
import torch
from _equivalence import MaxDiff, Ours, make_trainer, training_batches
from torch import nn

LR = 0.05
SPEC = {
    "dataset_params": {"n_train": 128, "n_valid": 32, "n_test": 32, "modalities": 2},
    "model_params": {"hidden": 16, "feature_dim": 8},
    "batch_size": 32,
    "epochs": 3,
    "optim": {"name": "sgd", "lr": LR, "momentum": 0.9, "weight_decay": 1.0e-4},
    "method": "di_mml",
    # stage 1: epoch 0 with the contrast term from the start; stage 2: epoch 1; T2 != 1 so the temperature counts
    "method_params": {"stage1_epochs": 1, "contrast_epoch": 0, "stage2_temperature": 3.0},
}


class SupConLoss(nn.Module):
    """loss/contrast_loss.py:4-36, verbatim."""

    def __init__(self, temperature=1):
        super().__init__()
        self.temperature = temperature

    def forward(self, a_features, v_features, audio_only_indices, image_only_indices, labels):
        batch_size = labels.shape[0]
        a_loss = 0
        v_loss = 0
        audio_only_features = a_features[:, audio_only_indices]
        image_audio_only_features = v_features[:, audio_only_indices]
        image_only_features = v_features[:, image_only_indices]
        audio_image_only_features = a_features[:, image_only_indices]
        T = self.temperature
        for i in range(batch_size):
            v_loss += -torch.log(
                torch.exp(
                    torch.matmul(image_audio_only_features[i], audio_only_features[i].detach().T) / T
                ).sum()
                / torch.exp(
                    torch.matmul(image_audio_only_features[i], audio_only_features.detach().T) / T
                ).sum()
            )
            a_loss += -torch.log(
                torch.exp(
                    torch.matmul(audio_image_only_features[i], image_only_features[i].detach().T) / T
                ).sum()
                / torch.exp(
                    torch.matmul(audio_image_only_features[i], image_only_features.detach().T) / T
                ).sum()
            )
        return v_loss / batch_size + a_loss / batch_size


def get_indices(model1, model2, batches, n_classes):
    """main_CFT.py:165-210 (models in eval mode; class means of the train split's features)."""
    with torch.no_grad():
        model1.eval()
        model2.eval()
        feats_a, feats_v, labels = [], [], []
        for x_a, x_v, label in batches:
            feats_a.append(model1.net(x_a))
            feats_v.append(model2.net(x_v))
            labels.append(label)
        total_audio_features, total_image_features = torch.cat(feats_a), torch.cat(feats_v)
        labels = torch.cat(labels)
        D = total_audio_features.shape[1]
        cnts = torch.bincount(labels, minlength=n_classes).double()
        a_h = (
            torch.zeros(n_classes, D, dtype=torch.float64).index_add_(0, labels, total_audio_features).T
            / cnts
        ).T
        v_h = (
            torch.zeros(n_classes, D, dtype=torch.float64).index_add_(0, labels, total_image_features).T
            / cnts
        ).T
        dist_a = torch.abs(total_audio_features.unsqueeze(1).repeat(1, n_classes, 1) - a_h)
        dist_v = torch.abs(total_image_features.unsqueeze(1).repeat(1, n_classes, 1) - v_h)
        argmin_a = (torch.argmin(dist_a, dim=1) == labels.unsqueeze(1).repeat(1, D)).float()
        argmin_v = (torch.argmin(dist_v, dim=1) == labels.unsqueeze(1).repeat(1, D)).float()
        top_audio_indices = torch.nonzero(torch.mean(argmin_a, dim=0) > torch.mean(argmin_a))[:, 0]
        top_image_indices = torch.nonzero(torch.mean(argmin_v, dim=0) > torch.mean(argmin_v))[:, 0]
        audio_only_indices = list(set(top_audio_indices.tolist()) - set(top_image_indices.tolist()))
        image_only_indices = list(set(top_image_indices.tolist()) - set(top_audio_indices.tolist()))
    return sorted(audio_only_indices), sorted(image_only_indices)


class UniNet(nn.Module):
    """``AClassifier`` / ``VClassifier`` (models/basic_model.py:7-61): ``net`` and its ``classifier``."""

    def __init__(self, encoder, classifier):
        super().__init__()
        self.net, self.classifier = copy.deepcopy(encoder), copy.deepcopy(classifier)

    def forward(self, x):
        f = self.net(x)
        return f, self.classifier(f)


class Official:
    def __init__(self, tr):
        a, v = tr.modalities
        self.modalities, self.n_classes = (a, v), tr.task.num_classes
        self.model1 = UniNet(tr.model.encoders[a], tr.method.heads.heads[a])
        self.model2 = UniNet(tr.model.encoders[v], tr.method.heads.heads[v])
        self.classifier = copy.deepcopy(tr.method.shared)  # main_CFT.py:246
        self.fc_out = copy.deepcopy(tr.model.head)  # main_CFT_stage2.py:280, ConcatFusion.fc_out
        parameters = (
            list(self.model1.parameters())
            + list(self.model2.parameters())
            + list(self.classifier.parameters())
        )
        self.optimizer = torch.optim.SGD(
            parameters, lr=LR, momentum=0.9, weight_decay=1e-4
        )  # main_CFT.py:250
        self.stage2_optimizer = None
        self.indices = self.grads = None

    def params(self) -> list[nn.Parameter]:
        return [*self.model1.parameters(), *self.model2.parameters(), *self.classifier.parameters(),
                *self.fc_out.parameters()]  # fmt: skip

    def capture(self, optimizer) -> None:
        """The gradients ``optimizer`` steps with (stage 2 leaves stage 1's last ones on the encoders, unused)."""
        stepped = {id(p) for g in optimizer.param_groups for p in g["params"]}
        self.grads = [p.grad.clone() if id(p) in stepped and p.grad is not None else torch.zeros_like(p)
                      for p in self.params()]  # fmt: skip

    def stage1_step(self, batch) -> None:  # main_CFT.py:76-98
        a, v = self.modalities
        label = batch.target
        criterion, criterion2 = nn.CrossEntropyLoss(), SupConLoss(1.0)
        self.model1.train(), self.model2.train(), self.classifier.train()
        self.optimizer.zero_grad()
        a_f, out1 = self.model1(batch.inputs[a])
        v_f, out2 = self.model2(batch.inputs[v])
        outa, outv = self.classifier(a_f), self.classifier(v_f)
        loss_align_a, loss_align_v = criterion(outa, label), criterion(outv, label)
        loss_a, loss_v = criterion(out1, label), criterion(out2, label)
        loss_c = criterion2(a_f, v_f, *self.indices, label)  # epoch >= contrast epoch (0 here)
        loss = loss_a + loss_v + loss_align_a * 1.0 + loss_align_v * 1.0 + loss_c
        loss.backward()
        self.capture(self.optimizer)
        self.optimizer.step()

    def stage2_step(self, batch) -> None:  # main_CFT_stage2.py:84-118
        if self.stage2_optimizer is None:  # lines 284-285
            self.stage2_optimizer = torch.optim.SGD(
                self.fc_out.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4
            )
        a, v = self.modalities
        self.fc_out.train()
        self.model1.net.eval(), self.model2.net.eval()
        self.stage2_optimizer.zero_grad()
        with torch.no_grad():
            a_features, v_features = self.model1.net(batch.inputs[a]), self.model2.net(batch.inputs[v])
        out3 = self.fc_out(torch.cat((a_features, v_features), dim=1))
        nn.CrossEntropyLoss()(out3, batch.target).backward()
        self.capture(self.stage2_optimizer)
        self.stage2_optimizer.step()

    @torch.no_grad()
    def valid(self, batches, temperature) -> tuple[torch.Tensor, float]:
        """main_CFT_stage2.py:176-198: the mixed logits of every test sample and the accuracy."""
        a, v = self.modalities
        softmax, softmax2 = nn.Softmax(dim=1), nn.Softmax(dim=0)
        for m in (self.model1, self.model2, self.fc_out):
            m.eval()
        outs, correct, num = [], 0, 0
        for batch in batches:
            audio_features, visual_features = (
                self.model1.net(batch.inputs[a]),
                self.model2.net(batch.inputs[v]),
            )
            out1, out2 = self.model1.classifier(audio_features), self.model2.classifier(visual_features)
            out3 = self.fc_out(torch.cat((audio_features, visual_features), dim=1))
            prediction1, prediction2, prediction3 = softmax(out1), softmax(out2), softmax(out3)
            w = torch.cat([prediction1.max(1)[0].unsqueeze(0), prediction2.max(1)[0].unsqueeze(0),
                           prediction3.max(1)[0].unsqueeze(0)])  # fmt: skip
            w = softmax2(w / temperature)
            n_classes = out1.shape[1]
            out = (out1 * (w[0].unsqueeze(1).repeat(1, n_classes)) + out2 * (w[1].unsqueeze(1).repeat(1, n_classes))
                   + out3 * (w[2].unsqueeze(1).repeat(1, n_classes)))  # fmt: skip
            outs.append(out)
            correct += (softmax(out).argmax(1) == batch.target).sum().item()
            num += len(batch.target)
        return torch.cat(outs), 100 * correct / num


class Listed:
    def __init__(self, tensors):
        self.tensors = tensors

    def parameters(self):
        return self.tensors


def ours_params(tr) -> list[nn.Parameter]:
    a, v = tr.modalities
    heads = tr.method.heads.heads
    return [*tr.model.encoders[a].parameters(), *heads[a].parameters(), *tr.model.encoders[v].parameters(),
            *heads[v].parameters(), *tr.method.shared.parameters(), *tr.model.head.parameters()]  # fmt: skip


@torch.no_grad()
def our_mix(tr, batches) -> torch.Tensor:
    tr.model.eval()
    tr.ctx.training = False
    out = torch.cat([tr.method.forward(tr.model, b, tr.ctx).pred for b in batches])
    tr.ctx.training = True
    return out


@pytest.mark.filterwarnings("ignore:The use of `x.T`")  # the verbatim SupConLoss transposes vectors
def test_di_mml_matches_the_official_two_stages(tmp_path):
    tr = make_trainer(tmp_path, **SPEC)
    ref = Official(tr)
    ours = Ours(tr)
    captured = {}  # our gradients right before whichever optimiser steps
    for opt in (tr.optimizer, tr.method.stage2_optimizer):
        opt.register_step_pre_hook(
            lambda o, *_: captured.update(grads=[p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                                                 for p in ours_params(tr)]) if o is not tr.optimizer or tr.ctx.epoch < 1 else None
        )  # fmt: skip
    a, v = tr.modalities
    train = [(b.inputs[a], b.inputs[v], b.target) for b in tr.ctx.iterate("train")]
    ref.indices = get_indices(ref.model1, ref.model2, train, ref.n_classes)
    test = list(tr.ctx.iterate("test"))
    diff = MaxDiff()
    for epoch, i, batch in training_batches(tr, 2):
        ours.step(epoch, i, batch)
        if epoch == 0 and i == 0:
            assert [tr.method.only[m].nonzero()[:, 0].tolist() for m in (a, v)] == list(ref.indices)
            assert ref.indices[0] and ref.indices[1]  # the contrast term has dimensions to work on
        (ref.stage1_step if epoch < 1 else ref.stage2_step)(batch)
        diff.add([], [], captured["grads"], ref.grads, Listed(ours_params(tr)), Listed(ref.params()))
        if i == tr.steps_per_epoch - 1:
            ours.end_epoch()
            mix, acc = ref.valid(test, 3.0)
            our = our_mix(tr, test)
            diff.coefficients = max(diff.coefficients, (our - mix).abs().max().item())
            target = torch.cat([b.target for b in test])
            assert 100 * (our.argmax(1) == target).double().mean().item() == pytest.approx(acc, abs=1e-9)
    print("di_mml:", diff)
    assert diff.steps == 8
    assert diff.coefficients < 1e-12 and diff.gradients < 1e-12 and diff.parameters < 1e-12
