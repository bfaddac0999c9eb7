"""The method contract: a method's own parts (modules, parameters, optimisers assigned in ``build``) join
the optimiser, the device and the checkpoint with no code of the method's; a part that is the model's is
refused; checkpoints of an earlier format are refused with a one-line message naming it."""

from __future__ import annotations

import io

import pytest
import torch
from _method_helpers import TINY, trainer
from conftest import small_spec
from torch import nn

from mmbalance.common.records import DamagedRecordError
from mmbalance.training.checkpoint import CHECKPOINT_FORMAT
from mmbalance.training.method import Method, ModulationWindow
from mmbalance.training.runner import method_parameters, train


def optimised(tr) -> set[int]:
    return {id(p) for g in tr.optimizer.param_groups for p in g["params"]}


@pytest.mark.parametrize("method", ["mla", "greedy", "reconboost", "di_mml", "mmpareto"])
def test_own_parameters_join_the_last_optimiser_group(tmp_path, method):
    params = {"stage1_epochs": 1, "contrast_epoch": 0} if method == "di_mml" else {}
    tr = trainer(tmp_path, method, **params)
    own = tr.method.parameters()
    assert own  # selected by type: the method's heads / MMTM / boost rate
    model = {id(p) for p in tr.model.parameters()}
    assert not model & {id(p) for p in own}
    last = [id(p) for p in tr.optimizer.param_groups[-1]["params"]]
    assert last[-len(own) :] == [id(p) for p in own]  # after the model's, in the order they were built
    assert set(tr.method.state_dict()) >= set(tr.method.parts())  # and into the checkpoint


def test_parameters_an_own_optimiser_trains_stay_out_of_the_runners(tmp_path):
    tr = trainer(tmp_path, "cggm")
    classifiers = {id(p) for p in tr.method.classifiers.parameters()}
    assert classifiers and not classifiers & optimised(tr)
    assert tr.method.parameters() == []
    state = tr.method.state_dict()
    assert {"classifiers", "cls_optimizer", "prev", "prev_score"} <= set(state)


def test_a_part_that_is_the_models_is_refused(tmp_path):
    tr = trainer(tmp_path, "joint")

    class KeepsHead(Method):
        name = "keeps_head"

        def build(self, ctx) -> None:
            self.head = ctx.model.head  # the model's own: trained and saved with the model already

    m = KeepsHead()
    m.build(tr.ctx)
    with pytest.raises(TypeError, match=r"self\.head is part of the model; read it from ctx\.model"):
        method_parameters(m, tr.model)


def test_state_round_trips_parts_and_named_attributes(tmp_path):
    tr = trainer(tmp_path, "mla")
    with torch.no_grad():
        tr.method.head.weight.add_(1.0)
    tr.method.steps_taken, tr.method.P = 7, tr.method.P * 2
    buf = io.BytesIO()
    torch.save(tr.method.state_dict(), buf)
    fresh = trainer(tmp_path, "mla")
    fresh.method.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=False))
    assert torch.equal(fresh.method.head.weight, tr.method.head.weight)
    assert fresh.method.steps_taken == 7 and torch.equal(fresh.method.P, tr.method.P)


def test_parts_move_with_the_method():
    class Owns(Method):
        name = "owns"

        def build(self, ctx) -> None:
            self.head, self.scale = nn.Linear(2, 2), nn.Parameter(torch.ones(()))

    m = Owns()
    m.build(None)
    m.to(torch.device("meta"))
    assert m.head.weight.device.type == "meta" and m.scale.device.type == "meta"
    assert isinstance(m.scale, nn.Parameter) and [p.shape for p in m.parameters()] == [(2, 2), (2,), ()]


def test_modulation_window_is_checked_once_for_every_method():
    class P(ModulationWindow):
        modulation_starts: int = 2
        modulation_ends: int = 4

    assert [P().modulates(e) for e in range(6)] == [False, False, True, True, True, False]
    with pytest.raises(ValueError, match=r"modulation_ends \(1\) < modulation_starts \(2\)"):
        P(modulation_ends=1)


def test_checkpoint_of_an_earlier_format_is_refused_in_one_line(tmp_path):
    spec = small_spec(method="ogm_ge", dataset_params=TINY, epochs=2)
    done = train(spec, tmp_path, progress=False)
    ckpt = done.path / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=False)
    state.pop("format")  # as written before the format was versioned
    torch.save(state, ckpt)
    for name in ("final.json", "status"):
        (done.path / name).unlink()
    with pytest.raises(DamagedRecordError) as e:  # the CLI prints it as one line, exit 2
        train(spec, tmp_path, progress=False)
    assert str(e.value) == (
        f"{ckpt}: checkpoint format 1, this version reads format {CHECKPOINT_FORMAT}; rerun with --restart "
        "to discard this run's checkpoint and records and train it from epoch 0"
    )
    assert train(spec, tmp_path, progress=False, restart=True).final == done.final
