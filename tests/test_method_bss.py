from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _equivalence import side_by_side_float64, two_modality_trainer
from _method_helpers import assert_resume_is_exact, trainer
from torch import nn

from mmbalance.methods.bss import min_max, pace, sample_scores
from mmbalance.training.method import MethodNotApplicable


def normalize_min_max(values):
    """njustkmg/IJCAI25-BSS CREMA-D/train-CL.py:135-139."""
    min_val = np.min(values)
    max_val = np.max(values)
    return [(v - min_val) / (max_val - min_val) for v in values]


def official_scores(model, heads, batches):
    """train-CL.py:141-172 (model_evaluate) on our two-modality model: (similarities, losses) lists."""
    similarities, losses = [], []
    criterion = nn.CrossEntropyLoss(reduction="none")
    m0, m1 = model.modalities
    model.train()
    for batch in batches:
        label = batch.target
        a, v = model.encoders[m0](batch.inputs[m0]), model.encoders[m1](batch.inputs[m1])
        out_mm, out_m1, out_m2 = model.head(torch.cat((a, v), dim=1)), heads[m0](a), heads[m1](v)
        cosine_sim = F.cosine_similarity(F.softmax(out_m1, dim=1), F.softmax(out_m2, dim=1), dim=1)
        similarities.extend(cosine_sim.detach().cpu().numpy())
        total_loss = 0.9 * (criterion(out_m1, label) + criterion(out_m2, label)) + 0.1 * criterion(
            out_mm, label
        )
        losses.extend(total_loss.detach().cpu().numpy())
    return normalize_min_max(similarities), normalize_min_max(losses)


def official_bss_step(model, extra, batch, _ctx):
    """train-CL.py:46-58 (train): 0.1 CE(mm) + 0.9 (CE(m1) + CE(m2))."""
    heads, label, criterion = extra[0].heads, batch.target, nn.CrossEntropyLoss()
    m0, m1 = model.modalities
    a, v = model.encoders[m0](batch.inputs[m0]), model.encoders[m1](batch.inputs[m1])
    out_mm, out_m1, out_m2 = model.head(torch.cat((a, v), dim=1)), heads[m0](a), heads[m1](v)
    (0.1 * criterion(out_mm, label) + 0.9 * (criterion(out_m1, label) + criterion(out_m2, label))).backward()


def test_pace_scores_hand_computed():
    assert pace(0, 0.1, 40) == pytest.approx(0.1864135, abs=1e-6)  # sqrt(0.99 / 40 + 0.01)
    assert pace(39, 0.1, 40) == 1.0 and pace(80, 0.1, 40) == 1.0
    assert min_max(torch.tensor([2.0, 4.0, 3.0])).tolist() == [0.0, 1.0, 0.5]
    zero = torch.zeros(1, 2)  # uniform over 2 classes: every CE is log 2, the distributions agree
    sim, loss = sample_scores(zero, [zero, zero], torch.tensor([0]), 0.1, 0.9)
    assert sim.item() == pytest.approx(1.0) and loss.item() == pytest.approx(1.9 * math.log(2))
    sharp = torch.tensor([[20.0, -20.0]])  # (1, 0) against (0, 1): cosine 0
    sim, _ = sample_scores(zero, [sharp, -sharp], torch.tensor([0]), 0.1, 0.9)
    assert sim.item() == pytest.approx(0.0, abs=1e-6)


def test_heuristic_curriculum_equals_the_released_order(tmp_path):
    tr = two_modality_trainer(tmp_path, "bss")
    tr.ctx.batch_size = 8
    (part,) = tr.method.epoch_samples(tr.ctx)
    sims, losses = official_scores(tr.model, tr.method.heads.heads, tr.iterate("train"))
    combined = [(1 - s) + x for s, x in zip(sims, losses, strict=True)]
    order = sorted(range(len(combined)), key=lambda k: combined[k], reverse=False)
    n = int(len(order) * pace(0, 0.1, 40))
    assert [i for i, _ in part] == order[:n] and 0 < n < len(order)
    tr.ctx.batch_size = 2 * n  # the curriculum never starts below one batch
    tr.method.order = None
    assert [i for i, _ in tr.method.epoch_samples(tr.ctx)[0]] == order[: 2 * n]
    tr.ctx.epoch = 39  # all samples by T_grow; the order is not recomputed
    (part,) = tr.method.epoch_samples(tr.ctx)
    assert [i for i, _ in part] == order
    batches = list(tr.planned_batches([part], 39))
    assert sorted(int(i.split("-")[-1]) for b, _ in batches for i in b.ids) == sorted(order)


def test_learned_sampler_equals_the_released_draw(tmp_path):
    tr = two_modality_trainer(tmp_path, "bss", scheduler="learned")
    assert tr.method.ordered_samples
    state = torch.get_rng_state()
    (part,) = tr.method.epoch_samples(tr.ctx)
    sims, losses = official_scores(tr.model, tr.method.heads.heads, tr.iterate("train"))
    weights = (
        1 - torch.tensor([(x - s) for s, x in zip(sims, losses, strict=True)]) + 1e-2
    )  # train-SPL.py:177-180
    torch.set_rng_state(state)
    drawn = torch.multinomial(weights / weights.sum(), num_samples=len(weights), replacement=False)
    assert [i for i, _ in part] == drawn.tolist()
    first = next(iter(tr.planned_batches([part], 0)))[0]  # trained in the drawn order
    assert [int(i.split("-")[-1]) for i in first.ids] == drawn.tolist()[: len(first)]


def test_equivalent_to_the_official_step(tmp_path):
    tr = two_modality_trainer(tmp_path, "bss", scheduler="learned")  # every sample: several batches
    (part,) = tr.method.epoch_samples(tr.ctx)
    batches = tr.planned_batches([part], 0)
    diff = side_by_side_float64(tr, official_bss_step, steps=3, extra=[tr.method.heads], batches=batches)
    assert diff.steps == 3 and diff.gradients < 1e-12 and diff.parameters < 1e-12  # the order: tests above


def official_test_accuracy(model, heads, batches, ks: bool) -> float:
    """train-CL.py:86-108 (``test``): argmax of softmax(out_m1 + out_m2); KS/train-CL.py:99 adds out_mm."""
    m0, m1 = model.modalities
    correct = total = 0
    model.eval()
    with torch.no_grad():
        for batch in batches:
            a, v = model.encoders[m0](batch.inputs[m0]), model.encoders[m1](batch.inputs[m1])
            out_mm, out_m1, out_m2 = model.head(torch.cat((a, v), dim=1)), heads[m0](a), heads[m1](v)
            out = out_m1 + out_m2 + out_mm if ks else out_m1 + out_m2
            preds = torch.max(torch.nn.functional.softmax(out, dim=1), 1)[1]
            correct += (preds == batch.target).sum().item()
            total += len(batch.target)
    return 100 * correct / total


@pytest.mark.parametrize("prediction", ["unimodal", "all"])
def test_evaluation_is_the_official_test(tmp_path, prediction):
    tr = two_modality_trainer(tmp_path, "bss", prediction=prediction)
    for batch in list(tr.iterate("train"))[:3]:  # a few steps, so that the heads disagree with the fused head
        tr.train_batch(batch)
    heads = tr.method.heads.heads
    expected = official_test_accuracy(tr.model, heads, tr.iterate("test"), ks=prediction == "all")
    assert tr.evaluate("test")["accuracy"] == pytest.approx(expected)
    tr.ctx.training = False
    batch = next(iter(tr.iterate("test")))
    out = tr.method.forward(tr.model, batch, tr.ctx)
    fused = tr.model(batch.inputs).pred
    uni = sum(heads[m](out.features[m]) for m in tr.modalities)
    assert torch.allclose(out.pred, uni + fused if prediction == "all" else uni)
    assert not torch.allclose(out.pred, fused)


def test_segmentation_and_refusal(tmp_path):
    tr = trainer(tmp_path, "bss", task="segmentation")
    (part,) = tr.method.epoch_samples(tr.ctx)
    assert part and math.isfinite(tr.train_batch(next(iter(tr.planned_batches([part], 0)))[0]))
    with pytest.raises(MethodNotApplicable, match="no classes"):
        trainer(tmp_path, "bss", task="regression")


@pytest.mark.parametrize("scheduler", ["heuristic", "learned"])
def test_resume_is_exact(tmp_path, monkeypatch, scheduler):
    assert_resume_is_exact(tmp_path, monkeypatch, "bss", scheduler=scheduler)
