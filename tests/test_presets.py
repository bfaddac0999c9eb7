"""One precedence for every source of a setting, in suites and single runs:
code defaults < preset < suite base < dataset entry < method entry < --set (a test per level)."""

from __future__ import annotations

import pytest
import yaml

from mmbalance.cli import main
from mmbalance.common.spec import SpecError, compose, validate_spec
from mmbalance.scaleout.sweep import Suite, plan

PRESET = {  # a preset of the synthetic data that sets every field the levels above it override
    "dataset": "synthetic",
    "dataset_params": {"n_train": 64, "n_valid": 32, "n_test": 32},
    "epochs": 30,
    "batch_size": 16,
    "optim": {"name": "adam", "lr": 0.1},
    "schedule": {"name": "plateau"},
    "method_overrides": {"cggm": {"method_params": {"rho": 1.5, "lam": 0.3}}},
}


@pytest.fixture
def preset(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(PRESET))
    return str(path)


def planned(preset: str) -> dict[str, dict]:
    suite = Suite.model_validate({
        "name": "levels", "seeds": [0],
        "base": {"epochs": 2, "optim": {"lr": 0.05}, "schedule": {"name": "step"}},
        "datasets": [{"dataset": "synthetic", "preset": preset, "schedule": {"name": "cosine"},
                      "optim": {"lr": 0.02}}],
        "methods": [{"method": "joint"}, {"method": "cggm", "method_params": {"rho": 1.1}},
                    {"method": "ogm_ge", "schedule": {"name": "none"}}],
    })  # fmt: skip
    return {p.spec.method: p.spec for p in plan(suite)}


def test_code_defaults_fill_what_no_source_sets(preset):
    spec = planned(preset)["joint"]
    assert spec.probe_every == 10 and spec.optim.weight_decay == 1e-4 and spec.seed == 0


def test_preset_beats_code_defaults(preset):
    specs = planned(preset)
    assert specs["joint"].batch_size == 16 and specs["joint"].optim.name == "adam"  # merged key by key
    assert specs["cggm"].method_params["lam"] == 0.3  # its method_overrides, for cggm only
    assert specs["joint"].method_params == {}


def test_suite_base_beats_preset(preset):
    assert planned(preset)["joint"].epochs == 2  # the preset's 30 used to win silently
    # The case, with the real MOSI preset.
    spec = validate_spec(compose({"epochs": 2}, {"dataset": "mosi", "preset": "mosi"}, {"method": "cggm"}))
    assert spec.epochs == 2 and spec.optim.name == "adam" and spec.method_params["rho"] == 1.3


def test_dataset_entry_beats_base(preset):
    spec = planned(preset)["joint"]
    assert spec.optim.lr == 0.02 and spec.schedule.name == "cosine"


def test_method_entry_beats_dataset_entry_and_preset_overrides(preset):
    specs = planned(preset)
    assert specs["ogm_ge"].schedule.name == "none"
    assert specs["cggm"].method_params["rho"] == 1.1  # method entry over the preset's method_overrides


def dry_run(capsys, *argv: str) -> dict:
    assert main(["run", *argv, "--dry-run"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_set_beats_every_other_source_in_a_run(preset, tmp_path, capsys):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({"epochs": 5, "batch_size": 8, "method": "joint", "seed": 1}))
    spec = dry_run(capsys, "--preset", preset, "--spec", str(spec_file), "--method", "cggm", "--seed", "3",
                   "--set", "epochs=4", "--set", "method_params.lam=0.9")  # fmt: skip
    assert spec["optim"]["name"] == "adam"  # preset
    assert spec["batch_size"] == 8  # --spec file over the preset
    assert spec["method"] == "cggm" and spec["seed"] == 3  # flags over the spec file
    assert spec["method_params"]["rho"] == 1.5  # the preset's overrides follow the final method
    assert spec["epochs"] == 4 and spec["method_params"]["lam"] == 0.9  # --set over everything


def test_a_preset_file_runs_as_a_spec(capsys):
    by_spec = dry_run(capsys, "--spec", "benchmarks/presets/mosi.yaml", "--method", "cggm")
    by_name = dry_run(capsys, "--preset", "mosi", "--method", "cggm")
    assert by_spec == by_name
    assert by_spec["method_params"]["rho"] == 1.3 and by_spec["optim"]["clip_grad_norm"] == 0.8
    assert dry_run(capsys, "--preset", "mosi", "--set", "epochs=2")["method_params"] == {}  # joint


def test_bad_presets_are_one_line_errors(capsys):
    assert main(["run", "--preset", "nosuch", "--dry-run"]) == 2
    assert "unknown preset 'nosuch'" in capsys.readouterr().err
    with pytest.raises(SpecError, match="method_overrides: unknown method"):
        compose({"method_overrides": {"cgm": {"epochs": 1}}})


def test_a_synthetic_run_without_a_preset_gets_the_default_suites_settings(capsys):
    """Issue 24: the first README command trained at the code defaults (lr 0.01) and learned nothing."""
    from mmbalance.scaleout.sweep import load_suite

    assert main(["run", "--dataset", "synthetic", "--method", "cggm", "--dry-run", "--set", "epochs=3"]) == 0
    spec = yaml.safe_load(capsys.readouterr().out)
    assert spec["optim"] == {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4,
                             "clip_grad_norm": None} and spec["epochs"] == 3  # fmt: skip
    joint = next(  # the suite's default-protocol joint run on its lazy block (the default scenario)
        p.spec for p in plan(load_suite("benchmarks/all.yaml"))
        if p.spec is not None and p.block == "lazy-1.00" and p.spec.tuned is None and p.spec.method == "joint"
    ).canonical()  # fmt: skip
    assert (joint["dataset"], joint["method"], joint["seed"]) == ("synthetic", "joint", 0)
    assert main(["run", "--method", "joint", "--dry-run"]) == 0  # synthetic is the default dataset
    assert yaml.safe_load(capsys.readouterr().out) == joint  # one source: the suite's base names the preset
    assert main(["run", "--preset", "mosi", "--dry-run"]) == 0  # a named preset is not replaced
    assert yaml.safe_load(capsys.readouterr().out)["optim"]["name"] == "adam"
