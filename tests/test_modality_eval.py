"""Modality contributions and robustness (``modality_eval.py``): hand-computed Shapley values, one
definition of an absent modality for every method and model, and ``evaluate`` on an old run."""

from __future__ import annotations

import json
import math
from itertools import permutations

import pytest
import torch
from _method_helpers import SHORT_RUN_PARAMS, lnln_trainer, trainer
from conftest import small_spec
from torch import nn

from mmbalance.cli import main
from mmbalance.common.records import RunDir
from mmbalance.common.registry import METHODS
from mmbalance.models.base import ConcatFusion, MultimodalModel
from mmbalance.models.segmentation import deeplab_multi_input
from mmbalance.models.transformer import MSAModelParams, build_msa_model
from mmbalance.training import incomplete, metrics, modality_eval
from mmbalance.training.data import Batch, TaskInfo
from mmbalance.training.modality_eval import (
    absent,
    effective_robustness,
    equity,
    measure,
    relative_robustness,
    same_record,
    sampled_shapley,
    shapley_values,
    train_statistics,
)
from mmbalance.training.runner import evaluate_run, train

# v(S) of three modalities; by hand: phi_a = 30/3 + 40/6 + 40/6 + 40/3 = 110/3,
# phi_b = 10/3 + 20/6 + 20/6 + 20/3 = 50/3, phi_c = 0 + 10/6 + 10/6 + 10/3 = 20/3 (sum 60 = v(abc) - v()).
VALUES = {"": 10, "a": 40, "b": 20, "c": 10, "ab": 60, "ac": 50, "bc": 30, "abc": 70}
V = {frozenset(k): float(v) for k, v in VALUES.items()}


def test_exact_shapley_by_hand():
    phi = shapley_values(V, ["a", "b", "c"])
    assert phi == pytest.approx({"a": 110 / 3, "b": 50 / 3, "c": 20 / 3})


def test_sampled_shapley_over_every_order_is_exact():
    orders = [list(p) for p in permutations("abc")]
    assert sampled_shapley(V, orders) == pytest.approx(shapley_values(V, ["a", "b", "c"]))
    assert sampled_shapley(V, [["c", "a", "b"]]) == pytest.approx({"c": 0.0, "a": 40.0, "b": 20.0})


def test_equity_and_robustness_summaries_by_hand():
    assert equity({"a": 40.0, "b": 0.0}) == 0.0
    assert equity({"a": 5.0, "b": 5.0, "c": 5.0}) == pytest.approx(1.0)
    p = [0.75, 0.25]  # phi = (3, 1, -2): the negative share counts as 0
    expected = -sum(x * math.log(x) for x in p) / math.log(3)
    assert equity({"a": 3.0, "b": 1.0, "c": -2.0}) == pytest.approx(expected)
    assert equity({"a": 1.0}) is None
    # MultiBench: trapezoid area with step 0.1; effective = sum(f - (r + f0 - r0))
    assert relative_robustness([80, 60, 40], [0.0, 0.1, 0.2]) == pytest.approx((140 + 100) * 0.1 / 2)
    assert effective_robustness([80, 70, 60], [90, 70, 50]) == pytest.approx(0 + 10 + 20)


# --- a model whose subset scores are known ------------------------------------------------------------
class Features(nn.Identity):
    out_dim = 2


def known_model() -> MultimodalModel:
    """logits = f_a + f_b with f_m = x_m: a concat of identities into a fixed [I I] head."""
    head = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1]]))
    return MultimodalModel({"a": Features(), "b": Features()}, ConcatFusion(), head).eval()


# Per test sample: correct with (a and b, a alone, b alone, nothing): nothing = zero logits -> class 0.
#   s1 (1,1,0,1)  s2 (1,1,0,0)  s3 (1,0,1,0)  s4 (0,1,0,0)  s5 (1,1,1,1)
# accuracy: ab 80, a 80, b 40, none 40 -> phi_a = (80-40)/2 + (80-40)/2 = 40, phi_b = 0.
# Sample level (v_i(empty) = 0): phi_a^i = (a_i + ab_i - b_i)/2, phi_b^i = (b_i + ab_i - a_i)/2:
#   (1,0) (1,0) (0,1) (.5,-.5) (.5,.5): spreads 1,1,1,1,0 -> imbalance degree 0.8; means 0.6 and 0.2.
TEST_A = [[2.0, 0], [0, 2], [1, 0], [0, 1], [1, 0]]
TEST_B = [[0.0, 1], [1, 0], [0, 3], [2, 0], [1, 0]]
TEST_Y = [0, 1, 1, 1, 0]


def known_batches():
    train = Batch(
        {"a": torch.tensor([[1.0, -1], [-1, 1]]), "b": torch.tensor([[1.0, 1], [-1, -1]])},
        torch.tensor([0, 1]),
        ["t0", "t1"],
    )  # fmt: skip  (zero means: absent = zero features)
    test = Batch({"a": torch.tensor(TEST_A), "b": torch.tensor(TEST_B)}, torch.tensor(TEST_Y),
                 [f"s{i}" for i in range(5)])  # fmt: skip
    return [train], [test]


def test_measure_on_a_model_with_known_subset_scores():
    model = known_model()
    task = TaskInfo("classification", ("a", "b"), 2)
    train_b, test_b = known_batches()
    rec = measure(model, lambda b: model(b.inputs).pred, task,
                  lambda p, t, ids: metrics.classification_metrics(p, t)["accuracy"], lambda p: p,
                  train_b, test_b, seed=0)  # fmt: skip
    assert rec["subsets"] == pytest.approx({"": 40.0, "a": 80.0, "b": 40.0, "a+b": 80.0})
    assert rec["full"] == pytest.approx(80.0)
    assert rec["shapley"] == pytest.approx({"a": 40.0, "b": 0.0})
    assert rec["shapley_estimator"] == "exact"
    assert rec["sample_shapley_mean"] == pytest.approx({"a": 0.6, "b": 0.2})
    assert rec["imbalance_degree"] == pytest.approx(0.8)
    assert rec["equity"] == 0.0
    assert rec["missing"] == pytest.approx({"a": 40.0, "b": 80.0}) and rec["worst_missing"] == pytest.approx(
        40
    )
    assert rec["noise_std"] == pytest.approx({"a": 1.0, "b": 1.0})
    assert len(rec["noise"]["a"]) == 10 and rec["noise"]["a"][0] == pytest.approx(80.0)
    again = measure(model, lambda b: model(b.inputs).pred, task,
                    lambda p, t, ids: metrics.classification_metrics(p, t)["accuracy"], lambda p: p,
                    *known_batches(), seed=0)  # fmt: skip
    assert same_record(rec, again)
    json.dumps(rec)  # the record is plain JSON


def test_sampled_estimator_above_six_modalities(monkeypatch):
    """Eight additive modalities: with M > 6 the permutation estimate of an additive game is exact."""
    monkeypatch.setattr(modality_eval, "PERMUTATIONS", 3)  # any order is exact here; keep it fast
    mods = [f"m{i}" for i in range(8)]
    head = nn.Linear(8, 1, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.arange(1.0, 9.0).view(1, 8))

    class One(nn.Identity):
        out_dim = 1

    model = MultimodalModel({m: One() for m in mods}, ConcatFusion(), head).eval()
    task = TaskInfo("regression", tuple(mods), 1)
    ones = {m: torch.ones(4, 1) for m in mods}
    train_b = [Batch({m: torch.zeros(4, 1) for m in mods}, torch.zeros(4, 1), list("abcd"))]
    test_b = [Batch(ones, torch.full((4, 1), 36.0), list("abcd"))]  # full prediction = 36: MAE 0
    rec = measure(model, lambda b: model(b.inputs).pred, task,
                  lambda p, t, ids: metrics.mosi_metrics(p, t)["mae"], lambda p: p, train_b, test_b, seed=0)  # fmt: skip
    assert rec["shapley_estimator"].startswith("sampled")
    # v(S) = -MAE = -(36 - sum of weights in S): each modality adds its weight, in any order
    assert rec["shapley"] == pytest.approx({m: float(i + 1) for i, m in enumerate(mods)})
    assert rec["missing"]["m7"] == pytest.approx(8.0)  # MAE without m7
    assert rec["worst_missing"] == pytest.approx(8.0)  # MAE: the worst is the largest


# --- one definition of "absent" for every method and model ----------------------------------------------
@torch.no_grad()
def _absent_leaves_no_trace(model, forward, batch, means, m) -> bool:
    """With m absent, m's input has no influence; returns whether it had one with m present."""
    other = Batch({**batch.inputs, m: batch.inputs[m] * -3.0 + 5.0}, batch.target, batch.ids)
    with absent(model, means, [m]):
        p1, p2 = forward(batch), forward(other)
    assert torch.allclose(p1, p2, atol=1e-5), f"absent modality {m} still reaches the prediction"
    return not torch.allclose(forward(batch), forward(other), atol=1e-5)


@pytest.mark.parametrize("method", sorted(METHODS.names()))
def test_absent_is_the_same_construction_through_every_method(tmp_path, method):
    task = trainer(tmp_path, "joint").task
    params = METHODS.get(method).variants(SHORT_RUN_PARAMS.get(method, {}), task)[0]  # unimodal: a modality
    tr = lnln_trainer(tmp_path) if method == "lnln" else trainer(tmp_path, method, **params)
    tr.model.eval()
    tr.ctx.training = False

    def forward(b):
        return tr.method.forward(tr.model, b, tr.ctx).pred

    means, _ = train_statistics(tr.model, forward, tr.iterate("train"))
    batch = next(tr.iterate("test"))
    m = tr.modalities[-1]
    seen = {}
    with torch.no_grad(), absent(tr.model, means, [m]):
        # registered after absent's hook, so it sees the feature the rest of the model sees
        module = tr.model.feature_modules(m)[0]  # the encoder, or the part of it the model calls (LNLN)
        handle = module.register_forward_hook(lambda mod, a, out: seen.setdefault("f", out))
        forward(batch)
    handle.remove()
    assert torch.equal(seen["f"], means[m][0].expand_as(seen["f"]))
    # every modality that reaches this method's prediction (ReconBoost's first stage uses one) stops doing so
    mattered = [_absent_leaves_no_trace(tr.model, forward, batch, means, k) for k in tr.modalities]
    assert any(mattered), "no modality reached the prediction: the test shows nothing"


@pytest.mark.parametrize("task", ["regression", "segmentation"])
def test_absent_in_every_task_kind(tmp_path, task):
    tr = trainer(tmp_path, "joint", task=task)
    tr.model.eval()

    def forward(b):
        return tr.model(b.inputs).pred

    means, _ = train_statistics(tr.model, forward, tr.iterate("train"))
    assert _absent_leaves_no_trace(tr.model, forward, next(tr.iterate("test")), means, "m0")


def test_absent_in_the_paper_models():
    """MSAModel (fusion reads the encoder sequences) and DeepLab (the decoder reads two maps)."""
    g = torch.Generator().manual_seed(0)
    msa = build_msa_model(
        {"text": 6, "audio": 3}, 2, MSAModelParams(proj_dim=8, num_heads=2, layers=3)
    ).eval()
    seqs = [Batch({"text": torch.randn(4, 5, 6, generator=g), "audio": torch.randn(4, 7, 3, generator=g)},
                  torch.zeros(4, dtype=torch.long), list("abcd")) for _ in range(2)]  # fmt: skip
    means, _ = train_statistics(msa, lambda b: msa(b.inputs).pred, seqs[:1])
    assert means["audio"][0].shape == (7, 8)  # a (T, d) sequence mean
    assert _absent_leaves_no_trace(msa, lambda b: msa(b.inputs).pred, seqs[1], means, "audio")

    seg = deeplab_multi_input(["t1", "t2"], 3, layers=(1, 1, 1, 1), width=8, aspp_channels=8,
                              decoder_channels=8).eval()  # fmt: skip
    imgs = [Batch({m: torch.randn(2, 1, 32, 32, generator=g) for m in ("t1", "t2")},
                  torch.zeros(2, 32, 32, dtype=torch.long), ["a", "b"]) for _ in range(2)]  # fmt: skip
    means, _ = train_statistics(seg, lambda b: seg(b.inputs).pred, imgs[:1])
    assert len(means["t1"]) == 2  # the ASPP map and the low-level map
    assert _absent_leaves_no_trace(seg, lambda b: seg(b.inputs).pred, imgs[1], means, "t1")


@pytest.mark.parametrize("method", ["joint", "mla", "greedy", "ume"])
def test_full_variant_is_the_evaluation_of_the_test_split(tmp_path, method):
    """MLA's predictions depend on the batch (entropy over the batch axis): the measurement must present
    the test split exactly as evaluation does, so its all-present score is the test metric."""
    tr = trainer(tmp_path, method)
    tr.ctx.training = False
    rec = measure(tr.model, lambda b: tr.method.forward(tr.model, b, tr.ctx).pred, tr.task,
                  tr.adapter.primary_value, tr.adapter.compact_prediction, tr.iterate("train"), tr.iterate("test"),
                  seed=0)  # fmt: skip
    assert rec["full"] == tr.evaluate("test")["accuracy"]


@pytest.mark.parametrize("task", ["classification", "regression", "segmentation"])
def test_primary_value_is_the_evaluated_primary_metric(tmp_path, task):
    tr = trainer(tmp_path, "joint", task=task)
    batch = next(tr.iterate("test"))
    pred = tr.adapter.compact_prediction(tr.model(batch.inputs).pred.detach())
    full = tr.adapter.evaluate(pred, batch.target, batch.ids)[tr.task.primary_metric]
    assert tr.adapter.primary_value(pred, batch.target, batch.ids) == full


# --- at the end of training, and later with `evaluate` -----------------------------------------------------
def test_end_of_training_record_and_evaluate_match(tmp_path, capsys):
    result = train(small_spec(epochs=3), tmp_path, progress=False)
    rd = RunDir(result.path)
    rec = rd.final()["modality_eval"]
    best = rd.final()["best_epoch"]
    assert torch.load(rd.file("best.pt"), weights_only=False)["epoch"] == best
    assert rec["full"] == pytest.approx(rd.final()["test"]["accuracy"])  # the selected epoch's model
    assert set(rec["shapley"]) == {"m0", "m1", "m2"} and len(rec["subsets"]) == 8
    assert same_record(evaluate_run(rd.path, device="cpu"), rec)

    # An old run: no modality_eval in final.json. `evaluate` scores it and writes the same numbers.
    final = rd.final()
    del final["modality_eval"]
    rd.file("final.json").write_text(json.dumps(final))
    assert main(["evaluate", str(rd.path)]) == 0
    assert same_record(rd.final()["modality_eval"], rec)
    assert main(["evaluate", str(rd.path)]) == 0
    assert "matches final.json" in capsys.readouterr().out

    # A tampered record is reported as different (exit 1).
    final = rd.final()
    final["modality_eval"]["shapley"]["m0"] += 1.0
    rd.file("final.json").write_text(json.dumps(final))
    assert main(["evaluate", str(rd.path)]) == 1


def test_a_failed_measurement_keeps_the_trained_run(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("features change shape between batches")

    monkeypatch.setattr(modality_eval, "measure", broken)
    result = train(small_spec(), tmp_path, progress=False)
    assert result.status == "done" and RunDir(result.path).status() == "done"
    assert result.final["modality_eval"] == {"error": "ValueError: features change shape between batches"}
    from mmbalance.reporting.modality_report import modality_frame
    from mmbalance.reporting.report import load_runs

    assert modality_frame(load_runs(tmp_path)).empty  # the report leaves it out


def test_evaluate_scores_an_amp_run_under_amp(tmp_path):
    result = train(small_spec(epochs=1), tmp_path, progress=False, amp=True)  # bf16 on CPU
    rec = RunDir(result.path).final()["modality_eval"]
    assert rec["full"] == pytest.approx(result.final["test"]["accuracy"])
    assert same_record(evaluate_run(result.path, device="cpu"), rec)


def test_evaluate_refuses_what_it_cannot_score(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    assert "no spec.yaml" in capsys.readouterr().err
    result = train(small_spec(), tmp_path, progress=False)
    rd = RunDir(result.path)
    rd.file("best.pt").unlink()
    torch.save(
        {**torch.load(rd.file("checkpoint.pt"), weights_only=False), "epoch": 99}, rd.file("checkpoint.pt")
    )
    assert main(["evaluate", str(rd.path)]) == 2
    assert "selected epoch" in capsys.readouterr().err


def test_report_writes_the_modality_table_and_figures(tmp_path):
    from mmbalance.reporting.modality_report import modality_figures
    from mmbalance.reporting.report import load_runs, report

    for method, seed in (("joint", 0), ("joint", 1), ("mmcosine", 0)):
        train(small_spec(method=method, seed=seed), tmp_path, progress=False)
    report(tmp_path, out=tmp_path / "out", figures=False)
    paths = modality_figures(load_runs(tmp_path), tmp_path / "out" / "figures", "all-runs")
    md = (tmp_path / "out" / "tables" / "all-runs-modality.md").read_text()
    assert "Imbalance degree" in md and "Equity" in md and "Worst missing Acc" in md and "Acc w/o m0" in md
    joint = [line for line in md.splitlines() if line.startswith("| joint |")][0]
    assert "±" in joint and joint.rstrip(" |").endswith("2")  # two seeds
    # joint's effective robustness against itself is 0 on average over its seeds
    csv = (tmp_path / "out" / "tables" / "all-runs-modality.csv").read_text()
    row = [
        r
        for r in csv.splitlines()
        if r.startswith("synthetic,classification,synthetic (classification),joint,effective_robustness")
    ][0]
    assert abs(float(row.split(",")[5])) < 1e-9
    names = {p.name for p in paths}
    for fig in ("contributions", "robustness"):
        assert f"all-runs-synthetic-classification-{fig}.png" in names


class _NoReuse(modality_eval.ReusedEncoders):
    """Every encoder call computed anew: the measurement as it was before outputs were reused."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


@pytest.mark.parametrize(
    ("method", "task"),
    [("joint", "classification"), ("mla", "classification"), ("greedy", "classification"),
     ("agm", "classification"), ("ume", "classification"), ("joint", "segmentation"),
     ("cggm", "regression")],
)  # fmt: skip
def test_reused_encoder_outputs_give_the_same_record(tmp_path, monkeypatch, method, task):
    """Each encoder runs once per distinct input of a batch; the record is identical to float equality
    with the one where every variant recomputes every encoder (methods that call encoders their own way
    included), and the reuse does happen."""
    tr = trainer(tmp_path, method, task=task)
    tr.ctx.training = False
    calls, computed = [], []
    for enc in tr.model.encoders.values():
        enc.register_forward_hook(lambda *a: calls.append(1))
    cls = type(next(iter(tr.model.encoders.values())))
    forward = cls.forward
    monkeypatch.setattr(cls, "forward", lambda self, *a, **k: computed.append(1) or forward(self, *a, **k))

    def run():
        calls.clear(), computed.clear()
        return measure(tr.model, lambda b: tr.method.forward(tr.model, b, tr.ctx).pred, tr.task,
                       tr.adapter.primary_value, tr.adapter.compact_prediction, tr.iterate("train"),
                       tr.iterate("test"), seed=0), len(calls), len(computed)  # fmt: skip

    # The incomplete-data copies change every input, so nothing of theirs is reused: counted without them.
    monkeypatch.setattr(incomplete, "RATES", (0.0,))
    reused, n_calls, n_computed = run()
    monkeypatch.setattr(modality_eval, "ReusedEncoders", _NoReuse)
    fresh, n_calls_fresh, n_computed_fresh = run()
    assert reused == fresh
    assert n_calls == n_calls_fresh  # hooks still see every call (the absent replacement relies on them)
    assert n_computed < n_computed_fresh / 2
