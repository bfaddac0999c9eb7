"""MILES: our ``Trainer`` (``train_batch`` and the epoch hooks) against a transcription of the algorithm.

No official code was found and the paper's Algorithm 1 was not available; the source transcribed is
a third-party reimplementation that says it implements Algorithm 1: an ASGML project's
``scripts/train.py`` (``get_miles_optimizer``: one parameter group per encoder plus one for fusion and
heads; ``train_epoch_miles``: ``L = L_fusion + gamma * sum_m L_m``; the MILES loop: after every epoch,
accuracies on held-out data, then ``miles_adjust_learning_rates``). It measures the accuracies on its
test loader; here both sides use the validation split (``accuracy_split: valid``).
"""

from __future__ import annotations

import torch
from _equivalence import MaxDiff, Ours, make_trainer, snapshot, training_batches, twin
from torch import nn

TAU, MU, GAMMA, LR = 0.05, 0.5, 1.0, 0.05
SPEC = {
    "dataset_params": {"modalities": 2, "n_train": 128, "n_valid": 64, "n_test": 32},
    "model_params": {"hidden": 16, "feature_dim": 8},
    "batch_size": 32,
    "optim": {"name": "sgd", "lr": LR, "momentum": 0.9, "weight_decay": 1.0e-4},
    "method": "miles",
    "method_params": {"threshold": TAU, "reduction": MU, "gamma": GAMMA, "accuracy_split": "valid"},
}


def miles_adjust_learning_rates(optimizer, acc_multimodal, acc_per_modality, modalities, base_lr):
    """The reimplementation's ``miles_adjust_learning_rates`` (two modalities), groups by name."""
    utilization = {}
    for m in modalities:
        other_m = next(om for om in modalities if om != m)
        utilization[m] = (
            (acc_multimodal - acc_per_modality[other_m]) / acc_multimodal if acc_multimodal > 0 else 0.0
        )
    u_values = list(utilization.values())
    delta = abs(u_values[0] - u_values[1])
    groups = {g["name"]: g for g in optimizer.param_groups}
    if all(utilization[m] < 0 for m in modalities) or delta <= TAU:
        for m in modalities:
            groups[f"encoder_{m}"]["lr"] = base_lr
    else:
        dominant_m = max(utilization, key=utilization.get)
        m_a, m_b = modalities
        u_a, u_b = utilization[m_a], utilization[m_b]
        if u_a > 0 and u_b < 0 and delta > TAU:
            dominant_m = m_a
        elif u_a < 0 and u_b > 0 and delta > TAU:
            dominant_m = m_b
        elif u_a > 0 and u_b > 0 and delta > TAU:
            dominant_m = m_a if u_a > u_b else m_b
        for m in modalities:
            groups[f"encoder_{m}"]["lr"] = base_lr * MU if m == dominant_m else base_lr
    groups["fusion"]["lr"] = base_lr


class Reimplementation:
    def __init__(self, model, heads, modalities):
        self.model, self.heads, self.mods = model, heads, modalities
        groups = [
            {"params": list(model.encoders[m].parameters()), "lr": LR, "name": f"encoder_{m}"}
            for m in modalities
        ]
        rest = list(model.fusion.parameters()) + list(model.head.parameters()) + list(heads.parameters())
        groups.append({"params": rest, "lr": LR, "name": "fusion"})
        self.optimizer = torch.optim.SGD(
            groups, lr=LR, momentum=0.9, weight_decay=1e-4
        )  # get_miles_optimizer
        self.grads = None

    def step(self, batch) -> None:  # train_epoch_miles, one batch
        criterion = nn.CrossEntropyLoss()
        self.optimizer.zero_grad()
        out = self.model(batch.inputs)
        unimodal_logits = self.heads(self.model, out)
        loss = criterion(out.pred, batch.target) + GAMMA * sum(
            criterion(unimodal_logits[m], batch.target) for m in self.mods
        )
        loss.backward()
        self.grads = snapshot(self.model.parameters())
        self.optimizer.step()

    @torch.no_grad()
    def end_epoch(self, valid_batches) -> None:  # evaluate, then miles_adjust_learning_rates
        self.model.eval()
        correct, seen = {"fused": 0.0, **{m: 0.0 for m in self.mods}}, 0
        for batch in valid_batches:
            out = self.model(batch.inputs)
            for k, x in {"fused": out.pred, **self.heads(self.model, out)}.items():
                correct[k] += float((x.argmax(1) == batch.target).sum())
            seen += len(batch.target)
        self.model.train()
        acc = {k: v / seen for k, v in correct.items()}
        miles_adjust_learning_rates(self.optimizer, acc.pop("fused"), acc, self.mods, LR)

    def scales(self) -> list[float]:
        return [g["lr"] / LR for g in self.optimizer.param_groups[:-1]]


def test_miles_matches_the_reimplemented_algorithm(tmp_path):
    tr = make_trainer(tmp_path, **SPEC)
    mods = tr.ctx.modalities
    ours, ref = Ours(tr), Reimplementation(twin(tr.model), twin(tr.method.heads), mods)
    diff, reduced = MaxDiff(), set()
    for epoch, i, batch in training_batches(tr, 3):
        ours.step(epoch, i, batch)  # on_epoch_start applies the scales chosen after the last epoch
        ref.step(batch)
        ours_scales = [g["lr"] / LR for g in tr.optimizer.param_groups[: len(mods)]]
        diff.add(ours_scales, ref.scales(), ours.grads, ref.grads, tr.model, ref.model)
        reduced |= {s for s in ref.scales() if s != 1}
        if i == tr.steps_per_epoch - 1:
            ours.end_epoch()
            ref.end_epoch(list(tr.ctx.iterate("valid")))
    print("miles:", diff)
    assert diff.steps == 12 and reduced == {MU}
    assert diff.coefficients == 0 and diff.gradients < 1e-12 and diff.parameters < 1e-12
