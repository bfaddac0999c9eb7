"""Every method's search space (``Method.search_space``) against its Params, without Optuna.

A space names Params fields, its ranges are well formed and cite a source, the official defaults lie
inside it, and every corner of it (each range at both ends, each choice) is a valid Params for the
run lengths of the suite, so a tuner never samples a combination the validator refuses.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Choice, Epochs, Float, Int, sample, space_hash
from mmbalance.scaleout.sweep import compose, load_suite

SUITE = load_suite(Path(__file__).resolve().parents[1] / "benchmarks" / "all.yaml")
# The run lengths of the suite's blocks (12 epochs on synthetic classification, 8 or 10 elsewhere).
SUITE_EPOCHS = sorted({compose(SUITE.base, entry)["epochs"] for entry in SUITE.datasets})
# Tuned on the shared optimiser space only: the references, and UME, which has no parameter.
OPTIMISER_ONLY = {"joint", "unimodal", "unimodal_ensemble", "ume"}
NAMES = METHODS.names()


def space(name: str) -> dict:
    return METHODS.get(name).search_space


class Corner:
    """A stand-in for ``optuna.Trial``: ranges answer their low (``end`` 0) or high (1) end, a
    categorical answers its ``end``-th choice."""

    def __init__(self, end: int) -> None:
        self.end = end

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        return (low, high)[self.end]

    suggest_int = suggest_float

    def suggest_categorical(self, name: str, choices: list) -> object:
        return choices[self.end]


def corners(dim, epochs: int) -> list:
    ends = len(dim.choices) if isinstance(dim, Choice) else 2
    return [sample(Corner(end), "x", dim, epochs) for end in range(ends)]


def test_every_balancing_method_declares_a_space():
    empty = {name for name in NAMES if not space(name)}
    assert empty == OPTIMISER_ONLY
    assert not METHODS.get("ume").Params.model_fields  # a parameter added to UME needs a space


@pytest.mark.parametrize("name", NAMES)
def test_keys_are_params_fields(name):
    assert set(space(name)) <= set(METHODS.get(name).Params.model_fields)


@pytest.mark.parametrize("name", NAMES)
def test_dimensions_are_well_formed_and_cited(name):
    for key, dim in space(name).items():
        assert dim.source.strip(), f"{name}.{key} cites no source"
        if isinstance(dim, Choice):
            assert dim.choices and len(set(dim.choices)) == len(dim.choices), f"{name}.{key}"
        else:
            assert dim.low < dim.high, f"{name}.{key}"
        if isinstance(dim, Float | Int) and dim.log:
            assert dim.low > 0, f"{name}.{key}: a log range must be positive"
        if isinstance(dim, Epochs):
            assert 0 <= dim.low < dim.high <= 1 and dim.minimum >= 0, f"{name}.{key}"
    assert len(space_hash(space(name))) == 16


@pytest.mark.parametrize("name", NAMES)
def test_official_defaults_lie_inside(name):
    """Epochs dimensions are left out: their default counts epochs of the official run (OGM-GE's window
    ends at 50 of 100), not of ours; ``test_suite_schedules_lie_inside`` checks the suite's values."""
    defaults = METHODS.get(name).Params()
    for key, dim in space(name).items():
        value = getattr(defaults, key)
        if isinstance(dim, Choice):
            assert value in dim.choices, f"{name}.{key} = {value!r}"
        elif isinstance(dim, Float | Int):
            assert dim.low <= value <= dim.high, f"{name}.{key} = {value!r}"


def test_suite_schedules_lie_inside():
    """The schedule parameters the suite shortens by hand stay reachable in every block it runs them on."""
    checked = 0
    for entry in SUITE.methods:
        dims = space(entry["method"])
        for key, value in entry.get("method_params", {}).items():
            if isinstance(dims.get(key), Epochs):
                for epochs in SUITE_EPOCHS:
                    low, high = dims[key].bounds(epochs)
                    assert low <= value <= high, f"{entry['method']}.{key} = {value} in {epochs} epochs"
                checked += 1
    assert checked >= 8


@pytest.mark.parametrize("name", [n for n in NAMES if n not in OPTIMISER_ONLY])
@pytest.mark.parametrize("epochs", SUITE_EPOCHS)
def test_every_corner_validates(name, epochs):
    params = METHODS.get(name).Params
    dims = space(name)
    for values in itertools.product(*(corners(dim, epochs) for dim in dims.values())):
        chosen = dict(zip(dims, values, strict=True))
        params.model_validate(chosen)  # every other field keeps its default
        for key, dim in dims.items():
            if isinstance(dim, Epochs):
                assert chosen[key] < epochs, f"{name}.{key} = {chosen[key]}: past the run"
            elif isinstance(dim, Float):
                assert math.isfinite(chosen[key])


def test_methods_command_shows_a_methods_defaults_and_search_space(capsys):
    from mmbalance.cli import main

    assert main(["methods", "pmr"]) == 0
    out = capsys.readouterr().out
    assert "alpha" in out and "Float" in out and "bash.sh" in out  # searched, with its source
    assert "proto_fraction" in out and "optim.weight_decay" in out  # a fixed parameter; the shared space
    assert main(["methods", "pmrr"]) == 2
    assert "unknown method 'pmrr'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["aug", "igm", "arm"])
def test_methods_command_shows_the_last_three_methods(name, capsys):
    from mmbalance.cli import main

    assert main(["methods"]) == 0
    assert name in capsys.readouterr().out.split()
    assert main(["methods", name]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{name}: {METHODS.get(name).reference[:30]}")
    for key, dim in space(name).items():
        assert key in out and type(dim).__name__ in out
