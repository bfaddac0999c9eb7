from __future__ import annotations

import math

import pytest
from _method_helpers import trainer
from conftest import small_spec

from mmbalance.training import runner
from mmbalance.training.method import MethodNotApplicable


def test_each_encoder_gets_its_own_learning_rate(tmp_path):
    tr = trainer(tmp_path, "mslr", lr_scale={"m0": 0.5, "m2": 4.0}, head_lr_scale=2.0)
    lr = tr.spec.optim.lr
    groups = {g["modality"]: g for g in tr.optimizer.param_groups}
    for m, scale in {"m0": 0.5, "m1": 1.0, "m2": 4.0}.items():
        expected = {id(p) for p in tr.model.encoder_parameters(m)}
        assert expected and {id(p) for p in groups[m]["params"]} == expected
        assert groups[m]["lr"] == pytest.approx(lr * scale)
    head = {id(p) for p in tr.model.head.parameters()}
    assert head and head <= {id(p) for p in groups["head"]["params"]}
    assert groups["head"]["lr"] == pytest.approx(lr * 2.0)
    assert tr.method.diagnostics(tr.ctx)["lr/m2"] == pytest.approx(lr * 4.0)


def test_scheduler_scales_every_group(tmp_path):
    spec = small_spec(method="mslr", method_params={"lr_scale": {"m1": 3.0}}, epochs=2,
                      schedule={"name": "step", "step_size": 1, "gamma": 0.1})  # fmt: skip
    r = runner.train(spec, results=tmp_path, progress=False)
    assert r.status == "done" and math.isfinite(r.final["test"]["accuracy"])


def test_unknown_modality_is_refused():
    with pytest.raises(MethodNotApplicable, match="audio"):
        runner.make_method(small_spec(method="mslr", method_params={"lr_scale": {"audio": 2.0}})).check(
            runner.make_adapter(small_spec()).task
        )


def test_one_epoch_run_is_finite(tmp_path):
    spec = small_spec(method="mslr", method_params={"lr_scale": {"m2": 3.0}}, epochs=1)
    r = runner.train(spec, results=tmp_path, progress=False)
    assert r.status == "done" and math.isfinite(r.final["test"]["accuracy"])
