"""The comparison key (issue 24): only runs trained alike are compared, in tables, tests and ranks."""

from __future__ import annotations

import json

import pytest
from _report_records import make_run

from mmbalance.common.comparison import comparison_key, differences, fingerprint_mismatches, key_fields
from mmbalance.reporting.report import rank_table, run_tables
from mmbalance.reporting.results import load

FP = "train:aaaa|valid:bbbb|test:cccc"
SUITE = {"optim": {"lr": 0.05}, "epochs": 12}
ADHOC = {"optim": {"lr": 0.01}, "epochs": 20}


def test_key_drops_the_method_its_params_and_the_seed_and_keeps_the_data():
    spec = {"dataset": "synthetic", "method": "cggm", "method_params": {"rho": 1.0}, "seed": 3, "epochs": 12}
    joint = {**spec, "method": "joint", "method_params": {}, "seed": 0}
    assert comparison_key(spec, FP) == comparison_key(joint, FP)
    assert comparison_key(spec, FP) != comparison_key({**spec, "epochs": 20}, FP)
    assert comparison_key(spec, FP) != comparison_key(spec, FP.replace("aaaa", "dddd"))  # other data
    assert comparison_key(spec, FP) != comparison_key(spec, FP, fixture=True)


def test_tuned_protocol_counts_what_tuning_chose_as_the_methods_own():
    tuned = {"budget": 20, "tuning_seeds": [100, 101], "shared_space": "sgd-lr-wd", "method_space": "cggm-v1",
             "chosen": ["optim.lr", "optim.weight_decay"]}  # fmt: skip
    a = {"dataset": "synthetic", "method": "cggm", "optim": {"lr": 0.05, "weight_decay": 1e-4, "momentum": 0.9},
         "tuned": tuned}  # fmt: skip
    b = {**a, "method": "joint", "optim": {"lr": 0.2, "weight_decay": 0.0, "momentum": 0.9},
         "tuned": {**tuned, "method_space": "joint-v1"}}  # fmt: skip
    assert comparison_key(a, FP) == comparison_key(b, FP)  # lr chosen by tuning: the method's own
    assert key_fields(a)["optim"] == {"momentum": 0.9} and "method_space" not in key_fields(a)["tuned"]
    assert a["optim"]["lr"] == 0.05  # the spec itself is untouched
    other_budget = {**b, "tuned": {**b["tuned"], "budget": 40}}
    assert comparison_key(a, FP) != comparison_key(other_budget, FP)  # equal budgets only
    untuned = {**a, "tuned": None}
    assert comparison_key(untuned, FP) != comparison_key({**untuned, "optim": b["optim"]}, FP)


def test_seed_drawn_data_leaves_the_fingerprint_out_and_pairs_by_seed():
    spec = {"dataset": "synthetic", "dataset_params": {"data_seed": None}, "method": "joint", "seed": 0}
    assert comparison_key(spec, FP) == comparison_key({**spec, "seed": 1}, FP.replace("aaaa", "eeee"))
    assert fingerprint_mismatches({0: "x", 1: "y"}, {0: "x", 1: "z", 2: "w"}) == [1]


def test_differences_name_only_the_fields_that_differ():
    keys = [json.dumps({"epochs": 12, "optim": {"lr": 0.05}, "dataset": "s"}),
            json.dumps({"epochs": 20, "optim": {"lr": 0.01}, "dataset": "s"})]  # fmt: skip
    assert differences(keys) == {keys[0]: "epochs=12, optim.lr=0.05", keys[1]: "epochs=20, optim.lr=0.01"}


def _suite_and_adhoc(results):
    for seed in range(3):
        make_run(results, "joint", seed, test={"accuracy": 80.0 + seed}, spec=SUITE, fingerprint=FP)
        make_run(results, "cggm", seed, test={"accuracy": 82.0 + seed}, spec=SUITE, fingerprint=FP)
        make_run(results, "pmr", seed, test={"accuracy": 79.0 + seed}, spec=SUITE, fingerprint=FP)
    for seed in range(3):  # ad-hoc runs at other settings: joint is much worse there
        make_run(results, "joint", seed, test={"accuracy": 60.0 + seed}, spec=ADHOC, fingerprint=FP)
        make_run(results, "cggm", seed, test={"accuracy": 70.0 + seed}, spec=ADHOC, fingerprint=FP)


def test_two_keys_give_two_tables_labelled_by_what_differs_with_delta_paired_within(tmp_path):
    _suite_and_adhoc(tmp_path)
    blocks = run_tables(load(tmp_path), "best-valid-test")
    titles = [b.table.title for b in blocks]
    assert titles == ["synthetic (classification): epochs=12, optim.lr=0.05",
                      "synthetic (classification): epochs=20, optim.lr=0.01"]  # fmt: skip
    suite, adhoc = (b.csv[b.csv["metric"] == "accuracy"].set_index("method") for b in blocks)
    assert suite.loc["cggm", "delta_vs_joint"] == pytest.approx(2.0)  # vs joint at lr 0.05, not 0.01
    assert adhoc.loc["cggm", "delta_vs_joint"] == pytest.approx(10.0)
    assert set(suite.index) == {"joint", "cggm", "pmr"} and set(adhoc.index) == {"joint", "cggm"}
    assert "| cggm | **83.00 ± 1.00** |" in blocks[0].table.markdown()  # labels: no lr / epochs repeated


def test_a_stray_seed_marks_nothing_incomplete_and_is_listed(tmp_path):
    for seed in range(4):
        for method in ("joint", "cggm", "pmr"):
            make_run(tmp_path, method, seed, test={"accuracy": 70.0 + seed}, fingerprint=FP)
    make_run(tmp_path, "cggm", 5, test={"accuracy": 10.0}, fingerprint=FP)  # one ad-hoc run
    [block] = run_tables(load(tmp_path), "best-valid-test")
    md = block.table.markdown()
    assert "incomplete" not in md and md.count("| 4/4 |") == 3
    assert "| cggm | **71.50 ± 1.29** |" in md  # seed 5 is not in the mean
    assert "Seed 5 finished by only some rows (cggm): not in the means, the tests or n." in md
    assert set(block.scores) == {"joint", "cggm", "pmr"}  # all ranked


def test_fixture_runs_are_labelled_and_never_ranked(tmp_path):
    for seed in range(3):
        make_run(tmp_path, "joint", seed, dataset="mosi", task="regression", test={"mae": 1.0},
                 fingerprint=FP, fixture=True)  # fmt: skip
        make_run(tmp_path, "cggm", seed, dataset="mosi", task="regression", test={"mae": 0.9},
                 fingerprint=FP, fixture=True)  # fmt: skip
    [block] = run_tables(load(tmp_path), "best-valid-test")
    md = block.table.markdown()
    assert block.table.title == "mosi (regression) [fixture data: never ranked]"
    assert "**" not in md and "_0.9" not in md and block.scores == {}
    assert "Fixture data (tiny files in the real format" in md
    assert rank_table([block, block]) is None  # fixture tables never enter the ranking


def test_seed_drawn_data_flags_a_pair_whose_data_differs(tmp_path):
    drawn = {"dataset_params": {"task": "classification", "data_seed": None}}
    for seed in range(3):
        make_run(tmp_path, "joint", seed, test={"accuracy": 70.0 + seed}, spec=drawn, fingerprint=f"fp{seed}")
        fp, acc = ("other", 99.0) if seed == 2 else (f"fp{seed}", 72.0 + seed)
        make_run(tmp_path, "cggm", seed, test={"accuracy": acc}, spec=drawn, fingerprint=fp)
    [block] = run_tables(load(tmp_path), "best-valid-test")  # one table: the key omits the fingerprint
    md = block.table.markdown()
    assert "cggm: data fingerprint differs from joint's at seed(s) 2; those seeds are not paired." in md
    assert "| +2.00* |" in md  # Δ over seeds 0 and 1 only (seed 2 would add 29 - 2)
