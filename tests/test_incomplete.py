"""LNLN's incomplete-data protocol (mmbalance/training/incomplete.py): the position rule by hand on each input
structure, the seeded draws, the modality_eval record, the training option and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import small_spec

from mmbalance.cli import main
from mmbalance.common.records import RunDir
from mmbalance.common.spec import validate_spec
from mmbalance.training import incomplete, metrics
from mmbalance.training.data import Batch, TaskInfo
from mmbalance.training.incomplete import UNK, InputMeans, TrainingMissing, drop, rule
from mmbalance.training.modality_eval import measure
from mmbalance.training.runner import train


# --- the rule, by hand ------------------------------------------------------------------------------------
def test_tokens_become_unk_keeping_cls_sep_and_padding():
    # two BERT triples, L = 6: lengths 5 (one pad) and 6; ids 101 [CLS] ... 102 [SEP]
    ids = torch.tensor([[101, 7, 8, 9, 102, 0], [101, 4, 5, 6, 7, 102]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    seg = torch.zeros_like(ids)
    x = torch.stack([ids, mask, seg], dim=1)
    u = torch.tensor([[0.1, 0.2, 0.9, 0.3, 0.1, 0.1], [0.0, 0.6, 0.2, 0.7, 0.4, 0.2]])
    out = drop(x, u, 0.5)
    # row 0: positions 1, 3 go (0: [CLS], 4: [SEP], 5: padding stay); row 1: positions 2, 4 (5: [SEP] stays)
    assert out[:, 0].tolist() == [[101, UNK, 8, UNK, 102, 0], [101, 4, UNK, 6, UNK, 102]]
    assert torch.equal(out[:, 1:], x[:, 1:])  # attention mask and segment ids unchanged
    assert rule(x) == "tokens" and out.dtype == x.dtype
    assert drop(x, u, 0.5, unk=1)[0, 0].tolist() == [101, 1, 8, 1, 102, 0]  # a vocabulary with [UNK] at 1


def test_the_unknown_token_is_the_tokenizers(tmp_path):
    from mmbalance.datasets.food101 import Food101, Food101Params
    from mmbalance.fixtures import food101 as fixture

    root = fixture.write(tmp_path)
    models = {
        "text_model": str(root / "tiny_models" / "bert"),
        "image_model": str(root / "tiny_models" / "vit"),
    }
    assert (
        Food101(Food101Params(mode="end_to_end", **models), root).unknown_token() == 1
    )  # the fixture vocab's
    assert Food101(Food101Params(**models), root).unknown_token() == UNK  # features: no word ids


def test_frames_are_zeroed_and_values_take_the_train_mean():
    seq = torch.arange(1.0, 9.0).reshape(1, 4, 2)  # one sample, four steps of two features
    out = drop(seq, torch.tensor([[0.1, 0.6, 0.3, 0.9]]), 0.35)
    assert out.tolist() == [[[0.0, 0.0], [3.0, 4.0], [0.0, 0.0], [7.0, 8.0]]]
    vec = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mean = torch.tensor([-1.0, -2.0, -3.0])
    u = torch.tensor([[0.5, 0.1, 0.9], [0.2, 0.3, 0.25]])
    assert drop(vec, u, torch.tensor([0.4, 0.26]), mean).tolist() == [[1.0, -2.0, 3.0], [-1.0, 5.0, -3.0]]
    # an image (C=2, 1x2): a removed location loses both channels
    img = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    out = drop(img, torch.tensor([[[0.1, 0.8]]]), 0.5, torch.zeros(2, 1, 2))
    assert out.tolist() == [[[[0.0, 2.0]], [[0.0, 4.0]]]]
    assert drop(vec, u, 0.0, mean).equal(vec)  # r = 0: the complete input
    with pytest.raises(ValueError, match=r"integer input of shape \(4,\)"):
        rule(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="train-split mean"):
        drop(vec, u, 0.5)


def test_draws_are_nested_over_rates_and_independent_of_the_batch_size():
    x = {"a": torch.randn(10, 6), "b": torch.randn(10, 4, 3)}
    gens = incomplete.eval_generators(1111, list(x))
    whole = incomplete.draws(x, gens)
    gens = incomplete.eval_generators(1111, list(x))
    parts = [incomplete.draws({m: v[i : i + 4] for m, v in x.items()}, gens) for i in (0, 4, 8)]
    for m in x:
        assert torch.equal(whole[m], torch.cat([p[m] for p in parts]))
    assert whole["b"].shape == (10, 4)  # one draw per step
    zero = {"a": torch.zeros(6)}
    low = drop(x["a"], whole["a"], 0.3, zero["a"]) == 0
    high = drop(x["a"], whole["a"], 0.6, zero["a"]) == 0
    assert (low <= high).all() and high.sum() > low.sum()  # removed at 0.3 -> removed at 0.6


def test_input_means_per_position():
    acc = InputMeans()
    batches = [Batch({"a": torch.tensor([[1.0, 2.0]]), "t": torch.zeros(1, 3, 4, dtype=torch.long)},
                     torch.tensor([0]), ["x"]),
               Batch({"a": torch.tensor([[3.0, 6.0]]), "t": torch.zeros(1, 3, 4, dtype=torch.long)},
                     torch.tensor([1]), ["y"])]  # fmt: skip
    assert len(list(acc.watch(batches))) == 2
    assert set(acc.means) == {"a"} and acc.means["a"].tolist() == [2.0, 4.0]


# --- the modality_eval record ------------------------------------------------------------------------------
def test_record_on_a_model_with_known_predictions():
    """logits = x_a + x_b (identity encoders into a fixed head); the train means are zero, so each point
    of the curve is the accuracy of the test inputs with the drawn positions set to 0."""
    from test_modality_eval import known_batches, known_model

    model = known_model()
    task = TaskInfo("classification", ("a", "b"), 2)

    def acc(p, t, ids):
        return metrics.classification_metrics(p, t)["accuracy"]

    rec = measure(model, lambda b: model(b.inputs).pred, task, acc, lambda p: p, *known_batches(), seed=0)
    inc = rec["incomplete"]
    assert inc["rates"] == pytest.approx([i / 10 for i in range(10)]) and inc["seeds"] == [1111, 1112, 1113]
    assert inc["rules"] == {"a": "values", "b": "values"}
    test = known_batches()[1][0]
    for s in inc["seeds"]:
        u = incomplete.draws(test.inputs, incomplete.eval_generators(s, ["a", "b"]))
        expected = []
        for r in inc["rates"]:
            kept = {m: test.inputs[m] * (u[m] >= r) for m in ("a", "b")}
            expected.append(acc(kept["a"] + kept["b"], test.target, test.ids))
        assert inc["per_seed"][str(s)] == pytest.approx(expected)
    assert inc["curve"] == pytest.approx(np.mean([inc["per_seed"][str(s)] for s in inc["seeds"]], axis=0))
    assert inc["curve"][0] == pytest.approx(rec["full"]) and inc["mean"] == pytest.approx(
        np.mean(inc["curve"])
    )
    # everything removed (u < 1): both inputs zero, logits tie, class 0 -> 2 of 5 right
    u1 = {m: torch.zeros(5, 2) for m in ("a", "b")}
    gone = incomplete.incomplete_inputs(u1, test.inputs, 1.0, {"a": torch.zeros(2), "b": torch.zeros(2)})
    assert acc(model(gone).pred, test.target, test.ids) == pytest.approx(40.0)


def test_a_trained_run_records_the_curve_and_evaluate_adds_it_to_old_records(tmp_path, capsys):
    result = train(small_spec(epochs=2), tmp_path, progress=False)
    rd = RunDir(result.path)
    rec = rd.final()["modality_eval"]
    inc = rec["incomplete"]
    assert inc["curve"][0] == pytest.approx(rd.final()["test"]["accuracy"])
    assert inc["curve"][-1] < inc["curve"][0]  # 90% of every input removed costs accuracy
    # A record from before the protocol: evaluate matches it on what it has and adds the protocol.
    final = rd.final()
    del final["modality_eval"]["incomplete"]
    rd.file("final.json").write_text(json.dumps(final))
    assert main(["evaluate", str(rd.path)]) == 0
    assert "incomplete-data protocol added" in capsys.readouterr().out
    assert rd.final()["modality_eval"]["incomplete"] == inc  # the same numbers: seeded, deterministic


# --- training with random missing rates ---------------------------------------------------------------------
def test_train_missing_is_omitted_at_its_default_and_changes_training(tmp_path):
    plain = small_spec()
    assert "train_missing" not in plain.canonical()  # earlier run ids stay
    on = validate_spec({**plain.model_dump(), "train_missing": True})
    assert on.canonical()["train_missing"] is True and on.run_id() != plain.run_id()
    a = train(plain, tmp_path, progress=False).final
    b = train(on, tmp_path, progress=False).final
    assert a["test"] != b["test"] and b["spec"]["train_missing"] is True


def test_training_rates_half_zero_redrawn_each_epoch():
    x = torch.randn(4000, 32)
    tm = TrainingMissing(seed=0, modalities=["a"], means={"a": torch.zeros(32)})
    tm.start_epoch(0)
    first = tm.apply(Batch({"a": x}, torch.zeros(4000), ["i"] * 4000)).inputs["a"]
    removed = (first == 0).float().mean(dim=1)  # per-sample fraction removed ~ its rate
    # half the rates are 0; a small rate may remove nothing of 32 positions: E = 0.5 + 0.5 / 33
    assert 0.47 < (removed == 0).float().mean() < 0.56
    assert 0.2 < removed.mean() < 0.3  # E[r] = 0.5 * 0.5
    tm.start_epoch(0)
    again = tm.apply(Batch({"a": x}, torch.zeros(4000), ["i"] * 4000)).inputs["a"]
    tm.start_epoch(1)
    other = tm.apply(Batch({"a": x}, torch.zeros(4000), ["i"] * 4000)).inputs["a"]
    assert torch.equal(first, again) and not torch.equal(first, other)


# --- the report ----------------------------------------------------------------------------------------------
def test_report_writes_the_incomplete_table_and_figure(tmp_path):
    from mmbalance.reporting.incomplete_report import incomplete_figures
    from mmbalance.reporting.report import load_runs, report

    for method, seed in (("joint", 0), ("joint", 1), ("mmcosine", 0)):
        train(small_spec(method=method, seed=seed), tmp_path, progress=False)
    report(tmp_path, out=tmp_path / "out", figures=False)
    md = (tmp_path / "out" / "tables" / "all-runs-incomplete.md").read_text()
    assert "r=0.0" in md and "r=0.9" in md and "Average Acc" in md and "Worst w/o one modality" in md
    joint = [line for line in md.splitlines() if line.startswith("| joint |")][0]
    assert joint.count("±") == 12 and joint.rstrip(" |").endswith("2")  # 10 rates, average, worst; 2 seeds
    csv = (tmp_path / "out" / "tables" / "all-runs-incomplete.csv").read_text()
    means = [r for r in csv.splitlines() if ",joint,incomplete_mean," in r]
    assert len(means) == 1
    paths = incomplete_figures(load_runs(tmp_path), tmp_path / "figs", "all-runs")
    assert {p.name for p in paths} == {
        "all-runs-synthetic-classification-incomplete.png",
        "all-runs-synthetic-classification-incomplete.pdf",
    }


def test_mosi_word_ids_and_sequences_in_training_and_evaluation(tmp_path):
    """MMSA's unaligned MOSI layout with BERT word ids (a tiny local BERT, no download): the text loses
    words to [UNK], audio and vision lose steps, in training (``train_missing``) and in the record."""
    from transformers import BertConfig, BertModel

    from mmbalance.fixtures import mosi as fixture

    root = fixture.write(tmp_path / "data").parent
    config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)  # fmt: skip
    BertModel(config).save_pretrained(tmp_path / "bert")
    spec = validate_spec({
        "dataset": "mosi", "dataset_params": {"source": "mmsa", "aligned": False, "text": "text_bert"},
        "model_params": {"proj_dim": 8, "num_heads": 2, "layers": 2, "cls_layers": 1, "bert": str(tmp_path / "bert")},
        "epochs": 1, "batch_size": 8, "probe_every": 0, "train_missing": True,
    })  # fmt: skip
    result = train(spec, results=tmp_path / "results", data_root=root, progress=False)
    inc = result.final["modality_eval"]["incomplete"]
    assert inc["rules"] == {"text": "tokens", "audio": "frames", "vision": "frames"}
    assert inc["curve"][0] == pytest.approx(result.final["test"]["mae"]) and np.isfinite(inc["curve"]).all()
