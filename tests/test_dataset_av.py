"""CREMA-D, Kinetics-Sounds and AVE adapters on fixtures in their released layouts: shapes, labels, splits,
frame sampling, one clear error per malformed file, and the OGM-GE ResNet-18 model."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mmbalance.datasets._av import holdout, pick_frames
from mmbalance.datasets.ave import Ave, AveParams
from mmbalance.datasets.cremad import Cremad, CremadParams
from mmbalance.datasets.kinetics_sounds import KineticsSounds, KineticsSoundsParams
from mmbalance.fixtures import ave, cremad, kinetics_sounds
from mmbalance.models.resnet_av import ResNetAVParams
from mmbalance.training.data import DataError, DataMissingError, collate

SMALL = {"image_size": 32}
ADAPTERS = {
    "cremad": (Cremad, CremadParams, cremad),
    "kinetics_sounds": (KineticsSounds, KineticsSoundsParams, kinetics_sounds),
    "ave": (Ave, AveParams, ave),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("data")
    for _, _, fixture in ADAPTERS.values():
        fixture.write(base)
    return base


@pytest.fixture
def copy(root, tmp_path):
    """A writable copy of one dataset's fixture, for corrupting files."""

    def make(name: str) -> Path:
        return Path(shutil.copytree(root / name, tmp_path / name))

    return make


def adapter(name: str, folder: Path, **params):
    cls, params_cls, _ = ADAPTERS[name]
    return cls(params_cls(**{**SMALL, **params}), folder)


@pytest.mark.parametrize(
    ("name", "sizes", "audio_shape", "frames"),
    [
        ("cremad", {"train": 12, "valid": 6, "test": 6}, (1, 257, 188), 1),  # OGM-GE: 3 s, n_fft 512, hop 353
        ("kinetics_sounds", {"train": 8, "valid": 4, "test": 4}, (1, kinetics_sounds.FRAMES, 128), 3),
        ("ave", {"train": 12, "valid": 4, "test": 4}, (1, 257, ave.STEPS), 4),  # train: a duplicate dropped
    ],
)
def test_splits_shapes_and_labels(root, name, sizes, audio_shape, frames):
    a = adapter(name, root / name)
    a.verify()
    for split, n in sizes.items():
        ds = a.split(split)
        assert len(ds) == n, split
        inputs, label, clip = ds[0]
        assert tuple(inputs["audio"].shape) == audio_shape
        assert tuple(inputs["visual"].shape) == (3, frames, 32, 32)
        assert 0 <= int(label) < a.task.num_classes and isinstance(clip, str)
    batch = collate([a.split("test")[i] for i in range(2)])
    assert batch.inputs["visual"].shape[0] == 2
    assert set(a.split("train").ids).isdisjoint(a.split("valid").ids)


def test_labels_follow_the_released_class_orders(root):
    c = adapter("cremad", root / "cremad")
    rows = dict(c.rows("train"))
    assert all(
        CLASS == c.class_names[label] for clip, label in rows.items() for CLASS in [clip.split("_")[2]]
    )
    assert c.class_names == ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
    a = adapter("ave", root / "ave")
    assert a.task.num_classes == 28 and a.class_names[:3] == (
        "Church bell",
        "Male speech, man speaking",
        "Bark",
    )
    assert adapter("kinetics_sounds", root / "kinetics_sounds").task.num_classes == 31


def test_test_as_valid_protocol_and_holdout(root):
    c = adapter("cremad", root / "cremad", protocol="test_as_valid")
    assert c.split("valid").ids == c.split("test").ids and len(c.split("train")) == 18
    rows = [(f"c{i}", i % 3) for i in range(30)]
    train, valid = holdout(rows, 0.1, 0)
    assert len(valid) == 3 and {r[1] for r in valid} == {0, 1, 2}  # one per class: round(10 * 0.1)
    assert holdout(rows, 0.1, 0) == (train, valid) and holdout(rows, 0.1, 1) != (train, valid)


def test_frame_sampling_per_segment():
    assert pick_frames(10, 3, train=False) == [1, 4, 7]  # seg = 3, middle = 1
    torch.manual_seed(0)
    picks = pick_frames(10, 3, train=True)
    assert [p // 3 for p in picks] == [0, 1, 2]


def test_fingerprint_reads_ids_and_labels_only(root, copy):
    folder = copy("cremad")
    a = adapter("cremad", folder)
    before = a.fingerprint("test")
    for wav in (folder / "AudioWAV").glob("*.wav"):
        wav.write_bytes(b"garbage")  # features are never read for the fingerprint
    assert adapter("cremad", folder).fingerprint("test") == before


# --- one clear error per malformed file ---------------------------------------------------------------
def _first_clip(folder: Path, list_name: str, sep: str, field: int = 0) -> str:
    return (folder / list_name).read_text().splitlines()[0].split(sep)[field]


@pytest.mark.parametrize(
    ("name", "break_it", "message"),
    [
        ("cremad", lambda f: (f / "train.csv").unlink(), "train.csv"),
        ("cremad", lambda f: (f / "train.csv").write_text("1001_IEO_XYZ_XX,XYZ\n"), "unknown emotion 'XYZ'"),
        ("cremad", lambda f: (f / "test.csv").write_text("only_one_field\n"), "line 1"),
        ("cremad", lambda f: (f / "test.csv").write_text("\n"), "no samples"),
        ("cremad", lambda f: (f / "test.csv").write_bytes(b"\xff\xfe\x00bad"), "not a UTF-8 text file"),
        (
            "kinetics_sounds",
            lambda f: (f / "my_test.txt").write_text("clip,10,31\n"),
            "label 31 outside 0..30",
        ),
        ("kinetics_sounds", lambda f: (f / "my_test.txt").write_text("clip,10,x\n"), "invalid literal"),
        (
            "ave",
            lambda f: (f / "testSet.txt").write_text("Piano&vid&good&0&10\n"),
            "unknown category 'Piano'",
        ),
        ("ave", lambda f: (f / "valSet.txt").write_text("Bark&&good&0&10\n"), "no VideoID"),
    ],
)
def test_bad_list_files_name_file_and_line(root, copy, name, break_it, message):
    folder = copy(name)
    break_it(folder)
    with pytest.raises(DataError, match=message) as e:
        a = adapter(name, folder)
        a.verify()
        for split in ("train", "valid", "test"):
            a.split(split)
    assert "\n" not in str(e.value).splitlines()[0] and str(folder) in str(e.value)


def test_missing_clip_files_are_counted_or_skipped(root, copy):
    folder = copy("cremad")
    clip = _first_clip(folder, "test.csv", ",")
    (folder / "AudioWAV" / f"{clip}.wav").unlink()
    with pytest.raises(
        DataMissingError, match=r"1 audio file\(s\) / frame folder\(s\) of the test list missing"
    ):
        adapter("cremad", folder).split("test")
    assert len(adapter("cremad", folder, skip_missing=True).split("test")) == 5


def _corrupt_audio(name: str, folder: Path) -> Path:
    if name == "cremad":
        path = folder / "AudioWAV" / f"{_first_clip(folder, 'test.csv', ',')}.wav"
    elif name == "kinetics_sounds":
        path = folder / "test_spec" / f"{_first_clip(folder, 'my_test.txt', ',')}.npy"
    else:
        path = folder / "Audio-1004-SE" / f"{_first_clip(folder, 'testSet.txt', '&', 1)}.pkl"
    path.write_bytes(path.read_bytes()[:20])  # truncated
    return path


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_truncated_audio_is_a_one_line_error(root, copy, name):
    folder = copy(name)
    path = _corrupt_audio(name, folder)
    with pytest.raises(DataError) as e:
        adapter(name, folder).split("test")[0]
    assert str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("name", "payload", "message"),
    [
        ("kinetics_sounds", lambda: np.zeros((2, 3, 4), np.float32), "2-D"),
        ("ave", lambda: {"spec": np.zeros((257, 4))}, "pickled float array"),
        (
            "ave",
            lambda: np.full((257, 4), np.nan, np.float32),
            r"contains NaN at index \(0, 0\) \(1028 non-finite",
        ),
    ],
)
def test_wrong_audio_content(root, copy, name, payload, message):
    folder = copy(name)
    if name == "kinetics_sounds":
        np.save(folder / "test_spec" / f"{_first_clip(folder, 'my_test.txt', ',')}.npy", payload())
    else:
        path = folder / "Audio-1004-SE" / f"{_first_clip(folder, 'testSet.txt', '&', 1)}.pkl"
        path.write_bytes(pickle.dumps(payload()))
    with pytest.raises(DataError, match=message):
        adapter(name, folder).split("test")[0]


def test_nan_in_each_audio_format_names_file_and_index(root, copy):
    """Before: "expected a finite 2-D (F, T) spectrogram, got shape (257, 188)" for all three."""
    from mmbalance.fixtures._media import fmt_chunk, riff

    cases = {}
    folder = copy("cremad")
    wav = folder / "AudioWAV" / f"{_first_clip(folder, 'test.csv', ',')}.wav"
    samples = np.zeros(8000, "<f4")
    samples[123] = np.nan
    wav.write_bytes(riff([fmt_chunk(16000, 1, 32, 3), (b"data", samples.tobytes())]))
    cases["cremad"] = (folder, wav, r"the WAV data contains NaN at index \(123, 0\)")
    folder = copy("kinetics_sounds")
    npy = folder / "test_spec" / f"{_first_clip(folder, 'my_test.txt', ',')}.npy"
    fbank = np.load(npy)
    fbank[5, 7] = np.inf
    np.save(npy, fbank)
    cases["kinetics_sounds"] = (folder, npy, r"the spectrogram of clip '.*' contains \+inf at index \(5, 7\)")
    for name, (folder, path, message) in cases.items():
        with pytest.raises(DataError, match=message) as e:
            adapter(name, folder).split("test")[0]
        assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_pickle_with_code_is_refused(root, copy):
    folder = copy("ave")
    path = folder / "Audio-1004-SE" / f"{_first_clip(folder, 'testSet.txt', '&', 1)}.pkl"
    path.write_bytes(pickle.dumps(Path("x")))  # any global outside numpy / builtins containers
    with pytest.raises(DataError, match="pathlib"):
        adapter("ave", folder).split("test")[0]


def test_bad_frames(root, copy):
    folder = copy("cremad")
    clip = _first_clip(folder, "test.csv", ",")
    frames = sorted((folder / "Image-01-FPS" / clip).iterdir())
    for f in frames:
        f.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="unreadable image"):
        adapter("cremad", folder).split("test")[0]
    for f in frames:
        f.unlink()
    with pytest.raises(DataError, match="0 frame"):
        adapter("cremad", folder).split("test")[0]


# --- the paper model -----------------------------------------------------------------------------------
def test_resnet_av_model_is_resnet18_with_late_concat(root):
    a = adapter("cremad", root / "cremad")
    model = a.build_model(ResNetAVParams(), ["audio", "visual"])
    audio = model.encoders["audio"]
    assert audio.body[0].in_channels == 1 and model.encoders["visual"].body[0].in_channels == 3
    n_params = sum(p.numel() for p in audio.parameters())
    assert n_params == 11_170_240  # torchvision ResNet-18 without fc (11,176,512) with a 1-channel conv1
    assert model.head.in_features == 1024 and model.head.out_features == 6
    tiny = a.build_model(ResNetAVParams(width=8), ["audio", "visual"])
    batch = collate([a.split("test")[i] for i in range(2)])
    out = tiny(batch.inputs)
    assert out.pred.shape == (2, 6) and out.features["visual"].shape == (2, 64)
    shares = tiny.unimodal_logits(out.features)  # OGM-GE's out_a / out_v
    torch.testing.assert_close(shares["audio"] + shares["visual"], out.pred)


def test_one_epoch_of_ogm_ge_on_cremad(root, tmp_path):
    from mmbalance.common.spec import validate_spec
    from mmbalance.training.runner import train

    spec = validate_spec({"dataset": "cremad", "dataset_params": SMALL, "model_params": {"width": 8},
                          "method": "ogm_ge", "method_params": {"params": "conv"}, "epochs": 1,
                          "batch_size": 4, "probe_every": 1})  # fmt: skip
    result = train(spec, results=tmp_path, data_root=root, device="cpu", progress=False)
    assert result.status == "done", result.reason
    assert 0 <= result.final["test"]["accuracy"] <= 100


def test_kinetics_sounds_in_ogm_ges_avdataset_layout(tmp_path):
    folder = kinetics_sounds.write_ogm_ge(tmp_path)
    a = adapter("kinetics_sounds", folder, layout="audio_spec_pkl")
    a.verify()
    assert a.class_names == kinetics_sounds.CLASS_NAMES  # stat.txt sorted, as AVDataset does
    assert [len(a.split(s)) for s in ("train", "valid", "test")] == [8, 4, 4]
    inputs, label, clip = a.split("test")[0]
    assert tuple(inputs["audio"].shape) == (1, kinetics_sounds.FRAMES, 128)
    assert clip == f"kstest{int(label)}0_000010_000020"
    (folder / "my_test.txt").write_text("playing kazoo,x\n")
    with pytest.raises(DataError, match=r"my_test.txt: line 1 .*class 'playing kazoo' is not in stat.txt"):
        adapter("kinetics_sounds", folder, layout="audio_spec_pkl").split("test")


def test_kinetics_sounds_list_names_are_a_parameter(root, copy):
    folder = copy("kinetics_sounds")
    for split in ("train", "test"):
        (folder / f"my_{split}.txt").rename(folder / f"ks_{split}_list.csv")
    with pytest.raises(DataMissingError, match="my_train.txt"):
        adapter("kinetics_sounds", folder).verify()
    a = adapter("kinetics_sounds", folder, list_file="ks_{split}_list.csv")
    assert len(a.split("test")) == 4


def test_cremad_in_balancebenchmarks_pt_layout(tmp_path):
    folder = cremad.write_balancebenchmark(tmp_path)
    params = {"audio_format": "pt", "audio_dir": "audio_pt", "frames_dir": "visual"}
    a = adapter("cremad", folder, **params)
    a.verify()
    inputs, label, clip = a.split("test")[0]
    assert tuple(inputs["audio"].shape) == (1, 38, 128)  # the stored tensor, unsqueezed as BalanceBenchmark
    pt = folder / "audio_pt" / f"{clip}.pt"
    torch.save({"not": "a tensor"}, pt)
    with pytest.raises(DataError, match=r"\.pt: expected a float tensor \(F, T\), got dict"):
        adapter("cremad", folder, **params).split("test")[0]
    pt.write_bytes(pickle.dumps(Path("x")))  # a plain pickle naming a class: torch's weights_only refuses it
    with pytest.raises(DataError, match=r"\.pt: not a readable torch tensor file") as e:
        adapter("cremad", folder, **params).split("test")[0]
    assert "\n" not in str(e.value)
