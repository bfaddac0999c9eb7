"""Synthetic scenarios: each is its mechanism's data, and the defaults per task kind are the documented ones."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from mmbalance.datasets.synthetic import SCENARIOS, Synthetic, SyntheticParams


def _data(**params):
    adapter = Synthetic(SyntheticParams(**params))
    split = adapter.split("train")
    return adapter, {m: x.numpy() for m, x in split.inputs.items()}, split.target.numpy()


def test_defaults_per_task_kind():
    assert SyntheticParams().scenario == "lazy"
    assert SyntheticParams(task="regression").scenario == "complementary"
    assert SyntheticParams(task="segmentation").scenario == "complementary"
    lazy = SyntheticParams()
    assert lazy.informative == [0.7, 1.0, 1.0] and lazy.dims == [128, 16, 16]
    assert SyntheticParams(strength=[1.0, 1.0, 1.0]).strength == [1.0, 1.0, 1.0]  # explicit params win


def test_unknown_scenario_is_named():
    with pytest.raises(
        ValidationError, match=r"scenario 'nope' is not one of \['lazy', 'redundant', 'complementary'\]"
    ):
        SyntheticParams(scenario="nope")
    with pytest.raises(ValidationError, match="scenario 'lazy' is not one of"):
        SyntheticParams(task="segmentation", scenario="lazy")


def test_lazy_strong_modality_carries_no_signal_off_its_informative_part():
    """m0's class-mean direction separates the classes on ~70% of the samples and is pure clutter elsewhere;
    m2 is informative on all samples, through more noise."""
    _, x, y = _data(n_train=2000)
    accuracy = {}
    for m in ("m0", "m2"):
        means = np.stack([x[m][y == c].mean(0) for c in range(4)])
        nearest = ((x[m][:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
        accuracy[m] = (nearest == y).mean()
    # m0: right on its informative 70% and at chance (1/4) on the rest; m2: noisy but right everywhere
    assert abs(accuracy["m0"] - (0.7 + 0.3 / 4)) < 0.03, accuracy
    assert accuracy["m2"] > 0.5, accuracy


def test_complementary_classification_splits_the_label_into_digits():
    adapter, x, y = _data(scenario="complementary")
    assert adapter.task.num_classes == 4 and adapter.task.modalities == ("m0", "m1")
    with pytest.raises(ValidationError, match="num_classes = k \\*\\* modalities"):
        SyntheticParams(scenario="complementary", num_classes=5)


def test_redundant_keeps_the_former_default():
    assert {k: SCENARIOS["classification"]["redundant"][k] for k in ("strength", "noise", "informative")} == {
        "strength": [4.0, 1.5, 1.5], "noise": [0.5, 1.0, 1.0], "informative": [0.9, 0.9, 1.0],
    }  # fmt: skip
