"""IEMOCAP adapter on fixtures in the MMIN (h5 + npy) and MulT (pickle) schemas."""

from __future__ import annotations

import json
import pickle
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mmbalance.common.spec import validate_spec
from mmbalance.datasets.iemocap import Iemocap, IemocapParams, pad_or_truncate
from mmbalance.fixtures import iemocap as fixture
from mmbalance.training.data import DataError, DataMissingError, collate
from mmbalance.training.runner import train

TINY_MODEL = {"proj_dim": 8, "num_heads": 2, "layers": 2, "cls_layers": 1}
SHORT = {"audio_len": 40, "vision_len": 24}  # keeps the fixture runs fast; defaults are CGGM's 350 / 50


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return fixture.write(tmp_path_factory.mktemp("data")).parent


@pytest.fixture
def copy(root, tmp_path) -> Path:
    """A private copy of the fixture tree that a test may damage."""
    shutil.copytree(root / "iemocap", tmp_path / "iemocap")
    return tmp_path


def adapter(root: Path, **params) -> Iemocap:
    return Iemocap(IemocapParams(**params), root / "iemocap")


def quiet_split(a: Iemocap, name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixture's one over-long audio utterance
        return a.split(name)


def test_pad_or_truncate():
    x = np.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(pad_or_truncate(x, 5), [[0, 1], [2, 3], [4, 5], [0, 0], [0, 0]])
    np.testing.assert_array_equal(pad_or_truncate(x, 2), x[:2])
    assert pad_or_truncate(x, 2).dtype == np.float32


@pytest.mark.parametrize("fold", [1, 2, 10])
def test_mmin_folds_shapes_and_labels(root, fold):
    a = adapter(root, fold=fold)
    sets = fixture.fold_sets(fold)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_split = a.split("train")
    # the fixture's one 360-frame audio utterance (in train for folds 1-8, in valid/test for 9-10)
    assert [str(w.message).split(": ", 1)[1] for w in caught] == [
        f"1 of {16 if fold <= 8 else 2} utterances are longer than 350 steps "
        "(dataset_params.audio_len) and are truncated"
    ]
    for split, set_name in (("train", "trn"), ("valid", "val"), ("test", "tst")):
        ds = quiet_split(a, split)
        assert ds.ids == sets[set_name]
        assert ds.target.tolist() == [fixture.utterance_label(u) for u in sets[set_name]]
    x, y, uid = train_split[0]
    assert {m: tuple(v.shape) for m, v in x.items()} == {
        "text": (22, 1024),
        "audio": (350, 130),
        "vision": (50, 342),
    }
    assert uid == sets["trn"][0] and y.dtype == torch.int64
    assert a.task.num_classes == 4 and a.task.modalities == ("text", "audio", "vision")


def test_mmin_feature_values_normalisation_and_padding(root):
    a = adapter(root)
    ds = quiet_split(a, "train")
    uid = ds.ids[3]
    with h5py.File(root / "iemocap" / "A" / "comparE.h5") as f:
        raw = torch.from_numpy(f[uid][()])
    with h5py.File(root / "iemocap" / "A" / "comparE_mean_std.h5") as f:
        mean, std = torch.from_numpy(f["1"]["mean"][()]), torch.from_numpy(f["1"]["std"][()])
    std[std == 0] = 1.0
    audio = ds[3][0]["audio"]
    t = raw.shape[0]
    torch.testing.assert_close(audio[:t], (raw - mean) / std)
    assert audio[t:].abs().sum() == 0 and torch.isfinite(audio).all()
    # utterance normalisation: zero mean per feature over the real frames
    utt = quiet_split(adapter(root, norm="utt"), "train")[3][0]["audio"][:t]
    torch.testing.assert_close(utt.mean(dim=0), torch.zeros(130), atol=1e-5, rtol=0)
    # the over-long utterance (fold 1: in train) keeps its first 350 frames
    i = ds.ids.index(fixture.LONG_AUDIO_UTTERANCE)
    with h5py.File(root / "iemocap" / "A" / "comparE.h5") as f:
        raw = torch.from_numpy(f[fixture.LONG_AUDIO_UTTERANCE][()])
    assert raw.shape[0] == 360
    torch.testing.assert_close(ds[i][0]["audio"], (raw[:350] - mean) / std)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("emotion", ["neutral", "angry"])
def test_mult_pickle(root, aligned, emotion):
    a = adapter(root, format="mult", aligned=aligned, emotion=emotion)
    raw = fixture.mult_pickle(aligned)
    e = ["neutral", "happy", "sad", "angry"].index(emotion)
    lengths = fixture.MULT_LENGTHS[aligned]
    for split, n in fixture.MULT_SIZES.items():
        ds = a.split(split)
        assert len(ds) == n and ds.ids[0] == f"{split}-00000"
        assert ds.target.tolist() == raw[split]["labels"][:, e, :].argmax(-1).tolist()
        for m, d in fixture.MULT_DIMS.items():
            assert tuple(ds.inputs[m].shape) == (n, lengths[m], d)
        assert torch.isfinite(ds.inputs["audio"]).all()  # -inf -> 0
    assert a.task.num_classes == 2 and a.task.class_names[0].startswith(emotion)


def test_fingerprint_depends_on_fold_and_labels(root):
    a1, a2 = adapter(root, fold=1), adapter(root, fold=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert a1.fingerprint("test") != a2.fingerprint("test")
        assert a1.fingerprint("test") == adapter(root, fold=1).fingerprint("test")
    assert adapter(root, format="mult", emotion="sad").fingerprint("train") != adapter(
        root, format="mult", emotion="happy"
    ).fingerprint("train")


# --- bad inputs ------------------------------------------------------------------------------------
def test_missing_files_are_listed(copy):
    (copy / "iemocap" / "V" / "denseface.h5").unlink()
    (copy / "iemocap" / "target" / "1" / "tst_label.npy").unlink()
    with pytest.raises(DataMissingError) as e:
        adapter(copy).split("train")
    assert "V/denseface.h5" in str(e.value) and "target/1/tst_label.npy" in str(e.value)
    with pytest.raises(DataMissingError, match="iemocap_data_noalign.pkl"):
        Iemocap(IemocapParams(format="mult", aligned=False), copy / "elsewhere").verify()


def test_truncated_h5(copy):
    path = copy / "iemocap" / "L" / "bert_large.h5"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=f"{path}: cannot open as HDF5 \\(truncated"):
        quiet_split(adapter(copy), "train")


def test_missing_utterance_and_wrong_shapes(copy):
    path = copy / "iemocap" / "V" / "denseface.h5"
    uid = fixture.fold_sets(1)["val"][0]
    with h5py.File(path, "a") as f:
        del f[uid]
    with pytest.raises(
        DataError, match=rf"{path}: 1 utterance\(s\) of the split are missing, e.g. \['{uid}'\]"
    ):
        quiet_split(adapter(copy), "train")
    with h5py.File(path, "a") as f:
        f[uid] = np.zeros((10, 341), np.float32)  # one feature short
    with pytest.raises(
        DataError, match=rf"{path}: utterance '{uid}' has shape \(10, 341\), expected \(T, 342\)"
    ):
        quiet_split(adapter(copy), "train")


def test_bad_labels_and_ids(copy):
    folder = copy / "iemocap" / "target" / "1"
    np.save(folder / "val_label.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(
        DataError, match=r"val_label.npy: expected one-hot labels of shape \(N, 4\), got \(2, 3\)"
    ):
        quiet_split(adapter(copy), "train")
    np.save(folder / "val_label.npy", np.eye(4, dtype=np.float32)[:2])
    np.save(folder / "val_int2name.npy", np.array([[b"Ses01M_impro01_M000"]]))
    with pytest.raises(DataError, match="val_int2name.npy: 1 utterance ids for 2 labels"):
        quiet_split(adapter(copy), "train")


@pytest.mark.parametrize(
    "row", [[0, 0, 0, 0], [0, 7, 0, 0], [1, 1, 0, 0], [0.5, 0.5, 0, 0], [np.nan, 1, 0, 0]]
)
def test_mmin_labels_that_are_not_one_hot_name_the_first(copy, row):
    path = copy / "iemocap" / "target" / "1" / "val_label.npy"
    labels = np.load(path)
    labels[1] = row
    np.save(path, labels)
    with pytest.raises(DataError, match=rf"{path}: 1 label row\(s\) are not one-hot, the first at index 1: "):
        quiet_split(adapter(copy), "train")


def test_mult_labels_that_are_not_one_hot_name_the_first(tmp_path):
    path = tmp_path / "iemocap" / "iemocap_data.pkl"
    path.parent.mkdir()
    data = fixture.mult_pickle(True)
    data["test"]["labels"][2, 3] = [0, 0]
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(DataError, match=rf"{path}: test/labels: 1 label row\(s\) .* first at index \(2, 3\)"):
        adapter(tmp_path, format="mult").split("train")
    data["test"]["labels"][2, 3] = [np.nan, 1]
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(DataError, match=rf"{path}: test/labels: 1 bad label\(s\), the first at index 2"):
        adapter(tmp_path, format="mult").split("train")


def test_bad_audio_statistics(copy):
    path = copy / "iemocap" / "A" / "comparE_mean_std.h5"
    with h5py.File(path, "a") as f:
        del f["1"]["std"]
    with pytest.raises(DataError, match=f"{path}: expected group '1' with datasets 'mean' and 'std'"):
        quiet_split(adapter(copy), "train")
    assert len(quiet_split(adapter(copy, norm="none"), "train")) == 16  # statistics not needed


def test_mult_bad_labels_and_malicious_pickle(root, tmp_path):
    path = tmp_path / "iemocap" / "iemocap_data.pkl"
    path.parent.mkdir()
    data = fixture.mult_pickle(True)
    data["valid"]["labels"] = data["valid"]["labels"][:, :, 0]
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(DataError, match=rf"{path}: valid/labels must be \(N, 4, 2\)"):
        adapter(tmp_path, format="mult").split("train")
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    path.write_bytes(pickle.dumps({"train": Exploit()}))
    with pytest.raises(DataError, match=f"{path}: refused to unpickle global builtins.exec"):
        adapter(tmp_path, format="mult").split("train")
    assert not marker.exists()


# --- model and training ----------------------------------------------------------------------------
def test_model_on_an_mmin_batch(root):
    a = adapter(root, **SHORT)
    batch = collate([quiet_split(a, "train")[i] for i in range(3)])
    out = a.build_model(Iemocap.ModelParams(**TINY_MODEL), a.task.modalities)(batch.inputs)
    assert out.pred.shape == (3, 4)
    assert out.aux["audio"].shape == (3, 40, 8) and out.aux["vision"].shape == (3, 24, 8)


def test_iemocap_model_defaults_are_cggms():
    p = Iemocap.ModelParams()
    assert (p.layers, p.res_dropout, p.out_dropout, p.proj_dim, p.num_heads) == (4, 0.15, 0.2, 40, 5)


@pytest.mark.parametrize(
    ("dataset_params", "method"),
    [
        (SHORT, {"method": "joint"}),
        (SHORT, {"method": "unimodal", "method_params": {"modality": "vision"}}),
        ({"format": "mult", "emotion": "happy"}, {"method": "joint"}),
    ],
)
def test_one_epoch_writes_a_run_record(root, tmp_path, dataset_params, method):
    spec = validate_spec(
        {
            "dataset": "iemocap",
            "dataset_params": dataset_params,
            "epochs": 1,
            "batch_size": 8,
            "probe_every": 1,
            "model_params": TINY_MODEL,
            **method,
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(spec, results=tmp_path, data_root=root, progress=False)
    assert result.status == "done"
    final = json.loads((result.path / "final.json").read_text())
    assert {"accuracy", "f1_macro", "f1_weighted"} <= set(final["test"])


def test_h5_split_pickles_for_dataloader_workers(root):
    ds = quiet_split(adapter(root, **SHORT), "valid")
    first = ds[0]  # opens the h5 handles
    clone = pickle.loads(pickle.dumps(ds))  # what a spawned DataLoader worker receives
    assert clone._handles == {}
    again = clone[0]
    assert again[2] == first[2] and all(torch.equal(again[0][m], first[0][m]) for m in first[0])
