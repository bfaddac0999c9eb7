from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _method_helpers import assert_resume_is_exact, first_batch, grads_after, trainer

from mmbalance.methods.pmr import class_prototypes, pmr_coefficients, prototype_logits, stack_padded
from mmbalance.training.method import MethodNotApplicable


def official_two_modality(score_a: float, score_v: float, alpha: float) -> tuple[float, float]:
    """fanyunfeng-bit/Modal-Imbalance-PMR main_Prototype_grad.py: (beta, lam) = (audio, visual) weights."""
    ratio_a_p = score_a / score_v
    if ratio_a_p > 1:
        return 0.0, alpha
    if ratio_a_p < 1:
        return alpha, 0.0
    return 0.0, 0.0


def test_prototypes_are_class_means_and_a_missing_class_keeps_its_old_row():
    features = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    previous = torch.tensor([[9.0, 9.0], [9.0, 9.0], [5.0, 5.0]])
    protos = class_prototypes(features, torch.tensor([0, 0, 1]), 3, previous)
    assert protos.tolist() == [[2.0, 0.0], [0.0, 2.0], [5.0, 5.0]]
    assert class_prototypes(features, torch.tensor([0, 0, 1]), 3)[2].tolist() == [0.0, 0.0]


def test_prototype_logits_are_negative_euclidean_distances():
    sim = prototype_logits(torch.tensor([[0.0, 0.0], [3.0, 5.0]]), torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
    torch.testing.assert_close(sim, torch.tensor([[-5.0, -1.0], [-1.0, -5.0]]))


def test_padded_batch_of_modalities_keeps_each_modalitys_distances():
    f = [torch.randn(5, 2), torch.randn(5, 3)]
    p = [torch.randn(4, 2), torch.randn(4, 3)]
    batched = prototype_logits(stack_padded(f), stack_padded(p))  # (2, 5, 4)
    for m in range(2):
        torch.testing.assert_close(batched[m], prototype_logits(f[m], p[m]))


@pytest.mark.parametrize("scores", [(3.0, 6.0), (6.0, 3.0), (4.0, 4.0)])
def test_two_modalities_equal_the_official_switch(scores):
    _, coeff = pmr_coefficients(scores, alpha=2.0)
    assert tuple(coeff) == official_two_modality(*scores, alpha=2.0)


def test_three_modalities_only_below_the_mean_of_the_others():
    # ratios 3 / 1.5 = 2, 2 / 2 = 1, 1 / 2.5 = 0.4 -> only m2 gets alpha
    ratio, coeff = pmr_coefficients([3.0, 2.0, 1.0], alpha=1.5)
    assert ratio == pytest.approx([2.0, 1.0, 0.4])
    assert coeff == [0.0, 0.0, 1.5]


def test_loss_adds_alpha_times_the_prototypical_ce_of_the_weaker_modality(tmp_path):
    tr = trainer(tmp_path, "pmr", alpha=2.0)
    tr.method.on_epoch_start(tr.ctx)
    batch = first_batch(tr)
    out = tr.model(batch.inputs)
    loss = tr.method.loss(out, batch, tr.ctx)
    expected = F.cross_entropy(out.pred, batch.target)
    for i, m in enumerate(tr.ctx.modalities):
        dist = torch.cdist(out.features[m], tr.method.prototypes[m])
        p = (-dist).softmax(1)[torch.arange(len(batch)), batch.target].sum()
        others = [
            (-torch.cdist(out.features[k], tr.method.prototypes[k])).softmax(1) for k in tr.ctx.modalities
        ]
        s = [q[torch.arange(len(batch)), batch.target].sum() for q in others]
        mean_others = (sum(s) - p) / (len(s) - 1)
        if p < mean_others:
            expected = expected + 2.0 * F.cross_entropy(-dist, batch.target)
        assert tr.method.coeff[i] == (2.0 if p < mean_others else 0.0)
    torch.testing.assert_close(loss, expected)


def test_only_the_weaker_modality_gets_the_prototype_loss(tmp_path):
    tr = trainer(tmp_path, "pmr", alpha=2.0)
    tr.method.on_epoch_start(tr.ctx)
    batch = first_batch(tr)
    plain = grads_after(tr, batch, hook=False)
    modulated = grads_after(tr, batch)
    weak = {m for m, c in zip(tr.ctx.modalities, tr.method.coeff, strict=True) if c > 0}
    assert weak and len(weak) < len(tr.ctx.modalities)
    for n, g in plain.items():
        enc = n.split(".")[1] if n.startswith("encoders.") else None
        if enc in weak and n.endswith("weight"):
            assert not torch.equal(modulated[n], g), n
        elif enc not in weak:  # stronger encoders and the fusion head: exactly the task gradient
            torch.testing.assert_close(modulated[n], g, rtol=0, atol=0)


def test_prototypes_use_eval_mode_a_tenth_of_random_batches_and_momentum_from_the_third(tmp_path):
    tr = trainer(tmp_path, "pmr", momentum=0.25)
    assert tr.method.proto_batches == 1  # 4 batches // 10 -> at least one, as the official loop

    def prototypes_of(k: int, previous=None) -> dict[str, torch.Tensor]:
        """Prototypes of the k-th shuffled pass's first batch, in eval mode."""
        batch = next(tr.ctx.iterate("train", shuffle_round=k))
        tr.model.eval()
        with torch.no_grad():
            feats = tr.model(batch.inputs).features
        tr.model.train()
        return {m: class_prototypes(feats[m], batch.target, 4, previous and previous[m]) for m in feats}

    tr.model.train()
    tr.method.on_epoch_start(tr.ctx)
    assert tr.model.training
    first = {m: p.clone() for m, p in tr.method.prototypes.items()}
    for m, p in prototypes_of(0).items():
        torch.testing.assert_close(first[m], p)
    unshuffled = next(tr.ctx.iterate("train"))
    assert not torch.equal(next(tr.ctx.iterate("train", shuffle_round=0)).target, unshuffled.target)
    # The second computation (after epoch 0) has no momentum: the released code skips it while epoch <= 0.
    with torch.no_grad():
        for p in tr.model.parameters():
            p.add_(0.1)
    tr.method.on_epoch_end(tr.ctx)
    second = {m: p.clone() for m, p in tr.method.prototypes.items()}
    for m, p in prototypes_of(1, first).items():
        torch.testing.assert_close(second[m], p)
    # The third computation mixes in the previous prototypes.
    with torch.no_grad():
        for p in tr.model.parameters():
            p.add_(0.1)
    tr.method.on_epoch_end(tr.ctx)
    for m, p in prototypes_of(2, second).items():
        torch.testing.assert_close(tr.method.prototypes[m], 0.75 * p + 0.25 * second[m])


def test_no_prototype_loss_outside_the_window(tmp_path):
    tr = trainer(tmp_path, "pmr", modulation_starts=2, modulation_ends=4)
    tr.method.on_epoch_start(tr.ctx)
    batch = first_batch(tr)
    out = tr.model(batch.inputs)
    torch.testing.assert_close(tr.method.loss(out, batch, tr.ctx), F.cross_entropy(out.pred, batch.target))
    assert math.isfinite(tr.method.diagnostics(tr.ctx)["proto_loss/m0"])  # still logged


@pytest.mark.parametrize("task", ["regression", "segmentation"])
def test_refuses_tasks_without_per_sample_classes(tmp_path, task):
    with pytest.raises(MethodNotApplicable, match="class prototypes"):
        trainer(tmp_path, "pmr", task=task)


def test_resume_is_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "pmr", alpha=2.0)
