"""CMU-MOSI adapter on fixtures in the MulT and MMSA schemas: shapes, labels, bad inputs, one training run."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mmbalance.common.spec import validate_spec
from mmbalance.datasets import mosi as mosi_mod
from mmbalance.datasets.mosi import Mosi, MosiModelParams, MosiParams
from mmbalance.fixtures import mosi as fixture
from mmbalance.reporting.results import load
from mmbalance.training.data import DataError, DataMissingError, collate
from mmbalance.training.runner import train

TINY_MODEL = {"proj_dim": 8, "num_heads": 2, "layers": 2, "cls_layers": 1}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return fixture.write(tmp_path_factory.mktemp("data")).parent


def adapter(root: Path, **params) -> Mosi:
    return Mosi(MosiParams(**params), root / "mosi")


def write_pickle(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(data))
    return path


@pytest.mark.parametrize(
    ("params", "file", "lengths", "text_dim"),
    [
        ({}, "mosi_data.pkl", (6, 6, 6), 300),
        ({"aligned": False}, "mosi_data_noalign.pkl", (6, 9, 7), 300),
        ({"source": "mmsa"}, "aligned_50.pkl", (6, 6, 6), 768),
        ({"source": "mmsa", "aligned": False}, "unaligned_50.pkl", (6, 9, 7), 768),
    ],
)
def test_every_format_loads(root, params, file, lengths, text_dim):
    a = adapter(root, **params)
    assert a.path.name == file
    source = fixture.mult_pickle if "source" not in params else fixture.mmsa_pickle
    raw = source(params.get("aligned", True))
    for split, n in fixture.SIZES.items():
        ds = a.split(split)
        assert len(ds) == n
        assert tuple(ds.inputs["text"].shape) == (n, lengths[0], text_dim)
        assert tuple(ds.inputs["audio"].shape) == (n, lengths[1], 5)
        assert tuple(ds.inputs["vision"].shape) == (n, lengths[2], 20)
        label_key = "labels" if "source" not in params else "regression_labels"
        np.testing.assert_allclose(ds.target.numpy().ravel(), np.asarray(raw[split][label_key]).ravel())
        # -inf in audio became 0; every other value is kept
        expected_audio = raw[split]["audio"].copy()
        expected_audio[np.isneginf(expected_audio)] = 0
        np.testing.assert_array_equal(ds.inputs["audio"].numpy(), expected_audio)
    x, y, item_id = a.split("train")[1]
    assert y.shape == (1,) and y.dtype == torch.float32
    assert item_id == ("vidtrain0_1_2" if "source" not in params else "vidtrain0$_$1")
    assert a.task.kind == "regression" and a.task.modalities == ("text", "audio", "vision")


def test_text_bert_ids_and_a_local_bert(root, tmp_path):
    a = adapter(root, source="mmsa", text="text_bert")
    x, _, _ = a.split("train")[0]
    assert x["text"].dtype == torch.int64 and tuple(x["text"].shape) == (3, 6)  # ids, mask, segments
    assert x["text"][0, 0] == 101 and x["text"][1].eq(1).all()
    with pytest.raises(DataError, match="set model_params.bert"):
        a.build_model(MosiModelParams(**TINY_MODEL), ["text", "audio"])
    with pytest.raises(DataError, match="needs an MMSA file"):
        adapter(root, text="text_bert").split("train")
    # a tiny random BERT saved locally stands in for bert-base-uncased (no download)
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)  # fmt: skip
    BertModel(config).save_pretrained(tmp_path / "bert")
    model = a.build_model(MosiModelParams(**TINY_MODEL, bert=str(tmp_path / "bert")), ["text", "audio"])
    out = model(collate([a.split("train")[i] for i in range(2)]).inputs)
    assert out.pred.shape == (2, 1) and out.aux["text"].shape == (2, 6, 8)
    frozen = model.encoders["text"].backbone.embeddings.word_embeddings.weight
    assert not frozen.requires_grad and all(p is not frozen for p in model.encoder_parameters("text"))


def test_format_is_detected_from_keys(root, tmp_path):
    # An MMSA file under another name, read with source=auto: the keys decide.
    (tmp_path / "mosi").mkdir()
    (tmp_path / "mosi" / "mine.pkl").write_bytes((root / "mosi" / "aligned_50.pkl").read_bytes())
    a = adapter(tmp_path, file="mine.pkl")
    assert a.split("test").inputs["text"].shape[-1] == 768


def test_fingerprint_hashes_ids_and_labels(root, tmp_path):
    a = adapter(root)
    assert a.fingerprint("train") == adapter(root).fingerprint("train")
    assert a.fingerprint("train") != a.fingerprint("valid")
    data = fixture.mult_pickle(True)
    labels = data["train"]["labels"]
    labels[3] = 2.9 if labels[3] != 2.9 else -2.9  # another score inside MOSI's [-3, 3]
    write_pickle(tmp_path / "mosi" / "mosi_data.pkl", data)
    assert adapter(tmp_path).fingerprint("train") != a.fingerprint("train")


# --- bad inputs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["mult", "mmsa"])
@pytest.mark.parametrize(("value", "index"), [(10.0, 3), (-3.5, 0), (np.nan, 5), (np.inf, 1)])
def test_bad_scores_name_the_file_and_the_first_bad_index(tmp_path, source, value, index):
    data = (fixture.mult_pickle if source == "mult" else fixture.mmsa_pickle)(True)
    key = "labels" if source == "mult" else "regression_labels"
    data["valid"][key].reshape(-1)[index] = value
    path = write_pickle(tmp_path / "mosi" / ("mosi_data.pkl" if source == "mult" else "aligned_50.pkl"), data)
    with pytest.raises(
        DataError, match=rf"{path}: valid/{key}: 1 bad label\(s\), the first at index {index}"
    ):
        adapter(tmp_path, source=source).split("train")


def test_text_bert_ids_outside_the_bert_vocabulary_name_the_sample(root, tmp_path):
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=1000, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)  # fmt: skip
    BertModel(config).save_pretrained(tmp_path / "small-bert")
    a = adapter(root, source="mmsa", text="text_bert")
    params = MosiModelParams(**TINY_MODEL, bert=str(tmp_path / "small-bert"))
    with pytest.raises(DataError, match=r"aligned_50.pkl: train/text_bert sample 0 has word id \d+, outside "
                                        r"the vocabulary of .*small-bert \(1000 words\)"):  # fmt: skip
        a.build_model(params, ["text", "audio"])


def test_missing_file_names_the_candidates(tmp_path):
    with pytest.raises(
        DataMissingError,
        match=r"mosi_data.pkl, aligned_50.pkl, .*MOSI/Processed/aligned_50.pkl.* found under .*mosi",
    ):
        adapter(tmp_path).verify()
    with pytest.raises(DataMissingError, match="unaligned_50.pkl"):
        adapter(tmp_path, source="mmsa", aligned=False).split("train")


def test_missing_key(tmp_path):
    data = fixture.mult_pickle(True)
    del data["valid"]["vision"]
    path = write_pickle(tmp_path / "mosi" / "mosi_data.pkl", data)
    with pytest.raises(DataError, match=rf"{path}: split 'valid' lacks key\(s\) \['vision'\]"):
        adapter(tmp_path).split("train")


def test_missing_split_and_unknown_format(tmp_path):
    data = fixture.mult_pickle(True)
    del data["test"]
    write_pickle(tmp_path / "mosi" / "mosi_data.pkl", data)
    with pytest.raises(DataError, match="split 'test' missing"):
        adapter(tmp_path).split("train")
    data = fixture.mult_pickle(True)
    data["train"]["scores"] = data["train"].pop("labels")
    write_pickle(tmp_path / "mosi" / "mosi_data.pkl", data)
    with pytest.raises(DataError, match=r"mosi_data.pkl: neither 'labels' \(MulT\) nor 'regression_labels'"):
        adapter(tmp_path).split("train")


def test_wrong_shapes(tmp_path):
    data = fixture.mult_pickle(True)
    data["train"]["audio"] = data["train"]["audio"][:, :, 0]  # (N, T): feature axis dropped
    path = write_pickle(tmp_path / "mosi" / "mosi_data.pkl", data)
    with pytest.raises(
        DataError, match=rf"{path}: train/audio must be an array of shape \(N=16, T, D\).*\(16, 6\)"
    ):
        adapter(tmp_path).split("train")
    data = fixture.mult_pickle(True)
    data["test"]["vision"] = data["test"]["vision"][:, :, :7]
    write_pickle(tmp_path / "mosi" / "mosi_data.pkl", data)
    with pytest.raises(DataError, match="vision feature size differs between splits"):
        adapter(tmp_path).split("train")
    data = fixture.mult_pickle(True)
    data["train"]["labels"] = np.zeros((16, 2, 1), np.float32)
    write_pickle(tmp_path / "mosi" / "mosi_data.pkl", data)
    with pytest.raises(DataError, match="one score per sample"):
        adapter(tmp_path).split("train")


def test_nan_features_are_an_error(tmp_path):
    data = fixture.mult_pickle(True)
    data["valid"]["vision"][0, 0, 0] = np.nan
    write_pickle(tmp_path / "mosi" / "mosi_data.pkl", data)
    with pytest.raises(DataError, match="valid/vision has 1 NaN/inf"):
        adapter(tmp_path).split("train")


def test_truncated_and_malicious_pickles(root, tmp_path):
    path = tmp_path / "mosi" / "mosi_data.pkl"
    path.parent.mkdir()
    path.write_bytes((root / "mosi" / "mosi_data.pkl").read_bytes()[:5000])
    with pytest.raises(DataError, match=f"{path}: not a readable pickle"):
        adapter(tmp_path).split("train")

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    data = fixture.mult_pickle(True)
    data["train"]["id"] = Exploit()
    write_pickle(path, data)
    with pytest.raises(DataError, match=f"{path}: refused to unpickle global"):
        adapter(tmp_path).split("train")
    assert not marker.exists()


def test_mmsa_release_hash(root, tmp_path, monkeypatch):
    path = tmp_path / "mosi" / "aligned_50.pkl"
    path.parent.mkdir()
    path.write_bytes((root / "mosi" / "aligned_50.pkl").read_bytes())
    # Pretend the fixture is the full release: its train size is the release's, its hash is not.
    monkeypatch.setattr(Mosi, "mmsa_train_samples", fixture.SIZES["train"])
    with pytest.raises(DataError, match="differs from MMSA's published d3994fd2"):
        adapter(tmp_path, source="mmsa").split("train")
    assert len(adapter(tmp_path, source="mmsa", check_sha256=False).split("train")) == 16
    monkeypatch.setitem(mosi_mod.MMSA_SHA256, "aligned_50.pkl", hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(adapter(tmp_path, source="mmsa").split("train")) == 16


# --- model and training ----------------------------------------------------------------------------
def test_model_on_a_batch(root):
    a = adapter(root, aligned=False)
    batch = collate([a.split("train")[i] for i in range(4)])
    model = a.build_model(MosiModelParams(**TINY_MODEL), a.task.modalities)
    out = model(batch.inputs)
    assert out.pred.shape == (4, 1)
    assert {m: tuple(h.shape) for m, h in out.aux.items()} == {"text": (4, 6, 8), "audio": (4, 9, 8),
                                                               "vision": (4, 7, 8)}  # fmt: skip
    assert torch.equal(out.features["audio"], out.aux["audio"][:, 0])


@pytest.mark.parametrize(
    "method", [{"method": "joint"}, {"method": "unimodal", "method_params": {"modality": "text"}}]
)
def test_one_epoch_writes_a_run_record(root, tmp_path, method):
    spec = validate_spec(
        {
            "dataset": "mosi",
            "epochs": 1,
            "batch_size": 8,
            "probe_every": 1,
            "model_params": TINY_MODEL,
            **method,
        }
    )
    result = train(spec, results=tmp_path, data_root=root, progress=False)
    assert result.status == "done"
    final = json.loads((result.path / "final.json").read_text())
    assert set(final["test"]) >= {"mae", "corr", "acc7", "acc2_non0", "f1_non0"}
    assert np.isfinite(final["test"]["mae"])
    # fixture files are marked by their writer: the record says so, and reports never rank the run
    assert yaml.safe_load((result.path / "spec.yaml").read_text())["data_fixture"] is True
    assert load(tmp_path)["fixture"].tolist() == [True]


def test_a_model_that_cannot_be_built_leaves_no_run_folder(root, tmp_path, capsys):
    from mmbalance.cli import main

    argv = ["run", "--dataset", "mosi", "--data-root", str(root), "--results", str(tmp_path), "--quiet",
            "--set", "dataset_params.source=mmsa", "--set", "dataset_params.text=text_bert"]  # fmt: skip
    assert main(argv) == 2  # no model_params.bert for the word ids
    err = capsys.readouterr().err
    assert err.startswith("error: mosi: text='text_bert'") and err.count("\n") == 1
    assert not list((tmp_path / "runs").glob("*"))
