from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _equivalence import side_by_side_float64, two_modality_trainer
from _method_helpers import assert_resume_is_exact, first_batch, trainer
from torch import nn

from mmbalance.methods.remix import Remix, assign, kl_to_uniform
from mmbalance.models.transformer import MSAModelParams, build_msa_model
from mmbalance.training.method import MethodNotApplicable


def kl_divergence(predictions, num_classes):
    """MatthewMaxy/Remix_ICML2025 train.py:52-57 (num_classes passed instead of the code's 6)."""
    uniform_distribution = np.full(num_classes, 1.0 / num_classes)
    predictions = np.clip(predictions, 1e-9, 1.0)
    return np.sum(predictions * np.log2(predictions / uniform_distribution))


def official_remix(model, heads, batches, n_classes):
    """train.py:60-99: (audio subset, video subset) as lists of train indices."""
    audio_dataset, video_dataset, index = [], [], 0
    softmax = nn.Softmax(dim=1)
    m0, m1 = model.modalities
    with torch.no_grad():
        for batch in batches:
            a, v = model.encoders[m0](batch.inputs[m0]), model.encoders[m1](batch.inputs[m1])
            pred_a, pred_v = softmax(heads[m0](a)), softmax(heads[m1](v))
            for i in range(len(batch)):
                KL_audio = kl_divergence(pred_a[i].cpu().data.numpy(), n_classes)
                KL_video = kl_divergence(pred_v[i].cpu().data.numpy(), n_classes)
                (audio_dataset if KL_audio < KL_video else video_dataset).append(index)
                index += 1
    return audio_dataset, video_dataset


def official_remix_step(model, extra, batch, ctx, alpha=0.5, beta=0.5, gamma1=1.0, gamma2=1.0):
    """train.py:101-125 (warm-up, no tags) and 127-174 with models.py:38-67 (mode from the subset)."""
    heads, label, criterion = extra[0].heads, batch.target, nn.CrossEntropyLoss()
    m0, m1 = model.modalities
    a, v = model.encoders[m0](batch.inputs[m0]).clone(), model.encoders[m1](batch.inputs[m1]).clone()
    mode = None if ctx.tags is None else ("audio", "video")[int(ctx.tags[0])]
    if mode == "video":
        a[:, :] = 0.0
    elif mode == "audio":
        v[:, :] = 0.0
    out = model.head(torch.cat((a, v), 1))
    out_audio, out_video = heads[m0](a), heads[m1](v)
    loss_av = criterion(out, label)
    if mode is None:
        loss = loss_av + alpha * criterion(out_audio, label) + beta * criterion(out_video, label)
    elif mode == "video":
        loss = loss_av + gamma1 * criterion(out_video, label)
    else:
        loss = loss_av + gamma2 * criterion(out_audio, label)
    loss.backward()


def test_kl_and_assignment_hand_computed():
    # p = (0.75, 0.25): 0.75 log2(1.5) + 0.25 log2(0.5) = 0.1887219; uniform: 0
    z = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    assert kl_to_uniform(z).tolist() == pytest.approx([0.1887219, 0.0], abs=1e-6)
    assert kl_to_uniform(z)[0].item() == pytest.approx(kl_divergence(np.array([0.75, 0.25]), 2), abs=1e-6)
    assert assign(torch.tensor([[0.1, 0.2], [0.3, 0.3], [0.5, 0.1], [0.2, 0.3]])).tolist() == [
        0,
        1,
        1,
        0,
    ]
    assert assign(torch.tensor([[0.4, 0.1, 0.1]])).tolist() == [2]


def test_subsets_equal_the_released_remix(tmp_path):
    tr = two_modality_trainer(tmp_path, "remix", warmup=1)
    assert tr.method.epoch_samples(tr.ctx) is None
    tr.ctx.epoch = 1
    video, audio = tr.method.epoch_samples(tr.ctx)  # video first, as train.py:136-171
    ref_audio, ref_video = official_remix(
        tr.model, tr.method.heads.heads, tr.iterate("train"), tr.model.out_layer.out_features
    )
    assert [i for i, _ in audio] == ref_audio and [i for i, _ in video] == ref_video
    assert {t for _, t in audio} <= {0} and {t for _, t in video} <= {1}
    assert len(audio) + len(video) == len(tr.datasets["train"])


def test_a_subset_batch_trains_only_its_modality(tmp_path):
    tr = trainer(tmp_path, "remix")
    batch = first_batch(tr)
    tr.ctx.tags = torch.full((len(batch),), 1)  # the m1 subset
    tr.model.zero_grad(set_to_none=True)
    tr.method.heads.zero_grad(set_to_none=True)
    out = tr.method.forward(tr.model, batch, tr.ctx)
    tr.method.loss(out, batch, tr.ctx).backward()
    for j, m in enumerate(tr.modalities):
        owned = tr.model.encoder_parameters(m) + list(tr.method.heads.heads[m].parameters())
        assert owned
        total = sum(p.grad.abs().sum().item() for p in owned if p.grad is not None)
        assert (total > 0) == (j == 1)


def test_equivalent_to_the_official_step(tmp_path):
    tr = two_modality_trainer(tmp_path, "remix", warmup=0)
    warm = [(b, None) for b in [first_batch(tr)] * 2]
    parts = tr.method.epoch_samples(tr.ctx)
    # At this initialisation every sample goes to m0's subset; one batch of m1's subset is added.
    parts = [*parts, [(i, 1) for i in range(tr.spec.batch_size)]]
    batches = warm + list(tr.planned_batches(parts, 0))
    assert len(batches) >= 6 and {int(t[0]) for _, t in batches[2:]} == {0, 1}  # both subsets
    steps = len(batches)
    diff = side_by_side_float64(tr, official_remix_step, steps, extra=[tr.method.heads], batches=batches)
    assert diff.steps == steps and diff.gradients < 1e-12 and diff.parameters < 1e-12  # no coefficients


def test_refusals(tmp_path):
    for task in ("regression", "segmentation"):
        with pytest.raises(MethodNotApplicable, match="supports"):
            trainer(tmp_path, "remix", task=task)
    model = build_msa_model({"a": 4, "b": 4}, 3, MSAModelParams(proj_dim=8, num_heads=2, layers=2))
    with pytest.raises(MethodNotApplicable, match="concatenated"):
        Remix().build(SimpleNamespace(model=model))


def test_resume_is_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "remix", warmup=1)
