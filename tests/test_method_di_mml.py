from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from _method_helpers import assert_resume_is_exact, first_batch, trainer
from test_equivalence_di_mml import SupConLoss

from mmbalance.common.spec import SpecError, validate_spec
from mmbalance.methods.di_mml import DIMML, confidence_mix, contrast_loss, discriminative_dims
from mmbalance.models.transformer import MSAModelParams, build_msa_model
from mmbalance.training.method import MethodNotApplicable


@pytest.mark.filterwarnings("ignore:The use of `x.T`")  # the verbatim SupConLoss transposes vectors
def test_dimension_selection_and_contrast_hand_computed():
    # dim 0 separates the classes (hits 1, 1, 1, 1); dim 1 is tied, argmin takes class 0 (hits 1, 1, 0, 0);
    # mean hit rate 0.75: only dim 0 is above it.
    f = torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    y = torch.tensor([0, 0, 1, 1])
    assert discriminative_dims(f, y, 2).tolist() == [True, False]
    # identical unit features, T = 1: -log(e / (e + 1)) = 0.3132617 per sample
    e = torch.eye(2)
    assert contrast_loss(e, e, torch.tensor([True, True]), 1.0).item() == pytest.approx(0.3132617, abs=1e-6)
    a, v = torch.randn(5, 6), torch.randn(5, 6)
    A, V = (
        torch.tensor([1, 1, 0, 0, 0, 0], dtype=torch.bool),
        torch.tensor([0, 0, 0, 1, 0, 1], dtype=torch.bool),
    )
    ours = contrast_loss(a, v, A, 0.7) + contrast_loss(v, a, V, 0.7)
    ref = SupConLoss(0.7)(a, v, A.nonzero()[:, 0].tolist(), V.nonzero()[:, 0].tolist(), torch.zeros(5))
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


def test_confidence_mix_hand_computed():
    # confidences 0.5 (uniform) and 0.75 (softmax(ln 3, 0)); T = 1: w = softmax(0.5, 0.75) = (0.4378235, 0.5621765)
    o1, o2 = torch.zeros(1, 2), torch.tensor([[torch.log(torch.tensor(3.0)).item(), 0.0]])
    assert confidence_mix([o1, o2], 1.0).tolist()[0] == pytest.approx([0.5621765 * 1.0986123, 0.0], abs=1e-6)
    # T -> large: equal weights, the mean of the logits
    assert confidence_mix([o1, o2], 1e9).tolist()[0] == pytest.approx([1.0986123 / 2, 0.0], abs=1e-6)


def test_stage2_steps_its_own_fresh_optimiser(tmp_path):
    tr = trainer(tmp_path, "di_mml", stage1_epochs=1, contrast_epoch=0, stage2_lr=0.002)
    tr.ctx.epoch = 1
    tr.method.on_epoch_start(tr.ctx)
    before = tr.model.head.weight.detach().clone()
    tr.train_batch(first_batch(tr))
    head = list(tr.model.head.parameters())
    assert not torch.equal(before, tr.model.head.weight)
    assert all(tr.optimizer.state.get(p) in (None, {}) for p in head)  # the run's optimiser never stepped it
    group = tr.method.stage2_optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.002, 0.9, 1e-4)
    assert all("momentum_buffer" in tr.method.stage2_optimizer.state[p] for p in head)


def test_stage1_trains_encoders_and_classifiers_stage2_only_the_head(tmp_path):
    tr = trainer(tmp_path, "di_mml", stage1_epochs=1, contrast_epoch=0)  # 2 epochs: one of each stage
    tr.method.on_epoch_start(tr.ctx)
    assert all(d.dtype == torch.bool for d in tr.method.only.values())
    batch = first_batch(tr)
    own = [*tr.method.heads.parameters(), *tr.method.shared.parameters()]
    for stage, epoch in (("1", 0), ("2", 1)):
        tr.ctx.epoch = epoch
        tr.model.zero_grad(set_to_none=True)
        for p in own:
            p.grad = None
        out = tr.method.forward(tr.model, batch, tr.ctx)
        tr.method.loss(out, batch, tr.ctx).backward()
        encoders = [p for m in tr.modalities for p in tr.model.encoder_parameters(m)]
        head = list(tr.model.head.parameters())
        assert encoders and head and own
        if stage == "1":
            assert all(p.grad is None for p in head)  # the fusion head waits for stage 2
            assert all(p.grad is not None for p in encoders + own)
        else:
            assert all(p.grad is None for p in encoders + own) and all(p.grad is not None for p in head)


def test_contrast_pulls_only_towards_the_detached_anchor(tmp_path):
    tr = trainer(tmp_path, "di_mml", stage1_epochs=1, contrast_epoch=0)
    out = tr.model(first_batch(tr).inputs)
    a, v = out.features["m0"], out.features["m1"]
    contrast_loss(a, v, torch.ones(a.shape[1], dtype=torch.bool), 1.0).backward()
    assert all(p.grad is None for p in tr.model.encoder_parameters("m0"))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tr.model.encoder_parameters("m1"))


def test_refusals_and_validation(tmp_path):
    for task in ("regression", "segmentation"):
        with pytest.raises(MethodNotApplicable, match="supports"):
            trainer(tmp_path, "di_mml", task=task)
    with pytest.raises(SpecError, match="contrast_epoch"):
        validate_spec({"method": "di_mml", "method_params": {"stage1_epochs": 5, "contrast_epoch": 5}})
    with pytest.raises(
        MethodNotApplicable, match=r"stage1_epochs \(2\) leaves no stage-2 epoch in a run of 2"
    ):
        trainer(tmp_path, "di_mml", stage1_epochs=2, contrast_epoch=0)  # the fusion head would never train
    model = build_msa_model({"a": 4, "b": 4}, 3, MSAModelParams(proj_dim=8, num_heads=2, layers=2))
    with pytest.raises(MethodNotApplicable, match="concatenated"):
        DIMML().build(SimpleNamespace(model=model, task=SimpleNamespace(num_classes=3)))


def test_resume_is_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "di_mml", stage1_epochs=1, contrast_epoch=0)
