from __future__ import annotations

import math

import pytest
import torch
from _method_helpers import assert_resume_is_exact, first_batch, grads_after, trainer

from mmbalance.common.spec import SpecError, validate_spec
from mmbalance.methods.ogm_ge import ogm_coefficients, selected_parameters, true_class_scores
from mmbalance.training.method import MethodNotApplicable


def official_two_modality(score_a: float, score_v: float, alpha: float) -> tuple[float, float]:
    """GeWu-Lab/OGM-GE_CVPR2022 main.py (HEAD), written out for two modalities."""
    ratio_v = score_v / score_a
    ratio_a = 1 / ratio_v
    if ratio_v > 1:
        return 1.0, 1 - math.tanh(alpha * max(ratio_v, 0))
    return 1 - math.tanh(alpha * max(ratio_a, 0)), 1.0


def test_score_is_sum_of_true_class_probabilities():
    m0 = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])  # softmax rows (0.25, 0.75) and (0.5, 0.5)
    m1 = torch.tensor([[math.log(4.0), 0.0], [0.0, 0.0]])  # rows (0.8, 0.2) and (0.5, 0.5)
    scores = true_class_scores(torch.stack([m0, m1]), torch.tensor([1, 0]))
    assert scores.tolist() == pytest.approx([0.75 + 0.5, 0.2 + 0.5])
    seg = torch.zeros(2, 1, 2, 2, 2)  # every pixel 0.5 / 0.5 -> 4 pixels x 0.5 per modality
    assert true_class_scores(seg, torch.zeros(1, 2, 2, dtype=torch.long)).tolist() == pytest.approx(
        [2.0, 2.0]
    )


@pytest.mark.parametrize("scores", [(3.0, 6.0), (6.0, 3.0), (5.0, 4.0)])
def test_two_modalities_equal_the_official_formula(scores):
    ratio, coeff = ogm_coefficients(scores, alpha=0.1)
    assert coeff == pytest.approx(official_two_modality(*scores, alpha=0.1))
    assert ratio == pytest.approx([scores[0] / scores[1], scores[1] / scores[0]])


def test_hand_computed_values_and_the_original_variant():
    # s_v / s_a = 2: 1 - tanh(0.1 * 2) = 0.8026247; original form 1 - tanh(0.1 * (2 - 1)) = 0.9003320
    _, coeff = ogm_coefficients([3.0, 6.0], alpha=0.1)
    assert coeff == pytest.approx([1.0, 0.8026247], abs=1e-6)
    _, coeff = ogm_coefficients([3.0, 6.0], alpha=0.1, minus_one=True)
    assert coeff == pytest.approx([1.0, 0.9003320], abs=1e-6)


def test_three_modalities_ratio_against_the_mean_of_the_others():
    # ratios: 4 / mean(2, 2) = 2, 2 / mean(4, 2) = 2/3, 2/3; only m0 is damped: 1 - tanh(0.8 * 2) = 0.0783315
    ratio, coeff = ogm_coefficients([4.0, 2.0, 2.0], alpha=0.8)
    assert ratio == pytest.approx([2.0, 2 / 3, 2 / 3])
    assert coeff == pytest.approx([0.0783315, 1.0, 1.0], abs=1e-6)


def test_ogm_damps_only_the_dominant_encoders_selected_weights(tmp_path):
    tr = trainer(tmp_path, "ogm_ge", ge=False, alpha=0.8)
    batch = first_batch(tr)
    plain = grads_after(tr, batch, hook=False)
    modulated = grads_after(tr, batch)
    coeff = tr.method.coeff
    assert min(coeff) < 1 and 1.0 in coeff  # someone is damped, someone is not
    names = {id(p): n for n, p in tr.model.named_parameters()}
    touched = set()
    for i, m in enumerate(tr.ctx.modalities):
        chosen = selected_parameters(tr.model, m, "weights")
        assert chosen and all(p.dim() >= 2 for p in chosen)
        for p in chosen:
            n = names[id(p)]
            touched.add(n)
            torch.testing.assert_close(modulated[n], plain[n] * coeff[i])
    for n in plain.keys() - touched:  # biases, fusion head: untouched
        torch.testing.assert_close(modulated[n], plain[n], rtol=0, atol=0)


def test_ge_noise_has_the_std_of_the_unscaled_gradient_and_hits_every_modality(tmp_path):
    tr = trainer(tmp_path, "ogm_ge", alpha=0.8)
    batch = first_batch(tr)
    plain = grads_after(tr, batch, hook=False)
    modulated = grads_after(tr, batch)
    name = "encoders.{}.net.0.weight"  # the 64 x 64 first layer: 4096 noise samples
    for i, m in enumerate(tr.ctx.modalities):
        g = plain[name.format(m)]
        noise = modulated[name.format(m)] - g * tr.method.coeff[i]
        assert noise.abs().sum() > 0
        assert noise.std().item() == pytest.approx(g.std().item(), rel=0.1)


def test_no_modulation_outside_the_window(tmp_path):
    tr = trainer(tmp_path, "ogm_ge", modulation_starts=1, modulation_ends=3)
    batch = first_batch(tr)
    plain = grads_after(tr, batch, hook=False)
    tr.ctx.epoch = 0
    for n, g in grads_after(tr, batch).items():
        torch.testing.assert_close(g, plain[n], rtol=0, atol=0)


def test_refusals_are_clear(tmp_path):
    with pytest.raises(MethodNotApplicable, match="regression task has no classes"):
        trainer(tmp_path, "ogm_ge", task="regression")
    with pytest.raises(MethodNotApplicable, match="selects no parameter"):
        trainer(tmp_path, "ogm_ge", params="conv")  # MLP encoders have no conv kernel
    with pytest.raises(SpecError, match="modulation_ends"):
        validate_spec({"method": "ogm_ge", "method_params": {"modulation_starts": 5, "modulation_ends": 2}})


def test_conv_rule_on_segmentation_picks_conv_kernels(tmp_path):
    tr = trainer(tmp_path, "ogm_ge", task="segmentation", params="conv")
    assert all(p.dim() == 4 for ps in tr.method.selected.values() for p in ps)
    grads_after(tr, first_batch(tr))
    assert set(tr.method.diagnostics(tr.ctx)) == {
        f"{k}/{m}" for k in ("ratio", "coeff") for m in tr.ctx.modalities
    }


def test_resume_is_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "ogm_ge")
