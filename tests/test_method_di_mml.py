from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from _equivalence import side_by_side, two_modality_trainer
from _method_helpers import assert_resume_is_exact, first_batch, trainer
from torch import nn

from mmbalance.method import MethodNotApplicable
from mmbalance.methods.di_mml import DIMML, contrast_loss, discriminative_dims
from mmbalance.models.transformer import MSAModelParams, build_msa_model
from mmbalance.spec import SpecError, validate_spec


class SupConLoss(nn.Module):
    """fanyunfeng-bit/DI-MML loss/contrast_loss.py:4-36, verbatim."""

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


def official_indices(total_audio_features, total_image_features, labels, n_classes):
    """main_CFT.py:167-208 (get_indices) after the loop over the train split."""
    D = total_audio_features.shape[1]
    cnts = torch.bincount(labels, minlength=n_classes).float()
    h_audio_features = torch.zeros(n_classes, D).index_add_(0, labels, total_audio_features)
    h_image_features = torch.zeros(n_classes, D).index_add_(0, labels, total_image_features)
    a_h = (h_audio_features.T / cnts).T
    v_h = (h_image_features.T / cnts).T
    dist_a = torch.abs(total_audio_features.unsqueeze(1).repeat(1, n_classes, 1) - a_h)
    dist_v = torch.abs(total_image_features.unsqueeze(1).repeat(1, n_classes, 1) - v_h)
    argmin_a = (torch.argmin(dist_a, dim=1) == labels.unsqueeze(1).repeat(1, D)).float()
    argmin_v = (torch.argmin(dist_v, dim=1) == labels.unsqueeze(1).repeat(1, D)).float()
    top_audio_indices = torch.nonzero(torch.mean(argmin_a, dim=0) > torch.mean(argmin_a))[:, 0]
    top_image_indices = torch.nonzero(torch.mean(argmin_v, dim=0) > torch.mean(argmin_v))[:, 0]
    audio_only_indices = list(set(top_audio_indices.tolist()) - set(top_image_indices.tolist()))
    image_only_indices = list(set(top_image_indices.tolist()) - set(top_audio_indices.tolist()))
    return sorted(audio_only_indices), sorted(image_only_indices)


def official_stage1_step(model, extra, batch, ctx, A, V, weight=1.0, temperature=1.0, contrast_epoch=1):
    """main_CFT.py:76-97: own classifiers, the shared classifier, and SupConLoss from epoch 20."""
    heads, classifier, label = extra[0].heads, extra[1], batch.target
    criterion, criterion2 = nn.CrossEntropyLoss(), SupConLoss(temperature)
    m0, m1 = model.modalities
    a, v = model.encoders[m0](batch.inputs[m0]), model.encoders[m1](batch.inputs[m1])
    out1, out2 = heads[m0](a), heads[m1](v)
    outa, outv = classifier(a), classifier(v)
    loss_c = criterion2(a, v, A, V, label) if ctx.epoch >= contrast_epoch else 0
    loss = criterion(out1, label) + criterion(out2, label) + criterion(outa, label) * weight
    (loss + criterion(outv, label) * weight + loss_c).backward()


def official_stage2_step(model, _extra, batch, _ctx):
    """main_CFT_stage2.py:94-118: frozen encoders (eval, no_grad), CE on the fusion classifier."""
    m0, m1 = model.modalities
    model.encoders.eval()
    with torch.no_grad():
        a, v = model.encoders[m0](batch.inputs[m0]), model.encoders[m1](batch.inputs[m1])
    nn.CrossEntropyLoss()(model.head(torch.cat((a, v), 1)), batch.target).backward()


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


def test_equivalent_to_the_official_steps(tmp_path):
    tr = two_modality_trainer(tmp_path, "di_mml", stage1_epochs=1, contrast_epoch=0)  # 2 epochs
    tr.ctx.epoch = 0
    feats, labels = {m: [] for m in tr.modalities}, []
    tr.model.eval()
    with torch.no_grad():
        for batch in tr.iterate("train"):
            for m, f in tr.model(batch.inputs).features.items():
                feats[m].append(f)
            labels.append(batch.target)
    A, V = official_indices(
        torch.cat(feats["m0"]), torch.cat(feats["m1"]), torch.cat(labels), tr.task.num_classes
    )
    tr.method.on_epoch_start(tr.ctx)
    assert (
        tr.method.only["m0"].nonzero()[:, 0].tolist() == A
        and tr.method.only["m1"].nonzero()[:, 0].tolist() == V
    )

    def stage1(model, extra, batch, ctx):
        official_stage1_step(model, extra, batch, ctx, A, V, contrast_epoch=0)

    extra = [tr.method.heads, tr.method.shared]
    assert side_by_side(tr, stage1, steps=4, extra=extra) < 1e-6
    tr.ctx.epoch = 1
    assert side_by_side(tr, official_stage2_step, steps=3, extra=extra) < 1e-6


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
