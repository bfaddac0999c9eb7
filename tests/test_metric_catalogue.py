"""The metric catalogue: one place for a metric's label, direction, decimals and valid range."""

from __future__ import annotations

import math

from mmbalance.common.metric_catalogue import CATALOGUE, PERCENT, metric_facts
from mmbalance.leaderboard import leaderboard_page
from mmbalance.reporting.tables import Cell
from mmbalance.training import metrics


def test_facts_of_catalogued_and_derived_names():
    mae = metric_facts("mae")
    assert (mae.label, mae.higher_is_better, mae.decimals, mae.range) == ("MAE", False, 3, (0.0, math.inf))
    assert not mae.percent and metric_facts("accuracy").percent
    assert metric_facts("corr").range == (-1.0, 1.0) and metric_facts("corr").higher_is_better
    assert metric_facts("dice_wt").label == "Dice wt" and metric_facts("dice_wt").range == PERCENT
    assert not metric_facts("probe/mae").higher_is_better  # a nested key takes its last part's direction
    assert metric_facts("unknown_score") == metric_facts("unknown_score")  # a percentage, higher is better
    assert metric_facts("unknown_score").higher_is_better and metric_facts("unknown_score").decimals == 2


def test_lower_is_better_is_one_set_for_tables_and_leaderboard():
    # The report said {mae, loss, memory}, the leaderboard {mae}: the loss and memory are lower-is-better
    # wherever they are read; the leaderboard never ranks them.
    lower = {m for m, f in CATALOGUE.items() if not f.higher_is_better}
    assert lower == {"mae", "loss", "peak_memory_mb", "method_memory_mb", "extra_memory_mb"}
    assert metrics.PRIMARY["regression"] == ("mae", False) and metrics.PRIMARY["classification"][1]


def test_readers_take_decimals_and_direction_from_the_catalogue():
    assert Cell.of([0.5, 0.25], "mae").decimals == 3 and Cell.of([], "loss").decimals == 3
    assert Cell.of([50.0, 25.0], "accuracy").decimals == 2
    assert leaderboard_page._better("mae") == "lower" and leaderboard_page._better("f1_macro") == "higher"
