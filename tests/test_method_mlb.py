from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _equivalence import side_by_side_float64, two_modality_trainer
from _method_helpers import assert_resume_is_exact, first_batch, trainer

from mmbalance.common.spec import SpecError, validate_spec
from mmbalance.methods.mlb import mlb_coefficients, mlb_scores


def official_mlb_step(model, extra, batch, _ctx, alpha=0.8):
    """kkontras/MLB: loss Trainer.py:222-236 (weights 1), Bias_Infusion_MLB.on_backward_end
    Bias_Infusion.py:334-344 and _equalize_gradients 398-407, two modalities."""
    heads, y = extra[0].heads, batch.target
    m0, m1 = model.modalities
    a, v = model.encoders[m0](batch.inputs[m0]), model.encoders[m1](batch.inputs[m1])
    out = model.head(torch.cat((a, v), dim=1))
    out_color, out_gray = heads[m0](a), heads[m1](v)
    (F.cross_entropy(out, y) + F.cross_entropy(out_color, y) + F.cross_entropy(out_gray, y)).backward()
    softmax = torch.nn.Softmax(dim=1)
    score_0 = torch.mean(
        torch.stack([softmax(out_color)[i][y[i]] for i in range(out_color.size(0))])
    ).detach()
    score_1 = torch.mean(torch.stack([softmax(out_gray)[i][y[i]] for i in range(out_gray.size(0))])).detach()
    ratio_0 = score_1 / score_0
    ratio_1 = 1 / ratio_0
    coeff_0 = 1 + torch.tanh(alpha * (ratio_0 - 1))
    coeff_1 = 1 + torch.tanh(alpha * (ratio_1 - 1))
    coefficients = [coeff_0.item(), coeff_1.item()]
    # "enc_0" (encoder with its own classifier) and "fc_0_lin.weight" (modality 0's fused-head weight)
    for p in [*model.encoders[m0].parameters(), *heads[m0].parameters()]:
        p.grad *= coeff_0
    for p in [*model.encoders[m1].parameters(), *heads[m1].parameters()]:
        p.grad *= coeff_1
    d = a.shape[1]
    model.head.weight.grad[:, :d] *= coeff_0
    model.head.weight.grad[:, d:] *= coeff_1
    return coefficients


def test_coefficients_hand_computed():
    # r = (0.25/0.5, 0.5/0.25) = (0.5, 2): 1 + tanh(0.8 * -0.5) = 0.6200510, 1 + tanh(0.8) = 1.6640368
    ratio, coeff = mlb_coefficients([0.5, 0.25], alpha=0.8)
    assert ratio == pytest.approx([0.5, 2.0]) and coeff == pytest.approx([0.6200510, 1.6640368], abs=1e-6)
    # three modalities (Bias_Infusion_MLB_3d): r_1 = mean(0.6, 0.3) / 0.3 = 1.5 -> 1 + tanh(0.4)
    _, coeff = mlb_coefficients([0.6, 0.3, 0.3], alpha=0.8)
    assert coeff == pytest.approx([0.6200510, 1.3799490, 1.3799490], abs=1e-6)
    # regression (_Reg): MSE scores, the larger error is the weaker modality
    _, coeff = mlb_coefficients([1.0, 2.0], alpha=0.8, error=True)
    assert coeff == pytest.approx([0.6200510, 1.6640368], abs=1e-6)
    # tanh_mode 2, beta 1.5: the boost tops out at 1.5: 1 + 0.5 tanh(0.8) = 1.3320184
    _, coeff = mlb_coefficients([0.5, 0.25], alpha=0.8, beta=1.5)
    assert coeff == pytest.approx([0.6200510, 1.3320184], abs=1e-6)


def test_scores_are_batch_means():
    z = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])  # p(y=1) = 0.75, p(y=0) = 0.5
    assert mlb_scores([z], torch.tensor([1, 0]), "classification") == pytest.approx([0.625])
    assert mlb_scores([torch.tensor([[1.0], [3.0]])], torch.tensor([0.0, 0.0]), "regression") == [5.0]


def test_scales_encoder_unimodal_head_and_fused_head_columns(tmp_path):
    tr = trainer(tmp_path, "mlb")
    batch = first_batch(tr)
    tr.model.zero_grad(set_to_none=True)
    tr.method.heads.zero_grad(set_to_none=True)
    out = tr.method.forward(tr.model, batch, tr.ctx)
    tr.method.loss(out, batch, tr.ctx).backward()
    owned = [*tr.model.parameters(), *tr.method.heads.parameters()]
    before = {id(p): p.grad.clone() for p in owned}
    tr.method.after_backward(tr.model, out, batch, tr.ctx)
    coeff = tr.method.coeff
    assert len(set(coeff)) == len(coeff)  # the modalities are told apart
    start = 0
    for i, m in enumerate(tr.modalities):
        group = tr.method.groups[i]
        assert group and len(group) > len(tr.model.encoder_parameters(m))  # encoder + unimodal head
        for p in group:
            torch.testing.assert_close(p.grad, before[id(p)] * coeff[i])
        d = tr.model.feature_dims()[m]
        w = tr.model.head.weight
        torch.testing.assert_close(
            w.grad[:, start : start + d], before[id(w)][:, start : start + d] * coeff[i]
        )
        start += d
    bias = tr.model.head.bias
    assert torch.equal(bias.grad, before[id(bias)])  # the fused head's bias is not scaled (fc_0_lin.bias)


def test_equivalent_to_the_official_step(tmp_path):
    tr = two_modality_trainer(tmp_path, "mlb")
    coeff = lambda: list(tr.method.coeff)  # noqa: E731
    diff = side_by_side_float64(tr, official_mlb_step, steps=4, extra=[tr.method.heads], coefficients=coeff)
    assert diff.steps == 4
    assert diff.coefficients < 1e-12 and diff.gradients < 1e-12 and diff.parameters < 1e-12


@pytest.mark.parametrize("task", ["regression", "segmentation"])
def test_other_task_kinds(tmp_path, task):
    tr = trainer(tmp_path, "mlb", task=task)
    assert math.isfinite(tr.train_batch(first_batch(tr)))
    assert all(c != 1.0 for c in tr.method.coeff)


def test_no_modulation_outside_the_window_and_validation(tmp_path):
    tr = trainer(tmp_path, "mlb", starting_epoch=1)
    batch = first_batch(tr)
    tr.model.zero_grad(set_to_none=True)
    out = tr.method.forward(tr.model, batch, tr.ctx)
    tr.method.loss(out, batch, tr.ctx).backward()
    before = [p.grad.clone() for p in tr.model.parameters()]
    tr.method.after_backward(tr.model, out, batch, tr.ctx)
    assert all(torch.equal(p.grad, g) for p, g in zip(tr.model.parameters(), before, strict=True))
    with pytest.raises(SpecError, match="ending_epoch"):
        validate_spec({"method": "mlb", "method_params": {"starting_epoch": 3, "ending_epoch": 1}})


def test_resume_is_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "mlb")
