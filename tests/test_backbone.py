"""Backbone imbalance (mmbalance/training/backbone.py): one modality's encoder starts from a recorded unimodal run."""

from __future__ import annotations

import torch
from conftest import small_spec

from mmbalance.common.records import RunDir
from mmbalance.common.spec import validate_spec
from mmbalance.training.backbone import encoder_state, pretrain_spec
from mmbalance.training.runner import train


def with_backbone(freeze: bool, **overrides):
    spec = small_spec(**overrides)
    return validate_spec(
        {**spec.model_dump(), "pretrained": {"modality": "m0", "freeze": freeze, "epochs": 2}}
    )


def test_the_backbone_run_depends_on_the_data_and_seed_only():
    a = pretrain_spec(with_backbone(False))
    b = pretrain_spec(with_backbone(True, method="ogm_ge", optim={"lr": 0.3}))
    assert a.run_id() == b.run_id()  # every method of a block starts from the same backbone
    assert a.method == "unimodal" and a.method_params == {"modality": "m0"} and a.epochs == 2
    assert pretrain_spec(with_backbone(False, seed=1)).run_id() != a.run_id()
    assert "pretrained" not in small_spec().canonical()  # earlier run ids stay
    assert with_backbone(False).run_id() != small_spec().run_id()


def test_a_frozen_backbone_is_the_unimodal_runs_encoder_throughout(tmp_path):
    result = train(with_backbone(True), tmp_path, progress=False)  # small_spec logs probes: they skip m0
    assert result.status == "done"
    [pre] = [RunDir(d) for d in (tmp_path / "runs").iterdir() if RunDir(d).spec()["method"] == "unimodal"]
    assert pre.status() == "done" and pre.spec()["epochs"] == 2
    backbone = encoder_state(pre.path, "m0")
    trained = torch.load(RunDir(result.path).file("best.pt"), weights_only=False)["model"]
    for k, v in backbone.items():
        assert torch.equal(trained[f"encoders.m0.{k}"], v)
    # fine-tuned: it starts there and moves; a second method reuses the recorded backbone run
    tuned = train(with_backbone(False), tmp_path, progress=False)
    moved = torch.load(RunDir(tuned.path).file("best.pt"), weights_only=False)["model"]
    assert any(not torch.equal(moved[f"encoders.m0.{k}"], v) for k, v in backbone.items())
    assert len(list((tmp_path / "runs").iterdir())) == 3  # frozen, fine-tuned and one backbone run


def test_a_model_without_the_modality_takes_nothing(tmp_path):
    spec = with_backbone(False, method="unimodal", method_params={"modality": "m1"})
    plain = small_spec(method="unimodal", method_params={"modality": "m1"})
    a, b = train(spec, tmp_path, progress=False), train(plain, tmp_path, progress=False)
    assert a.final["test"] == b.final["test"]


def test_an_unknown_backbone_modality_is_a_one_line_error(tmp_path, capsys):
    from mmbalance.cli import main

    argv = [
        "run",
        "--results",
        str(tmp_path),
        "--quiet",
        "--set",
        "epochs=1",
        "--set",
        "pretrained.modality=m9",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == "error: pretrained.modality 'm9': not a modality of synthetic (m0, m1, m2)\n"
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
