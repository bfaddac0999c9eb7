"""The runner's data re-sampling hook (``Method.epoch_samples``), with a tiny method that records
what it was given."""

from __future__ import annotations

import pytest
import torch
from _method_helpers import TINY
from conftest import small_spec

from mmbalance.common.records import RunDir
from mmbalance.training import runner
from mmbalance.training.method import Resampling


class Recorder(Resampling):
    name = "recorder"  # not registered: built by hand below

    def __init__(self, parts, ordered=False):
        super().__init__()
        self.parts, self.ordered_samples, self.seen = parts, ordered, []

    def epoch_samples(self, ctx):
        return self.parts

    def forward(self, model, batch, ctx):
        self.seen.append((list(batch.ids), ctx.tags.tolist(), ctx.step))
        return model(batch.inputs)


def make(tmp_path, parts, ordered=False, batch_size=4):
    spec = small_spec(method="joint", dataset_params=TINY, batch_size=batch_size)
    tr = runner.Trainer(spec, runner.make_adapter(spec), RunDir.of(tmp_path, "t"), torch.device("cpu"), False)
    tr.method = Recorder(parts, ordered)
    return tr


def index(sample_id: str) -> int:
    return int(sample_id.split("-")[-1])


def test_parts_are_batched_apart_in_order_with_their_tags(tmp_path):
    parts = [[(i, 7) for i in (5, 5, 9, 1, 2)], [(i, 3) for i in (0, 4, 8)]]
    tr = make(tmp_path, parts)
    tr.train_epoch(0, type("Bar", (), {"update": lambda self, n: None})())
    first = [s for s in tr.method.seen if set(s[1]) == {7}]
    second = [s for s in tr.method.seen if set(s[1]) == {3}]
    assert len(first) + len(second) == len(tr.method.seen) == 3  # 5 -> 4 + 1, 3 -> 3: no batch mixes parts
    assert tr.method.seen.index(first[-1]) < tr.method.seen.index(second[0])
    assert sorted(index(i) for ids, _, _ in first for i in ids) == [1, 2, 5, 5, 9]  # repeats kept
    assert [s[2] for s in tr.method.seen] == [0, 1, 2] and tr.next_step == 3  # steps counted on


def test_ordered_parts_keep_their_order_and_shuffles_follow_the_seed(tmp_path):
    part = [(i, 0) for i in (9, 3, 7, 1, 5)]
    tr = make(tmp_path / "a", [part], ordered=True)
    assert [index(i) for b, _ in tr.planned_batches([part], 0) for i in b.ids] == [9, 3, 7, 1, 5]
    shuffled = make(tmp_path / "b", [part])
    orders = [[index(i) for b, _ in shuffled.planned_batches([part], 0) for i in b.ids] for _ in range(2)]
    assert orders[0] == orders[1] != [9, 3, 7, 1, 5] and sorted(orders[0]) == [1, 3, 5, 7, 9]


def test_drop_last_drops_an_incomplete_last_batch_unless_it_is_the_only_one(tmp_path):
    tr = make(tmp_path, [])
    tr.method.drop_last = True
    sizes = [len(b) for b, _ in tr.planned_batches([[(i, 0) for i in range(10)], [(1, 0), (2, 0)]], 0)]
    assert sizes == [4, 4, 2]  # 10 -> 4 + 4 (+ 2 dropped); the part of 2 keeps its only batch


def test_an_epoch_without_samples_is_a_clear_error(tmp_path):
    tr = make(tmp_path, [[]])
    with pytest.raises(ValueError, match="no training samples"):
        tr.train_epoch(0, type("Bar", (), {"update": lambda self, n: None})())
