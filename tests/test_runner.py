"""The one loop: records, determinism, probes that do not perturb training, divergence, sweeps."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import small_spec

from mmbalance.common.records import RunDir, iter_runs
from mmbalance.scaleout.sweep import load_suite, plan, run_local
from mmbalance.training.runner import RunOptions, train


def test_a_run_writes_every_record(tmp_path):
    result = train(small_spec(), tmp_path, progress=False)
    rd = RunDir(result.path)
    assert result.status == "done" and rd.status() == "done"
    for name in ("spec.yaml", "env.json", "metrics.jsonl", "curves.csv", "final.json", "checkpoint.pt"):
        assert rd.file(name).exists(), name
    spec = yaml.safe_load(rd.file("spec.yaml").read_text())
    assert spec["run_id"] == result.run_id and spec["data_fingerprint"].startswith("train:")
    env = json.loads(rd.file("env.json").read_text())
    assert env["packages"]["torch"] and env["code_version"]
    epochs = rd.epochs()
    assert [e["epoch"] for e in epochs] == [0, 1]
    for e in epochs:  # each phase timed apart (the official CGGM epoch is train + valid only)
        phases = [e[f"{p}_seconds"] for p in ("train", "valid", "test")]
        assert all(s >= 0 for s in phases) and e["seconds"] == pytest.approx(sum(phases))
    assert set(epochs[0]["valid"]["probe"]) == {"m0", "m1", "m2"}
    header = rd.file("curves.csv").read_text().splitlines()[0].split(",")
    for col in ("grad_norm/m0", "grad_cos/m2", "probe_acc/m1", "loss", "step"):
        assert col in header
    final = rd.final()
    assert final["test"] == epochs[final["best_epoch"]]["test"]
    assert not list(rd.path.glob("*.tmp")), "no temp files left behind"


def test_same_spec_gives_identical_final_json(tmp_path):
    a = train(small_spec(), tmp_path / "a", progress=False)
    b = train(small_spec(), tmp_path / "b", progress=False)
    assert a.run_id == b.run_id
    assert a.path.joinpath("final.json").read_text() == b.path.joinpath("final.json").read_text()
    assert a.path.joinpath("curves.csv").read_text() == b.path.joinpath("curves.csv").read_text()
    assert "seconds" not in a.path.joinpath("final.json").read_text()  # timings stay in metrics.jsonl


@pytest.mark.parametrize("task", ["classification", "regression", "segmentation"])
def test_probes_do_not_change_the_trained_weights(tmp_path, task):
    params = {"task": task, "n_train": 64, "n_valid": 16, "n_test": 16}
    with_probes = train(small_spec(dataset_params=params, probe_every=1), tmp_path / "p", progress=False)
    without = train(small_spec(dataset_params=params, probe_every=0), tmp_path / "n", progress=False)
    wa = torch.load(with_probes.path / "checkpoint.pt", weights_only=False)["model"]
    wb = torch.load(without.path / "checkpoint.pt", weights_only=False)["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    with_probes.final["test"].pop("probe")
    assert with_probes.final["test"] == without.final["test"]


def test_finished_run_is_skipped(tmp_path):
    first = train(small_spec(), tmp_path, progress=False)
    mtime = (first.path / "final.json").stat().st_mtime_ns
    second = train(small_spec(), tmp_path, progress=False)
    assert second.status == "skipped" and second.run_id == first.run_id
    assert (first.path / "final.json").stat().st_mtime_ns == mtime


def _suite(tmp_path, lrs):
    doc = {
        "name": "t",
        "seeds": [0],
        "base": {
            "epochs": 1,
            "batch_size": 32,
            "dataset_params": {"n_train": 64, "n_valid": 16, "n_test": 16},
        },
        "datasets": [{"dataset": "synthetic"}],
        "methods": [{"method": "joint", "optim": {"lr": lr}} for lr in lrs],
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_suite(path)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # wanted: the inputs overflow
def test_diverging_run_is_marked_failed_and_the_sweep_goes_on(tmp_path):
    suite = _suite(tmp_path, [0.01, 0.01])
    # Inputs near float32's largest value overflow the first layer (an lr of 1e30 did this before
    # learning rates were bounded): the loss is inf or NaN at once.
    suite.methods[0]["dataset_params"] = {"scale": [1e38] * 3}
    planned = plan(suite)
    outcomes = run_local(planned, tmp_path / "res", options=RunOptions(progress=False))
    statuses = [r.status for _, r in outcomes]
    assert statuses == ["failed", "done"]
    failed = RunDir(outcomes[0][1].path)
    assert failed.status() == "failed" and "diverged: loss is" in failed.failure_reason()
    assert not failed.file("final.json").exists()


def test_sweep_reuses_finished_runs_and_expands_unimodal(tmp_path):
    suite = _suite(tmp_path, [0.01])
    suite.methods.append({"method": "unimodal"})
    planned = plan(suite)
    assert [p.spec.method_params.get("modality") for p in planned] == [None, "m0", "m1", "m2"]
    first = run_local(planned, tmp_path / "res", options=RunOptions(progress=False))
    assert {r.status for _, r in first} == {"done"}
    again = run_local(planned, tmp_path / "res", options=RunOptions(progress=False))
    assert {r.status for _, r in again} == {"skipped"}
    assert len(iter_runs(tmp_path / "res", status="done")) == 4


def test_joint_training_is_lazy_on_the_default_scenario(tmp_path):
    """The default (``lazy``) scenario at the suite's settings, seed 0: the weak modality m2 reaches far more
    alone than its probe inside the joint model, and the unimodal ensemble beats joint training.
    (About 25 s: the suite's core claim, so it runs in the fast tier.)"""
    base = {"epochs": 12, "batch_size": 64, "optim": {"lr": 0.05, "momentum": 0.9}, "probe_every": 10,
            "dataset_params": {"n_train": 1000, "n_valid": 500, "n_test": 500}}  # fmt: skip
    joint = train(small_spec(**base), tmp_path)
    alone = train(small_spec(**base, method="unimodal", method_params={"modality": "m2"}), tmp_path)
    ensemble = train(small_spec(**base, method="unimodal_ensemble"), tmp_path)
    assert small_spec(**base).dataset_params["scenario"] == "lazy"
    assert alone.final["test"]["accuracy"] > joint.final["test"]["probe"]["m2"] + 10
    assert ensemble.final["test"]["accuracy"] > joint.final["test"]["accuracy"] + 3


def test_code_version_is_dirty_for_changed_code_not_for_rewritten_results(tmp_path):
    """``make results`` deletes and rewrites the committed outputs while it trains: not a code change."""
    import subprocess

    from mmbalance.training.runner import code_version

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "results" / "tables").mkdir(parents=True)
    (tmp_path / "results" / "tables" / "all.md").write_text("table\n")
    (tmp_path / "method.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
    assert not code_version(tmp_path).endswith("-dirty")
    (tmp_path / "results" / "tables" / "all.md").unlink()
    assert not code_version(tmp_path).endswith("-dirty")
    (tmp_path / "method.py").write_text("x = 2\n")
    assert code_version(tmp_path).endswith("-dirty")
