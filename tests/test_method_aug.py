from __future__ import annotations

import math

import pytest
import torch
from _method_helpers import assert_resume_is_exact, first_batch, trainer
from conftest import small_spec

from mmbalance.methods.aug import BoostedClassifiers, boosting_loss, merge_weights, weakest_to_boost
from mmbalance.training.method import MethodNotApplicable
from mmbalance.training.runner import train


def test_boosting_loss_by_hand():
    # previous = [0, 0]: p_y = 1/2, k = [1/2, 0]; last = [ln 3, 0]: q = [3/4, 1/4]; total = previous + last.
    # CE(total) = CE(last) = -ln 3/4, CE(previous) = ln 2, CE(last, k) = -1/2 ln 3/4
    # loss = -2 ln 3/4 + ln 2 - 0.5 (-1/2 ln 3/4) = ln 2 - 1.75 ln 3/4
    y = torch.tensor([0])
    previous, last = torch.zeros(1, 2), torch.tensor([[math.log(3), 0.0]])
    loss = boosting_loss(previous + last, previous, last, y, lam=0.5)
    assert loss.item() == pytest.approx(math.log(2) - 1.75 * math.log(0.75))
    assert boosting_loss(last, None, None, y, lam=0.5).item() == pytest.approx(-math.log(0.75))


def test_weakest_modality_gets_a_learner_past_the_target_ratio():
    assert weakest_to_boost({"a": 1.0, "v": 0.5}, lam=1.0, margin=0.01) == "v"
    assert weakest_to_boost({"a": 0.5, "v": 1.0}, lam=1.0, margin=0.01) == "a"
    assert weakest_to_boost({"a": 1.0, "v": 0.995}, lam=1.0, margin=0.01) is None  # inside the margin
    assert weakest_to_boost({"a": 3.0, "b": 1.0, "c": 2.0}, lam=2.5, margin=0.01) == "b"
    assert weakest_to_boost({"a": 3.0, "b": 1.0, "c": 2.0}, lam=3.0, margin=0.01) is None


def test_merge_weights_by_hand():
    assert merge_weights(["a", "v"], 0.4) == pytest.approx({"a": 0.4, "v": 0.6})
    assert merge_weights(["a", "b", "c"], 0.4) == pytest.approx({"a": 0.4, "b": 0.3, "c": 0.3})


def test_learners_add_up_frozen_and_pass_gradient_to_the_features():
    torch.manual_seed(0)
    clf = BoostedClassifiers({"a": 3, "v": 5}, hidden=4, n_out=2)
    f = torch.randn(6, 3, requires_grad=True)
    total, previous, last = clf("a", f)
    assert previous is None and last is None
    clf.add_learner("a")
    clf.add_learner("a")
    g1, g2 = clf.learners["a"]
    share = [clf.fc_out(torch.relu(g(f))) for g in (g1, g2)]
    base = clf.fc_out(torch.relu(clf.embedding["a"](f)))
    total, previous, last = clf("a", f)
    torch.testing.assert_close(previous, base + share[0])
    torch.testing.assert_close(last, share[1])
    torch.testing.assert_close(total, base + share[0] + share[1])
    assert all(not p.requires_grad for p in g1.parameters()) and g1.bias.abs().sum() == 0
    last.sum().backward()  # the newest learner's share reaches the features and fc_out, not the learner
    assert f.grad.abs().sum() > 0 and clf.fc_out.weight.grad.abs().sum() > 0 and g2.weight.grad is None
    assert len(clf.learners["v"]) == 0


def test_turns_train_one_modality_each_and_scores_accumulate(tmp_path):
    tr = trainer(tmp_path, "aug")
    assert list(tr.method.turns(tr.ctx)) == tr.ctx.modalities
    batch = first_batch(tr)
    tr.method.on_epoch_start(tr.ctx)
    tr.ctx.turn = "m1"
    out = tr.method.forward(tr.model, batch, tr.ctx)
    tr.model.zero_grad(set_to_none=True)
    tr.method.loss(out, batch, tr.ctx).backward()
    score = out.pred.softmax(1).gather(1, batch.target.unsqueeze(1)).sum().item()
    assert tr.method.scores == pytest.approx({"m0": 0.0, "m1": score, "m2": 0.0})
    active = tr.model.encoder_parameters("m1")
    assert active and all(p.grad is not None for p in active)
    assert all(p.grad is None for m in ("m0", "m2") for p in tr.model.encoder_parameters(m))
    assert all(p.grad is None for p in tr.model.head.parameters())  # the model's own head is unused


def test_the_deciding_epoch_is_evaluated_before_its_learner_is_added(tmp_path):
    tr = trainer(tmp_path, "aug")
    tr.method.scores = {"m0": 10.0, "m1": 1.0, "m2": 5.0}
    tr.ctx.epoch = 0
    tr.method.on_epoch_end(tr.ctx)  # epoch 0 always checks
    assert tr.method.pending == "m1" and len(tr.method.classifiers.learners["m1"]) == 0
    tr.ctx.epoch = 1
    tr.method.on_epoch_start(tr.ctx)
    assert tr.method.pending is None and len(tr.method.classifiers.learners["m1"]) == 1
    assert tr.method.scores == {"m0": 0.0, "m1": 0.0, "m2": 0.0}


def test_prediction_is_the_merged_classifiers(tmp_path):
    tr = trainer(tmp_path, "aug", merge_alpha=0.5)
    batch = first_batch(tr)
    tr.ctx.training = False
    with torch.no_grad():
        out = tr.method.forward(tr.model, batch, tr.ctx)
        f = tr.model.encode(batch.inputs)
        expected = 0.5 * tr.method.classifiers("m0", f["m0"])[0] + sum(
            0.25 * tr.method.classifiers(m, f[m])[0] for m in ("m1", "m2")
        )
    torch.testing.assert_close(out.pred, expected)


def test_two_epoch_run_adds_learners_and_resumes_exactly(tmp_path, monkeypatch):
    r = train(small_spec(method="aug", epochs=2), results=tmp_path / "run", progress=False)
    assert r.status == "done" and math.isfinite(r.final["test"]["accuracy"])
    assert_resume_is_exact(tmp_path, monkeypatch, "aug", lam=0.5)  # lam < 1: a learner after epoch 0


def test_refuses_regression(tmp_path):
    with pytest.raises(MethodNotApplicable, match="aug"):
        train(
            small_spec(method="aug", dataset_params={"task": "regression"}), results=tmp_path, progress=False
        )
