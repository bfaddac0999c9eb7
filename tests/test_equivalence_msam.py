"""M-SAM: our ``Trainer.train_batch`` against a transcription of the update rule as restated.

There is no official code (OpenReview 22O1ejTxj3: "The code will be released") and the paper's
algorithm box was not available; the source transcribed is the restatement that agrees with the one
``methods/msam.py`` was written from, junaidaliop.github.io/zij/math/msammodalityawaresam/:

    m_d = argmax_m v_m;  L_d = v_{m_d} l;  L_s = sum_{m != m_d} v_m l
    eps = rho grad L_d(theta) / ||grad L_d(theta)||
    theta <- theta - eta [grad L_d(theta + eps) + grad L_s(theta) + lambda theta]

with v_m the Shapley value of modality m in the batch accuracy (the abstract: "based on modalities'
contribution in the accuracy using Shapley"), each coalition evaluated with the other inputs zeroed.
``weights: shapley`` is that rule; ``weights: normalised`` (our default) replaces v by
relu(v) / sum relu(v) in it.
"""

from __future__ import annotations

import itertools
from math import factorial

import pytest
import torch
from _equivalence import MaxDiff, Ours, make_trainer, snapshot, training_batches, twin
from torch import nn

RHO = 0.05
SPEC = {
    "dataset_params": {"n_train": 128, "n_valid": 32, "n_test": 32},
    "model_params": {"hidden": 16, "feature_dim": 8},
    "batch_size": 32,
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.0, "weight_decay": 1.0e-4},
    "method": "msam",
}


@torch.no_grad()
def shapley_of_accuracy(model, batch, mods) -> dict[str, float]:
    """v_m = sum_{S not containing m} |S|! (M-|S|-1)! / M! [acc(S + m) - acc(S)], acc(empty) = 0."""
    model.eval()

    def acc(keep) -> float:
        if not keep:
            return 0.0
        x = {m: t if m in keep else torch.zeros_like(t) for m, t in batch.inputs.items()}
        return (model(x).pred.argmax(1) == batch.target).double().mean().item()

    n, v = len(mods), {}
    for m in mods:
        others = [k for k in mods if k != m]
        v[m] = sum(
            factorial(len(s)) * factorial(n - len(s) - 1) / factorial(n) * (acc({*s, m}) - acc(set(s)))
            for r in range(n)
            for s in itertools.combinations(others, r)
        )
    model.train()
    return v


class Restated:
    def __init__(self, model, weights: str):
        self.model, self.weights = model, weights
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=1e-4)  # eta, lambda
        self.coeff = self.grads = None

    def step(self, batch, mods) -> None:
        model, params = self.model, list(self.model.parameters())
        v = shapley_of_accuracy(model, batch, mods)
        d = max(mods, key=v.get)  # the dominant modality
        if self.weights == "normalised":
            pos = {m: max(x, 0.0) for m, x in v.items()}
            v = {m: x / sum(pos.values()) for m, x in pos.items()}
        w_d, w_s = v[d], sum(x for m, x in v.items() if m != d)
        loss = nn.functional.cross_entropy(model(batch.inputs).pred, batch.target)
        g = torch.autograd.grad(loss, params)
        grad_ld = [w_d * x for x in g]  # grad L_d(theta)
        norm = torch.sqrt(sum((x * x).sum() for x in grad_ld))
        eps = [RHO * x / norm for x in grad_ld]
        with torch.no_grad():
            for p, e in zip(params, eps, strict=True):
                p.add_(e)
        loss_adv = w_d * nn.functional.cross_entropy(model(batch.inputs).pred, batch.target)  # L_d(theta+eps)
        g_adv = torch.autograd.grad(loss_adv, params)
        with torch.no_grad():
            for p, e, ga, gs in zip(params, eps, g_adv, g, strict=True):
                p.sub_(e)
                p.grad = ga + w_s * gs  # grad L_d(theta + eps) + grad L_s(theta)
        self.coeff = [v[m] for m in mods]
        self.grads = snapshot(params)
        self.optimizer.step()  # + lambda theta (weight decay), times eta


@pytest.mark.parametrize("weights", ["shapley", "normalised"])
def test_msam_step_matches_the_restated_update(tmp_path, weights):
    tr = make_trainer(tmp_path, **{**SPEC, "method_params": {"rho": RHO, "weights": weights}})
    ours, ref = Ours(tr), Restated(twin(tr.model), weights)
    diff = MaxDiff()
    for epoch, i, batch in training_batches(tr, 2):
        ours.step(epoch, i, batch)
        ref.step(batch, tr.ctx.modalities)
        diff.add(
            [tr.method.w[m] for m in tr.ctx.modalities], ref.coeff, ours.grads, ref.grads, tr.model, ref.model
        )
    print(f"msam ({weights}):", diff)
    assert diff.steps == 8
    assert diff.coefficients < 1e-12 and diff.gradients < 1e-12 and diff.parameters < 1e-12
