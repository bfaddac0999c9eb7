"""Run specs: bad input is a clear error naming the field, exit code 2, and nothing is written."""

from __future__ import annotations

import pytest

from mmbalance.cli import main
from mmbalance.common.spec import SpecError, parse_set, validate_spec


def test_defaults_are_filled_in_so_equivalent_specs_share_a_run_id():
    a = validate_spec({"method": "joint"})
    b = validate_spec({"method": "joint", "dataset_params": {"modalities": 3}, "optim": {"lr": 0.01}})
    assert a.dataset_params["modalities"] == 3
    assert a.run_id("fp") == b.run_id("fp")
    assert a.run_id("fp") != validate_spec({"method": "joint", "seed": 1}).run_id("fp")
    assert a.run_id("fp") != a.run_id("other-data")


@pytest.mark.parametrize(
    "doc, needle",
    [
        ({"methd": "joint"}, "methd: unknown field"),
        ({"method": "nope"}, "unknown method 'nope'; valid choices: "),
        ({"dataset": "nope"}, "unknown dataset 'nope'; valid choices: "),
        ({"epochs": "many"}, "epochs: Input should be a valid integer"),
        ({"optim": {"lr": -1}}, "optim.lr: Input should be greater than 0"),
        ({"dataset_params": {"task": "ranking"}}, "dataset_params.task"),
        ({"method_params": {"alpha": 1}}, "method_params.alpha: unknown field"),
        ({"dataset_params": {"modalities": 4}}, "strength has 3 values, need one per modality"),
    ],
)
def test_bad_spec_names_the_field(doc, needle):
    with pytest.raises(SpecError) as e:
        validate_spec(doc)
    assert needle in str(e.value)


def test_unknown_method_lists_the_choices():
    with pytest.raises(SpecError, match="joint.*unimodal|unimodal.*joint"):
        validate_spec({"method": "ogm_gee"})


def test_parse_set_nests_and_parses_yaml_scalars():
    assert parse_set(["optim.lr=0.5", "epochs=3", "method_params.modality=m1", "optim.name=adam"]) == {
        "optim": {"lr": 0.5, "name": "adam"},
        "epochs": 3,
        "method_params": {"modality": "m1"},
    }
    with pytest.raises(SpecError, match="expected KEY=VALUE"):
        parse_set(["epochs"])


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["run", "--method", "nope"], "unknown method 'nope'"),
        (["run", "--set", "epochs=abc"], "epochs: Input should be a valid integer"),
        (["run", "--set", "epochs"], "expected KEY=VALUE"),
        (["run", "--set", "optim.name=rmsprop"], "optim.name"),
        (
            ["run", "--method", "unimodal", "--set", "method_params.modality=m9"],
            "must be one of ['m0', 'm1', 'm2']",
        ),
        (["sweep", "does-not-exist.yaml"], "does-not-exist.yaml: no such file"),
    ],
)
def test_cli_rejects_bad_input_with_exit_2_and_writes_nothing(tmp_path, capsys, argv, needle):
    results = tmp_path / "results"
    code = main([*argv, "--results", str(results), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err
    assert "Traceback" not in err
    assert not results.exists()
