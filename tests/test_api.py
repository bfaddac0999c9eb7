"""The Python API (``mmbalance.run/sweep/report``) and the notebook frames (``results.load`` columns,
``results.curves``). The README's notebook example runs in ``tests/test_readme.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import mmbalance
from mmbalance.common.records import RunDir
from mmbalance.common.spec import SpecError

TINY = {
    "epochs": 2,
    "batch_size": 32,
    "probe_every": 2,
    "dataset_params": {"n_train": 96, "n_valid": 48, "n_test": 48},
}
SUITE = {"name": "api", "seeds": [0], "base": TINY, "datasets": [{"dataset": "synthetic"}],
         "methods": [{"method": "joint"}, {"method": "unimodal"}, {"method": "ogm_ge", "optim": {"lr": [0.01, 0.05]}}]}  # fmt: skip


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    results = tmp_path_factory.mktemp("api")
    rows = mmbalance.sweep(SUITE, results=results)
    return results, rows


def test_the_api_sweeps_a_dict_suite_and_reports_it_by_name(swept):
    results, rows = swept
    assert list(rows["status"]) == ["done"] * 6 and rows["id"].is_unique
    assert (
        results / "sweeps" / "api.yaml"
    ).is_file()  # the dict suite, as swept (report(suite="api") reads it)
    again = mmbalance.sweep(SUITE, results=results, dry_run=True)
    assert list(again["state"]) == ["finished"] * 6 and list(again["id"]) == list(rows["id"])
    paths = mmbalance.report(results, suite="api", figures=False)
    assert results / "tables" / "api.md" in paths


def test_run_is_the_cli_run_and_bad_input_is_a_spec_error(tmp_path):
    r = mmbalance.run(method="joint", seed=0, results=tmp_path, **TINY)
    from mmbalance.cli import main

    assert main(["run", "--method", "joint", "--seed", "0", "--results", str(tmp_path), "--quiet",
                 *[f"--set={k}={json.dumps(v)}" for k, v in TINY.items()]]) == 0  # fmt: skip
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [r.run_id]  # reused: the same run id
    with pytest.raises(SpecError, match="epoch: unknown field; did you mean 'epochs'"):
        mmbalance.run(method="joint", epoch=3, results=tmp_path)


def test_load_labels_modality_columns_and_dtypes(swept):
    results, _ = swept
    runs = mmbalance.results.load(results)
    assert sorted(runs["label"]) == ["joint", "ogm_ge(optim.lr=0.01)", "ogm_ge(optim.lr=0.05)",
                                     "unimodal(modality=m0)", "unimodal(modality=m1)", "unimodal(modality=m2)"]  # fmt: skip
    assert runs["fixture"].dtype == bool and "method_params" not in runs.columns
    joint = runs[runs["method"] == "joint"].iloc[0]
    record = json.loads((RunDir(Path(joint["path"])).file("final.json")).read_text())["modality_eval"]
    for m, phi in record["shapley"].items():
        assert (
            joint[f"modality/shapley/{m}"] == phi and joint[f"modality/missing/{m}"] == record["missing"][m]
        )
    assert joint["modality/imbalance_degree"] == record["imbalance_degree"]
    assert joint["modality/equity"] == record["equity"] or (
        record["equity"] is None and pd.isna(joint["modality/equity"])
    )
    assert joint["modality/robustness/m1"] == record["relative_robustness"]["m1"]
    assert runs[runs["method"] == "unimodal"]["modality/equity"].isna().all()  # one modality: not measured


def test_curves_are_the_per_epoch_records_as_a_long_frame(swept):
    results, _ = swept
    runs = mmbalance.results.load(results)
    ogm = runs[runs["method"] == "ogm_ge"]
    curves = mmbalance.results.curves(results, ogm)
    assert list(curves.columns) == [
        "run_id",
        "label",
        "dataset",
        "method",
        "seed",
        "epoch",
        "split",
        "metric",
        "value",
    ]
    assert set(curves["run_id"]) == set(ogm["run_id"]) and set(curves["epoch"]) == {0, 1}
    rd = RunDir(Path(ogm.iloc[0]["path"]))
    mine = curves[curves["run_id"] == rd.run_id].set_index(["epoch", "split", "metric"])["value"]
    for e in rd.epochs():
        assert mine[(e["epoch"], "train", "loss")] == e["train_loss"]
        assert mine[(e["epoch"], "valid", "accuracy")] == e["valid"]["accuracy"]
        assert mine[(e["epoch"], "test", "probe/m2")] == e["test"]["probe"]["m2"]
    assert isinstance(curves, pd.DataFrame) and curves["value"].dtype == float
