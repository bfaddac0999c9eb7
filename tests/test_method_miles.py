from __future__ import annotations

import math

import pytest
from _method_helpers import assert_resume_is_exact, trainer
from conftest import small_spec

from mmbalance.methods.miles import lr_scales, utilisation
from mmbalance.training.method import MethodNotApplicable
from mmbalance.training.runner import train


def test_utilisation_and_scales_by_hand():
    u = utilisation(0.8, {"a": 0.7, "b": 0.4})  # (0.8 - 0.4) / 0.8, (0.8 - 0.7) / 0.8
    assert u == pytest.approx({"a": 0.5, "b": 0.125})
    assert lr_scales(u, threshold=0.2, reduction=0.5) == {"a": 0.5, "b": 1.0}
    assert lr_scales(u, threshold=0.4, reduction=0.5) == {"a": 1.0, "b": 1.0}  # gap 0.375 <= 0.4
    neg = utilisation(0.5, {"a": 0.6, "b": 0.7})  # both negative: no change
    assert neg == pytest.approx({"a": -0.4, "b": -0.2}) and lr_scales(neg, 0.1, 0.5) == {"a": 1.0, "b": 1.0}
    u3 = utilisation(0.9, {"a": 0.9, "b": 0.6, "c": 0.3})  # others' mean: 0.45, 0.6, 0.75
    assert u3 == pytest.approx({"a": 0.5, "b": 1 / 3, "c": 1 / 6})


def test_the_dominant_encoder_group_gets_the_reduced_rate(tmp_path):
    tr = trainer(tmp_path, "miles", threshold=0.2, reduction=0.25)
    groups = tr.optimizer.param_groups
    for group, m in zip(groups, tr.ctx.modalities, strict=False):
        enc = tr.model.encoder_parameters(m)
        assert enc and [id(p) for p in group["params"]] == [id(p) for p in enc]
    head_ids = {id(p) for p in tr.model.head.parameters()} | {id(p) for p in tr.method.heads.parameters()}
    assert head_ids <= {id(p) for p in groups[-1]["params"]}
    tr.method.correct = {"fused": 8.0, "m0": 7.0, "m1": 2.0, "m2": 2.0}
    tr.method.seen = 10
    tr.method.on_epoch_end(tr.ctx)  # u = (0.8 - 0.2)/0.8, (0.8 - 0.45)/0.8 twice: gap 0.3125
    assert tr.method.scale == {"m0": 0.25, "m1": 1.0, "m2": 1.0}
    tr.method.on_epoch_start(tr.ctx)
    base = groups[-1]["lr"]
    assert [g["lr"] for g in groups] == pytest.approx([0.25 * base, base, base, base])


def test_one_epoch_run_is_finite(tmp_path):
    r = train(small_spec(method="miles", epochs=1), results=tmp_path, progress=False)
    assert r.status == "done" and math.isfinite(r.final["test"]["accuracy"])


def test_resume_is_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "miles", threshold=0.0)


def test_refuses_regression(tmp_path):
    with pytest.raises(MethodNotApplicable):
        train(
            small_spec(method="miles", dataset_params={"task": "regression"}),
            results=tmp_path,
            progress=False,
        )
