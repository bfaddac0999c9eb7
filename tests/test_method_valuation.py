from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _equivalence import side_by_side_float64, two_modality_trainer
from _method_helpers import assert_resume_is_exact, first_batch, trainer
from torch import nn

from mmbalance.methods.valuation import Valuation, copies, sample_contributions
from mmbalance.models.base import ConcatFusion, MultimodalModel
from mmbalance.models.transformer import MSAModelParams, build_msa_model
from mmbalance.training.method import MethodNotApplicable


def official_contributions(model, batch):
    """GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation code/sample_level.py:86-118 with
    models.py:74-86 (exec_drop), on our two-modality model; returns {index: (contrib_a, contrib_v)}."""
    m0, m1 = model.modalities
    a, v = model.encoders[m0](batch.inputs[m0]), model.encoders[m1](batch.inputs[m1])
    out = model.head(torch.cat((a, v), 1))
    out_v = model.head(torch.cat((torch.zeros_like(a), v), 1))  # exec_drop(drop="audio")
    out_a = model.head(torch.cat((a, torch.zeros_like(v)), 1))
    prediction, pred_v, pred_a = F.softmax(out, 1), F.softmax(out_v, 1), F.softmax(out_a, 1)
    label, contribution = batch.target, []
    for i, _ in enumerate(label):
        index_all = np.argmax(prediction[i].cpu().data.numpy())
        index_v = np.argmax(pred_v[i].cpu().data.numpy())
        index_a = np.argmax(pred_a[i].cpu().data.numpy())
        value_all = 2.0 if index_all == label[i] else 0.0
        value_v = 1.0 if index_v == label[i] else 0.0
        value_a = 1.0 if index_a == label[i] else 0.0
        contribution.append(((value_a + value_all - value_v) / 2.0, (value_v + value_all - value_a) / 2.0))
    return contribution


def official_resample(contribution):
    """dataloader.py:147-186: every sample once (drop 0), then its copies (2: visual zeroed, 1: audio zeroed)."""
    data = [(i, 0) for i in range(len(contribution))]
    for i, (contrib_a, contrib_v) in enumerate(contribution):
        if 0.4 < contrib_a < 1:
            data += [(i, 2)]
        elif -0.1 < contrib_a < 0.4:
            data += [(i, 2)] * 2
        elif contrib_a < -0.1:
            data += [(i, 2)] * 3
        if 0.4 < contrib_v < 1:
            data += [(i, 1)]
        elif -0.1 < contrib_v < 0.4:
            data += [(i, 1)] * 2
        elif contrib_v < -0.1:
            data += [(i, 1)] * 3
    return data


DROP = {-1: 0, 0: 2, 1: 1}  # our tag (kept modality) -> the code's drop flag


def official_valuation_step(model, _extra, batch, ctx):
    """sample_level.py:156-181 with models.py:62-70: zero the dropped modality's feature rows, CE."""
    m0, m1 = model.modalities
    a, v = model.encoders[m0](batch.inputs[m0]), model.encoders[m1](batch.inputs[m1])
    a, v = a.clone(), v.clone()  # the code's a, v are fresh pooled tensors; ours end in a ReLU autograd needs
    drop = [DROP[t] for t in ctx.tags.tolist()]
    for i in range(len(drop)):
        if drop[i] == 1:
            a[i, :] = 0.0
        elif drop[i] == 2:
            v[i, :] = 0.0
    out = model.head(torch.cat((a, v), 1))
    nn.CrossEntropyLoss()(out, batch.target).backward()


def test_copies_follow_the_released_thresholds():
    assert [copies(p) for p in (1.5, 1.0, 0.5, 0.4, 0.0, -0.1, -0.5)] == [0, 0, 1, 0, 2, 0, 3]


def test_contributions_hand_computed():
    head = nn.Linear(2, 2)
    with torch.no_grad():  # logit of class 1 = a + v - 0.5, of class 0 = 0
        head.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
        head.bias.copy_(torch.tensor([0.0, -0.5]))
    model = MultimodalModel({"a": nn.Identity(), "v": nn.Identity()}, ConcatFusion(), head)
    feats = {"a": torch.tensor([[1.0], [0.3]]), "v": torch.tensor([[0.0], [0.3]])}
    phi = sample_contributions(model, feats, torch.tensor([1, 1]))
    # sample 0: all right (2), a alone right (1), v alone wrong: phi_a = (1 + 2 - 0)/2, phi_v = (0 + 2 - 1)/2
    # sample 1: only all right: phi_a = phi_v = 1
    assert phi["a"].tolist() == [1.5, 1.0] and phi["v"].tolist() == [0.5, 1.0]
    three = MultimodalModel({k: nn.Identity() for k in "abc"}, ConcatFusion(), nn.Linear(3, 2))
    f3 = {k: torch.randn(5, 1) for k in "abc"}
    phi3 = sample_contributions(three, f3, torch.zeros(5, dtype=torch.long))
    full = three.head(torch.cat(list(f3.values()), 1)).argmax(1) == 0  # efficiency: shares sum to v(all)
    torch.testing.assert_close(sum(phi3.values()), 3 * full.float())


def test_resampled_epoch_equals_the_released_dataset(tmp_path):
    tr = two_modality_trainer(tmp_path, "valuation", warmup=1)
    assert tr.method.epoch_samples(tr.ctx) is None  # epoch 0 < warmup
    tr.ctx.epoch = 1
    (ours,) = tr.method.epoch_samples(tr.ctx)
    official = []
    for batch in tr.iterate("train"):
        official += official_contributions(tr.model, batch)
    expected = official_resample(official)
    assert sorted((i, DROP[t]) for i, t in ours) == sorted(expected)
    assert len(ours) > len(tr.datasets["train"])


def test_a_copy_trains_only_its_modalitys_encoder(tmp_path):
    tr = trainer(tmp_path, "valuation")
    batch = first_batch(tr)
    tr.ctx.tags = torch.zeros(len(batch), dtype=torch.long)  # every sample keeps m0 only
    tr.model.zero_grad(set_to_none=True)
    out = tr.method.forward(tr.model, batch, tr.ctx)
    tr.method.loss(out, batch, tr.ctx).backward()
    for j, m in enumerate(tr.modalities):
        params = tr.model.encoder_parameters(m)
        assert params
        total = sum(p.grad.abs().sum().item() for p in params if p.grad is not None)
        assert (total > 0) == (j == 0)


def test_equivalent_to_the_official_step(tmp_path):
    tr = two_modality_trainer(tmp_path, "valuation", warmup=0)
    (part,) = tr.method.epoch_samples(tr.ctx)
    batches = tr.planned_batches([part], 0)
    diff = side_by_side_float64(tr, official_valuation_step, steps=4, batches=batches)  # no coefficients
    assert diff.steps == 4 and diff.gradients < 1e-12 and diff.parameters < 1e-12


def test_refusals(tmp_path):
    with pytest.raises(MethodNotApplicable, match="supports"):
        trainer(tmp_path, "valuation", task="regression")
    with pytest.raises(MethodNotApplicable, match="supports"):
        trainer(tmp_path, "valuation", task="segmentation")
    model = build_msa_model({"a": 4, "b": 4}, 3, MSAModelParams(proj_dim=8, num_heads=2, layers=2))
    with pytest.raises(MethodNotApplicable, match="concatenated"):
        Valuation().build(SimpleNamespace(model=model, modalities=["a", "b"]))


def test_resume_is_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "valuation", warmup=1)
