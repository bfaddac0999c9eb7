from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from _equivalence import side_by_side_float64, two_modality_trainer
from _method_helpers import assert_resume_is_exact, first_batch, trainer
from torch import nn

from mmbalance.methods.dgl import DGL, zero_padded_logits
from mmbalance.models.base import ConcatFusion, MultimodalModel
from mmbalance.models.transformer import MSAModelParams, build_msa_model
from mmbalance.training.method import MethodNotApplicable


def official_dgl_step(model, _extra, batch, _ctx, alpha=4.0):
    """shicaiwei123/ICCV2025-GDL main_dgl.py:100-122 with fusion_modules.py:51-59, two modalities."""
    y = batch.target
    a, v = (model.encoders[m](batch.inputs[m]) for m in model.modalities)
    out = model.head(torch.cat((a, v), dim=1).detach())
    out_a = model.head(torch.cat((a, torch.zeros_like(v)), dim=1))
    out_v = model.head(torch.cat((torch.zeros_like(a), v), dim=1))
    (alpha * (F.cross_entropy(out_a, y) + F.cross_entropy(out_v, y))).backward(retain_graph=True)
    for p in model.head.parameters():  # main_dgl.py:114-119: 'fusion' params lose the unimodal grads
        p.grad = None
    F.cross_entropy(out, y).backward()


def test_zero_padded_logits_hand_computed_and_head_gets_no_gradient():
    head = nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        head.bias.copy_(torch.tensor([0.5, -0.5]))
    model = MultimodalModel({"a": nn.Identity(), "v": nn.Identity()}, ConcatFusion(), head)
    feats = {"a": torch.tensor([[1.0]], requires_grad=True), "v": torch.tensor([[2.0]], requires_grad=True)}
    out = zero_padded_logits(model, feats)
    # out_a = W[:, 0] * 1 + b = (1.5, 2.5); out_v = W[:, 1] * 2 + b = (4.5, 7.5): the full bias, as the code
    assert out["a"].tolist() == [[1.5, 2.5]] and out["v"].tolist() == [[4.5, 7.5]]
    (out["a"].sum() + out["v"].sum()).backward()
    assert head.weight.grad is None and feats["a"].grad.item() == 4.0 and feats["v"].grad.item() == 6.0


def test_encoders_learn_only_unimodal_losses_and_head_only_the_fused_loss(tmp_path):
    tr = trainer(tmp_path, "dgl", alpha=2.0)
    batch = first_batch(tr)
    tr.model.zero_grad(set_to_none=True)
    out = tr.method.forward(tr.model, batch, tr.ctx)
    ce, y = F.cross_entropy, batch.target
    encoders = {m: tr.model.encoder_parameters(m) for m in tr.modalities}
    head = list(tr.model.head.parameters())
    assert head and all(encoders.values())
    expected = {}
    for m, ps in encoders.items():
        g = torch.autograd.grad(2.0 * ce(out.modality_logits[m], y), ps, retain_graph=True)
        expected |= {id(p): gi for p, gi in zip(ps, g, strict=True)}
    g_head = torch.autograd.grad(ce(out.pred, y), head, retain_graph=True)
    expected |= {id(p): gi for p, gi in zip(head, g_head, strict=True)}
    tr.method.loss(out, batch, tr.ctx).backward()
    for p in tr.model.parameters():
        torch.testing.assert_close(p.grad, expected[id(p)])


def test_equivalent_to_the_official_step(tmp_path):
    tr = two_modality_trainer(tmp_path, "dgl")
    diff = side_by_side_float64(tr, official_dgl_step, steps=4)  # DGL has no coefficients
    assert diff.steps == 4 and diff.gradients < 1e-12 and diff.parameters < 1e-12


@pytest.mark.parametrize("task", ["regression", "segmentation"])
def test_other_task_kinds_train(tmp_path, task):
    tr = trainer(tmp_path, "dgl", task=task)
    loss = tr.train_batch(first_batch(tr))
    assert loss == loss and tr.model.encoders["m0"].parameters().__next__().grad is not None


def test_refuses_a_fusion_transformer():
    model = build_msa_model({"a": 4, "b": 4}, 1, MSAModelParams(proj_dim=8, num_heads=2, layers=2))
    with pytest.raises(MethodNotApplicable, match="concatenation"):
        DGL().build(SimpleNamespace(model=model))


def test_resume_is_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "dgl")
