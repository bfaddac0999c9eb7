from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _method_helpers import assert_resume_is_exact, first_batch, grads_after, trainer

from mmbalance.methods.cggm import batch_scores, cggm_coefficients, direction_loss


def official_coefficients(acc2: list[float], acc1: list[float]) -> list[float]:
    """zrguo/CGGM src/msatrain.py, written out."""
    diff = [acc2[i] - acc1[i] for i in range(len(acc2))]
    diff_sum = sum(diff) + 1e-8
    return [(diff_sum - d) / diff_sum for d in diff]


@pytest.mark.parametrize(
    ("now", "before"),
    [([0.6, 0.2], [0.0, 0.0]), ([0.5, 0.7], [0.6, 0.4]), ([0.7, 0.45, 0.3], [0.5, 0.4, 0.3])],
)
def test_coefficients_equal_the_official_formula(now, before):
    assert cggm_coefficients(now, before) == pytest.approx(official_coefficients(now, before), rel=1e-12)


def test_hand_computed_coefficients_and_direction_loss():
    # d = (0.2, 0.05, 0), S = 0.25: coeff = (0.05, 0.2, 0.25) / 0.25
    coeff = cggm_coefficients([0.7, 0.45, 0.3], [0.5, 0.4, 0.3])
    assert coeff == pytest.approx([0.2, 0.8, 1.0], abs=1e-6)
    # (|0.2| + |0.8| + |1| - (0.2 * 0.5 - 0.8 * 0.5 + 0)) / 3 = 2.3 / 3
    l_gm = direction_loss([0.2, 0.8, 1.0], torch.tensor([0.5, -0.5, 0.0]))
    assert l_gm.item() == pytest.approx(2.3 / 3)


def test_batch_scores_per_task():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 1.0]])
    scores = batch_scores("classification", torch.stack([logits, -logits]), torch.tensor([0, 1, 1, 1]))
    assert scores.tolist() == [0.75, 0.25]
    # MOSI: sign accuracy with zeros counted as negative: matches T, T, F, F
    pred, truth = torch.tensor([[0.5], [-0.2], [0.0], [1.0]]), torch.tensor([[1.0], [-1.0], [0.5], [0.0]])
    assert batch_scores("regression", pred.unsqueeze(0), truth).tolist() == [0.5]
    # One 1x2 image, labels (1, 0), predicted (1, 1); regions {1} and {0, 1}.
    seg_logits = torch.tensor([[[[0.0, 0.0]], [[1.0, 1.0]]]])  # (1, 2, 1, 2) -> argmax 1 everywhere
    masks = torch.tensor([[False, True], [True, True]])
    dice_1 = 2 * (1 + 1e-3) / (2 + 1 + 2e-3)  # |P n T| = 1, |P| = 2, |T| = 1
    dice_01 = 2 * (2 + 1e-3) / (2 + 2 + 2e-3)
    score = batch_scores("segmentation", seg_logits.unsqueeze(0), torch.tensor([[[1, 0]]]), masks)
    assert score.tolist() == pytest.approx([(dice_1 + dice_01) / 2], rel=1e-6)


def test_classifiers_are_absent_from_the_model_and_inference(tmp_path):
    joint = trainer(tmp_path / "j", "joint")
    tr = trainer(tmp_path / "c", "cggm")
    assert tr.model.state_dict().keys() == joint.model.state_dict().keys()
    for a, b in zip(tr.model.state_dict().values(), joint.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # classifiers built under a forked RNG: same model init as joint
    ids = {id(p) for p in tr.model.parameters()} | {
        id(p) for g in tr.optimizer.param_groups for p in g["params"]
    }
    assert not ids & {id(p) for p in tr.method.classifiers.parameters()}
    batch = first_batch(tr)
    tr.model.eval()
    torch.testing.assert_close(
        tr.method.forward(tr.model, batch, tr.ctx).pred, joint.model(batch.inputs).pred
    )


def test_encoder_gradients_are_scaled_and_never_see_the_classifiers(tmp_path):
    tr = trainer(tmp_path, "cggm", rho=1.3, clip_grad_norm=None)
    batch = first_batch(tr)
    before = {n: p.clone() for n, p in tr.method.classifiers.named_parameters()}
    plain = grads_after(tr, batch, hook=False)
    modulated = grads_after(tr, batch)  # first step: no l_gm yet, so the loss is the task loss
    coeff = tr.method.coeff
    for n, g in plain.items():
        if n.startswith("encoders."):
            i = tr.ctx.modalities.index(n.split(".")[1])
            torch.testing.assert_close(modulated[n], g * coeff[i] * 1.3)
        else:  # fusion head
            torch.testing.assert_close(modulated[n], g, rtol=0, atol=0)
    assert all(not torch.equal(p, before[n]) for n, p in tr.method.classifiers.named_parameters())
    assert sum(coeff) == pytest.approx(len(coeff) - 1, abs=1e-5)  # sum_m coeff_m = M - 1


def test_gradients_are_clipped_after_the_modulation_as_released(tmp_path):
    tr = trainer(tmp_path, "cggm", clip_grad_norm=0.05)
    batch = first_batch(tr)
    plain = grads_after(tr, batch, hook=False)
    modulated = grads_after(tr, batch)
    scaled = torch.cat(
        [
            (g * tr.method.coeff[tr.ctx.modalities.index(n.split(".")[1])] * 1.3).flatten()
            if n.startswith("encoders.")
            else g.flatten()
            for n, g in plain.items()
        ]
    )
    assert scaled.norm() > 0.05
    flat = torch.cat([g.flatten() for g in modulated.values()])
    assert flat.norm().item() == pytest.approx(0.05, rel=1e-4)
    torch.testing.assert_close(flat, scaled * 0.05 / scaled.norm(), rtol=1e-4, atol=1e-7)


def test_l_gm_of_the_released_code_uses_the_previous_step_weights(tmp_path):
    tr = trainer(tmp_path, "cggm", lam=0.5, clip_grad_norm=None)
    batch = first_batch(tr)
    grads_after(tr, batch)
    prev = tr.method.prev
    tr.optimizer.step()  # the fusion out_layer moves; the l_gm gradient must use its old value
    head = tr.model.out_layer.weight
    plain = grads_after(tr, batch, hook=False)
    tr.model.zero_grad(set_to_none=True)
    out = tr.model(batch.inputs)
    loss = tr.method.loss(out, batch, tr.ctx)
    loss.backward()
    w_old = prev["fusion"].clone().requires_grad_(True)
    d = tr.model.feature_dims()["m0"]
    cos = torch.stack(
        [
            F.cosine_similarity(prev["classifiers"][i], w_old[:, i * d : (i + 1) * d].flatten(), dim=0)
            for i in range(3)
        ]
    )
    c = torch.tensor(prev["coeff"])
    l_gm = (c.abs().sum() - (c * cos).sum()) / 3
    (g_old,) = torch.autograd.grad(l_gm, w_old)
    torch.testing.assert_close(loss, F.cross_entropy(out.pred, batch.target) + 0.5 * l_gm)
    torch.testing.assert_close(head.grad, plain["head.weight"] + 0.5 * g_old)


def test_gradient_direction_is_differentiable_and_reaches_the_encoders(tmp_path):
    tr = trainer(tmp_path, "cggm", direction="gradients", lam=1.0)
    batch = first_batch(tr)
    grads_after(tr, batch)
    plain = grads_after(tr, batch, hook=False)
    tr.model.zero_grad(set_to_none=True)
    out = tr.model(batch.inputs)
    tr.method.loss(out, batch, tr.ctx).backward()
    assert tr.method.diagnostics(tr.ctx)["l_gm"] > 0
    assert not torch.equal(tr.model.encoders["m0"].net[0].weight.grad, plain["encoders.m0.net.0.weight"])


@pytest.mark.parametrize("task", ["regression", "segmentation"])
def test_runs_on_every_task_kind(tmp_path, task):
    tr = trainer(tmp_path, "cggm", task=task)
    batch = first_batch(tr)
    for _ in range(2):
        grads_after(tr, batch)
    diag = tr.method.diagnostics(tr.ctx)
    assert {f"coeff/{m}" for m in tr.ctx.modalities} <= diag.keys() and diag["l_gm"] > 0
    assert all(0 <= diag[f"score/{m}"] <= 1 for m in tr.ctx.modalities)


def test_resume_is_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "cggm")


def test_segmentation_classifier_logits_smaller_than_the_target_are_upsampled(tmp_path):
    tr = trainer(tmp_path, "cggm", task="segmentation")
    batch = first_batch(tr)
    clf = tr.method.classifiers["m0"]
    tr.method.classifiers["m0"] = torch.nn.Sequential(torch.nn.AvgPool2d(2), clf)  # half-resolution logits
    out = tr.model(batch.inputs)
    logits = tr.method._classify(tr.model, "m0", out, batch.target)
    assert logits.shape[-2:] == batch.target.shape[-2:] and logits.shape[1] == 3
    expected = F.interpolate(
        clf(F.avg_pool2d(out.features["m0"].detach(), 2)),
        size=batch.target.shape[-2:],
        mode="bilinear",
        align_corners=True,  # as the released SegClassifier (models/segmodel.py:369-372)
    )
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


def test_direction_only_leaves_the_encoder_gradients_unscaled(tmp_path):
    """``magnitude: false`` is the paper's "direction only" ablation: no coeff * rho scaling."""
    tr = trainer(tmp_path, "cggm", magnitude=False, clip_grad_norm=None)
    batch = first_batch(tr)
    plain = grads_after(tr, batch, hook=False)
    modulated = grads_after(tr, batch)
    assert any(n.startswith("encoders.") for n in plain)
    for n, g in plain.items():
        torch.testing.assert_close(modulated[n], g, rtol=0, atol=0)
    assert any(c != 1.0 for c in tr.method.coeff)  # the balancing terms are still computed (and logged)
