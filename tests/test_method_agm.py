from __future__ import annotations

import math

import pytest
import torch
from _method_helpers import assert_resume_is_exact, first_batch, grads_after, trainer
from conftest import small_spec

from mmbalance.methods.agm import agm_coefficients
from mmbalance.training import runner
from mmbalance.training.method_parts import scale_grad, shapley_values


def test_two_modality_shapley_is_the_official_split():
    a, v, both = torch.tensor(2.0), torch.tensor(5.0), torch.tensor(11.0)
    phi = shapley_values({frozenset("a"): a, frozenset("v"): v, frozenset("av"): both}, ["a", "v"])
    # GradMod: m_a = (total - pad_audio + pad_visual) / 2 = (11 - 5 + 2) / 2 = 4; m_v = (11 - 2 + 5) / 2 = 7
    assert phi["a"].item() == pytest.approx(4.0) and phi["v"].item() == pytest.approx(7.0)


def test_three_modality_shapley_matches_the_urfunny_code():
    g = torch.Generator().manual_seed(0)
    f = {frozenset(s): torch.randn((), generator=g) for s in ["t", "a", "v", "ta", "tv", "av", "tav"]}
    only = lambda s: f[frozenset(s)]  # noqa: E731  (f_{-x} in the code = output with x zeroed)
    m_t = (only("tav") - only("av") + only("t")) / 3 + (only("ta") - only("a") + only("tv") - only("v")) / 6
    phi = shapley_values(f, ["t", "a", "v"])
    assert phi["t"].item() == pytest.approx(m_t.item(), abs=1e-6)
    assert sum(phi.values()).item() == pytest.approx(only("tav").item(), abs=1e-6)


def test_coefficients_hand_computed():
    # ratio = exp((mean - s) * 2) = (e, 1/e); target = 1; coeff = exp(alpha * (1 - ratio))
    ratio, coeff = agm_coefficients(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 1.5]), alpha=1.0, clamp=10.0)
    assert ratio.tolist() == pytest.approx([math.e, 1 / math.e])
    assert coeff.tolist() == pytest.approx([math.exp(1 - math.e), math.exp(1 - 1 / math.e)])
    _, capped = agm_coefficients(torch.tensor([3.0, 1.0]), torch.tensor([1.0, 3.0]), alpha=1.0, clamp=0.5)
    assert capped[0].item() == pytest.approx(math.exp(0.5))  # r* - r = e^4 - e^-4 capped at 0.5


def test_scale_grad_scales_only_the_gradient():
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    y = scale_grad(x, 0.25)
    assert torch.equal(y, x)
    y.sum().backward()
    assert x.grad.tolist() == [0.25, 0.25]


def test_masked_forwards_run_in_eval_mode_and_gradients_follow_the_coefficients(tmp_path):
    tr = trainer(tmp_path, "agm", alpha=1e-9, clip=False)
    batch = first_batch(tr)
    modes = []
    tr.model.encoders["m0"].register_forward_pre_hook(lambda mod, args: modes.append(mod.training))
    out = tr.method.forward(tr.model, batch, tr.ctx)
    assert modes == [True] + [False] * 6 and tr.model.training  # 2^3 - 1 forwards, then back in train mode
    assert torch.allclose(out.pred, tr.model(batch.inputs).pred, atol=1e-5)
    assert tr.method.it == 1 and tr.method.running.tolist() == pytest.approx(tr.method.scores.tolist())
    plain = grads_after(tr, batch, hook=False)
    assert tr.method.scale.tolist() == pytest.approx([1.0, 1.0, 1.0])  # alpha ~ 0: AGM is joint training
    for name, g in grads_after(tr, batch).items():
        assert torch.allclose(g, plain[name], atol=1e-5), name
    tr.method.p = tr.method.Params(alpha=2.0, clip=False)
    tr.method.running = torch.tensor([0.1, 5.0, 5.0])  # m0 far better than its history -> boosted others
    modulated = grads_after(tr, batch)
    ids = {id(p) for m in tr.modalities for p in tr.model.encoder_parameters(m)}
    encoder = [n for n, p in tr.model.named_parameters() if id(p) in ids]
    assert encoder and any(not torch.allclose(modulated[n], plain[n]) for n in encoder)


def test_one_epoch_run_is_finite(tmp_path):
    r = runner.train(small_spec(method="agm", epochs=1), results=tmp_path, progress=False)
    assert r.status == "done" and math.isfinite(r.final["test"]["accuracy"])


def test_resume_is_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "agm")
