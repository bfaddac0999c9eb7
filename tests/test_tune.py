"""``mmbalance tune``: the test split is never read, trial 0 is the defaults, the tuned file drives the
sweep, studies resume after a crash and give the same file; suites with blocks; seeds that draw the data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from mmbalance.cli import main
from mmbalance.common.records import RunDir
from mmbalance.common.spec import SpecError, validate_spec
from mmbalance.datasets.synthetic import LAZY, Synthetic
from mmbalance.scaleout.sweep import load_suite, plan
from mmbalance.scaleout.tune import tune
from mmbalance.training.data import DatasetAdapter
from mmbalance.training.runner import Pruned, make_adapter, train

TINY = {"task": "classification", "n_train": 96, "n_valid": 48, "n_test": 48}


def write_suite(tmp_path: Path, **overrides) -> Path:
    suite = {
        "name": "tiny",
        "seeds": [0, 1],
        "base": {"epochs": 2, "batch_size": 32, "probe_every": 0, "optim": {"lr": 0.05}},
        "tuning": {"trials": 3, "seeds": [100, 101], "startup_trials": 2, "file": str(tmp_path / "tuned.yaml")},
        "datasets": [{"block": "lazy-half", "dataset": "synthetic", "dataset_params": {**TINY, "imbalance": 0.5},
                      "with_defaults": True}],
        "methods": [{"method": "joint"}, {"method": "ogm_ge"}],
        **overrides,
    }  # fmt: skip
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def trial_rows(results: Path) -> list[dict[str, str]]:
    with open(results / "tuning" / "tiny-trials.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def test_split_forbidden(monkeypatch):
    """Reading the test split (its items, or its ids and labels for a fingerprint) fails the test."""
    split, fingerprint = Synthetic.split, DatasetAdapter.fingerprint

    def guarded_split(self, name):
        assert name != "test", "the test split was built"
        return split(self, name)

    def guarded_fingerprint(self, name):
        assert name != "test", "the test split was fingerprinted"
        return fingerprint(self, name)

    monkeypatch.setattr(Synthetic, "split", guarded_split)
    monkeypatch.setattr(DatasetAdapter, "fingerprint", guarded_fingerprint)


def test_tuning_never_reads_the_test_split(tmp_path, test_split_forbidden):
    path, outcomes = tune(write_suite(tmp_path), tmp_path / "res", progress=False, say=lambda _: None)
    assert path == tmp_path / "tuned.yaml" and all(o.status == "done" for o in outcomes)
    runs = [RunDir(p) for p in (tmp_path / "res" / "tuning" / "runs").iterdir()]
    assert len(runs) == 2 * 3 * 2  # 2 cells x 3 trials x 2 tuning seeds, all distinct runs
    for rd in runs:
        assert "test" not in rd.final() and "modality_eval" not in rd.final()
        assert all("test" not in epoch for epoch in rd.epochs())
        assert rd.spec()["seed"] in (100, 101) and "test" not in rd.spec()["data_fingerprint"]


def test_the_guard_bites(tmp_path, test_split_forbidden):
    # The same guard stops an ordinary run, which evaluates the test split every epoch.
    with pytest.raises(AssertionError, match="test split"):
        train(validate_spec({"dataset_params": TINY, "epochs": 1}), tmp_path, progress=False)


def test_trial_zero_is_the_defaults_and_the_best_validation_is_chosen(tmp_path):
    tune(write_suite(tmp_path), tmp_path / "res", progress=False, say=lambda _: None)
    rows = [r for r in trial_rows(tmp_path / "res") if r["method"] == "ogm_ge"]
    assert [r["trial"] for r in rows] == ["0", "1", "2"]
    defaults = json.loads(rows[0]["set"])
    assert rows[0]["defaults"] == "True" and defaults["optim.lr"] == 0.05
    assert defaults["method_params.modulation_ends"] == 50  # as the defaults run it (past the 2 epochs)
    assert np.isclose(float(rows[0]["value"]), np.mean(json.loads(rows[0]["scores"])))
    best = max(rows, key=lambda r: (float(r["value"]), -int(r["trial"])))
    assert [r["chosen"] for r in rows].count("True") == 1 and best["chosen"] == "True"
    entry = yaml.safe_load((tmp_path / "tuned.yaml").read_text())["blocks"]["lazy-half"]["ogm_ge"]
    assert entry["set"] == json.loads(best["set"]) and entry["best_valid"] == float(best["value"])
    assert entry["trials"] == 3 and entry["default_valid"] == float(rows[0]["value"])


def test_plan_runs_the_tuned_settings_and_the_defaults_where_asked(tmp_path):
    suite_path = write_suite(tmp_path)
    tune(suite_path, tmp_path / "res", progress=False, say=lambda _: None)
    suite = load_suite(suite_path).model_copy(update={"protocol": "tuned"})
    planned = plan(suite)
    tuned = yaml.safe_load((tmp_path / "tuned.yaml").read_text())["blocks"]["lazy-half"]
    by = {(p.spec.method, p.spec.tuned is not None, p.spec.seed): p.spec for p in planned}
    assert len(planned) == 2 * 2 * 2  # methods x (tuned, defaults) x seeds
    ogm = by[("ogm_ge", True, 1)]
    assert ogm.optim.lr == tuned["ogm_ge"]["set"]["optim.lr"]
    assert ogm.method_params["alpha"] == tuned["ogm_ge"]["set"]["method_params.alpha"]
    assert ogm.tuned.chosen == sorted(tuned["ogm_ge"]["set"]) and ogm.tuned.budget == 3
    assert "method_params.alpha" in ogm.tuned.chosen and "optim.lr" in ogm.tuned.chosen
    assert ogm.tuned.tuning_seeds == [100, 101]
    assert by[("ogm_ge", False, 1)].optim.lr == 0.05  # with_defaults: the defaults too
    assert ogm.run_id() != by[("ogm_ge", False, 1)].run_id()


def test_plan_without_tuned_settings_names_the_file(tmp_path):
    suite = load_suite(write_suite(tmp_path, protocol="tuned"))
    with pytest.raises(SpecError, match=r"tuned\.yaml.*make tune"):
        plan(suite)


def test_a_killed_trial_is_run_again_and_the_file_is_the_same(tmp_path):
    import optuna

    suite_path = write_suite(tmp_path, methods=[{"method": "joint"}])
    tune(suite_path, tmp_path / "res", progress=False, say=lambda _: None)
    first = (tmp_path / "tuned.yaml").read_text()
    db = tmp_path / "res" / "tuning" / "tiny.db"
    # A process killed mid-trial leaves the trial RUNNING: emulate it on a study with one trial done.
    storage = f"sqlite:///{db}"
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    kept = study.trials[:1]
    db.unlink()
    fresh = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    fresh.add_trial(kept[0])
    fresh.enqueue_trial(study.trials[1].params, user_attrs=dict(study.trials[1].user_attrs))
    fresh.ask()  # RUNNING, never told: the killed trial
    path, _ = tune(suite_path, tmp_path / "res", progress=False, say=lambda _: None)
    assert path.read_text() == first
    states = [t.state.name for t in optuna.load_study(study_name=name, storage=storage).trials]
    assert states.count("FAIL") == 1 and states.count("COMPLETE") == 3  # closed, then run again


def test_tune_cli_writes_the_file_and_the_trials(tmp_path, capsys):
    assert main(["tune", str(write_suite(tmp_path)), "--results", str(tmp_path / "res"), "--quiet"]) == 0
    assert "2 studies, 6 trials" in capsys.readouterr().out
    assert len(trial_rows(tmp_path / "res")) == 6


def test_suite_refuses_tuning_seeds_it_reports_and_repeated_blocks(tmp_path):
    with pytest.raises(SpecError, match=r"tuning.seeds \[1\] are also reported seeds"):
        load_suite(write_suite(tmp_path, tuning={"seeds": [1, 100]}))
    twice = [{"block": "b", "dataset": "synthetic"}, {"block": "b", "dataset": "synthetic"}]
    with pytest.raises(SpecError, match="block names must be unique, b repeat"):
        load_suite(write_suite(tmp_path, datasets=twice))


def test_pruned_run_is_recorded_and_resumes(tmp_path):
    spec = validate_spec({"dataset_params": TINY, "epochs": 3, "probe_every": 0})

    def stop_after_first(epoch, valid):
        if epoch == 0:
            raise Pruned("pruned at epoch 0")

    r = train(spec, tmp_path, progress=False, on_epoch=stop_after_first)
    assert r.status == "pruned" and RunDir(r.path).status() == "pruned"
    again = train(spec, tmp_path, progress=False)
    assert again.status == "done" and [e["epoch"] for e in RunDir(r.path).epochs()] == [0, 1, 2]


# --- the data the blocks train on ---------------------------------------------------------------------
def test_imbalance_degree_runs_from_identical_modalities_to_lazy():
    def params(level):
        return validate_spec(
            {"dataset_params": {"task": "classification", "imbalance": level}}
        ).dataset_params

    top, zero, half = params(1.0), params(0.0), params(0.5)
    assert {k: top[k] for k in LAZY} == LAZY  # degree 1 is the lazy scenario itself
    for key in ("dim", "strength", "noise", "scale", "informative"):
        assert len(set(map(str, zero[key]))) == 1  # degree 0: three identical modalities
    assert half["dim"] == [72, 16, 16] and half["informative"] == [0.85, 1.0, 1.0]
    assert half["scale"] == [0.5, 0.35, 0.35]
    with pytest.raises(SpecError, match="imbalance applies to the lazy classification scenario only"):
        validate_spec({"dataset_params": {"task": "regression", "imbalance": 0.5}})


@pytest.mark.parametrize(
    ("dataset", "params", "seed_field"),
    [("synthetic", TINY, "data_seed"), ("mfeat", {"views": ["fac", "mor"]}, "split_seed")],
)
def test_the_run_seed_draws_the_data_unless_fixed(dataset, params, seed_field):
    def fingerprint(seed, extra=None):
        spec = validate_spec(
            {"dataset": dataset, "dataset_params": {**params, **(extra or {})}, "seed": seed}
        )
        adapter = make_adapter(spec)
        return "|".join(adapter.fingerprint(s) for s in ("train", "valid", "test"))

    assert validate_spec({"dataset": dataset, "dataset_params": params}).dataset_params[seed_field] is None
    assert fingerprint(0) != fingerprint(1)  # each seed its own draw / split
    assert fingerprint(0) == fingerprint(0, {seed_field: 0})  # the same as fixing it to that seed
    assert fingerprint(0, {seed_field: 7}) == fingerprint(
        1, {seed_field: 7}
    )  # fixed: the same for every seed


@pytest.mark.slow
def test_submitit_workers_share_the_studies_and_give_the_same_file(tmp_path):
    # Two worker jobs (submitit's local executor: the SLURM path as subprocesses) split the studies by
    # their locks; the tuned file is the one a single process writes.
    suite = write_suite(tmp_path)
    tune(suite, tmp_path / "one", progress=False, say=lambda _: None)
    alone = (tmp_path / "tuned.yaml").read_text().splitlines()[4:]  # below the header naming the folder
    args = [
        "tune",
        str(suite),
        "--results",
        str(tmp_path / "two"),
        "--executor",
        "submitit-local",
        "--jobs",
        "2",
    ]
    assert main([*args, "--wait", "--quiet"]) == 0
    assert (tmp_path / "tuned.yaml").read_text().splitlines()[4:] == alone


def test_report_of_a_tuned_suite_takes_its_swept_runs_only(tmp_path):
    # A suite swept under the tuned protocol: its report shows the tuned and default tables of its block,
    # and leaves out another run on the same data (a paper table's ablation would be one).
    suite_path = write_suite(tmp_path, seeds=[0, 1])
    tune(suite_path, tmp_path / "res", progress=False, say=lambda _: None)
    doc = yaml.safe_load(suite_path.read_text())
    suite_path.write_text(yaml.safe_dump({**doc, "protocol": "tuned"}, sort_keys=False))
    assert main(["sweep", str(suite_path), "--results", str(tmp_path / "res"), "--quiet"]) == 0
    stray = validate_spec({**doc["base"], "dataset_params": {**TINY, "imbalance": 0.5},
                           "method": "ogm_ge", "method_params": {"alpha": 0.9}, "seed": 0})  # fmt: skip
    train(stray, tmp_path / "res", progress=False)
    assert main(["report", str(tmp_path / "res"), "--suite", str(suite_path), "--no-figures"]) == 0
    text = (tmp_path / "res" / "tables" / "tiny.md").read_text()
    assert "### lazy-half: synthetic (classification), tuned protocol" in text
    assert "### lazy-half: synthetic (classification), defaults protocol" in text
    assert "alpha=0.9" not in text and "Tuned vs defaults" in text
    listed = set((tmp_path / "res" / "tables" / "tiny.runs").read_text().split())
    assert len(listed) == 2 * 2 * 2  # methods x protocols x seeds, not the stray run
