"""BraTS 2021: NIfTI conversion, the h5 adapter, Dice per volume, the DeepLabV3+ model, one joint epoch."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from mmbalance.common.spec import validate_spec
from mmbalance.datasets.brats import Brats, BratsParams, augment, convert_case, convert_cases, split_ids
from mmbalance.fixtures import brats as fixture
from mmbalance.models.segmentation import deeplab_multi_input
from mmbalance.training.data import DataError, DataMissingError
from mmbalance.training.runner import train

TINY = {"layers": [1, 1, 1, 1], "width": 8, "aspp_channels": 16, "decoder_channels": 32}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return fixture.write(tmp_path_factory.mktemp("data"))


def adapter(root: Path, **params) -> Brats:
    return Brats(BratsParams(crop=32, **params), root)


def copy_case(root: Path, tmp_path: Path) -> Path:
    case = tmp_path / "raw" / fixture.CASES[0]
    shutil.copytree(root / "BraTS2021_Training_Data" / fixture.CASES[0], case)
    return case


def test_conversion_writes_h5_and_split(root):
    splits = json.loads((root / "splits.json").read_text())
    assert sorted(sum(splits.values(), [])) == sorted(fixture.CASES)
    assert {k: len(v) for k, v in splits.items()} == {"train": 2, "valid": 1, "test": 1}
    assert splits == split_ids(fixture.CASES, 0.1, 0.2, seed=0)  # deterministic
    with h5py.File(root / "h5" / f"{fixture.CASES[0]}.h5") as f:
        image, label = f["image"][()], f["label"][()]
    assert image.shape == (4, *fixture.SHAPE) and label.shape == fixture.SHAPE
    assert set(np.unique(label)) == {0, 1, 2, 4}  # raw values kept, 4 -> 3 happens at load time
    raw = fixture.case_volumes(0)
    brain = raw["flair"] > 0
    for c, name in enumerate(("flair", "t1ce", "t1", "t2")):  # channel order and z-score inside the brain
        expected = (raw[name][brain] - raw[name][brain].mean()) / raw[name][brain].std()
        np.testing.assert_allclose(image[c][brain], expected, rtol=1e-4, atol=1e-4)
        assert np.all(image[c][~brain] == 0)


def test_splits_shapes_and_labels(root):
    a = adapter(root)
    a.verify()
    assert a.task.modalities == ("flair", "t1ce", "t1", "t2") and a.task.num_classes == 4
    test = a.split("test")
    assert len(test) == fixture.SHAPE[2]  # every slice of the one test volume
    x, y, item_id = test[3]
    assert {m: tuple(v.shape) for m, v in x.items()} == {m: (1, 32, 32) for m in a.task.modalities}
    assert y.shape == (32, 32) and y.dtype == torch.int64 and item_id.endswith("/003")
    train_set = a.split("train")
    assert len(train_set) == 2 and train_set.ids == json.loads((root / "splits.json").read_text())["train"]
    _, y, _ = train_set[0]
    assert y.max() > 0  # a tumour slice
    all_slices = adapter(root, train_items="slice", augment=False).split("train")
    train_cases = [fixture.CASES.index(v) for v in train_set.ids]
    n_tumour = sum(int((fixture.case_volumes(i)["seg"].max(axis=(0, 1)) > 0).sum()) for i in train_cases)
    assert len(all_slices) == n_tumour == 14
    values = torch.cat([all_slices[i][1].flatten() for i in range(len(all_slices))]).unique().tolist()
    assert values == [0, 1, 2, 3]  # ET relabelled 4 -> 3
    assert a.fingerprint("train") == adapter(root).fingerprint("train")
    assert a.fingerprint("train") != a.fingerprint("test")


def test_crop_is_centred(root):
    x, y, _ = adapter(root).split("valid")[5]
    vid = json.loads((root / "splits.json").read_text())["valid"][0]
    with h5py.File(root / "h5" / f"{vid}.h5") as f:
        np.testing.assert_array_equal(x["t1"][0].numpy(), f["image"][2, 4:36, 4:36, 5])


def test_cggm_folder_layout(root, tmp_path):
    splits = json.loads((root / "splits.json").read_text())
    for split, ids in splits.items():
        (tmp_path / split).mkdir()
        for vid in ids:
            shutil.copy(root / "h5" / f"{vid}.h5", tmp_path / split / f"{vid}_mri_norm2.h5")
    a = adapter(tmp_path)
    a.verify()
    assert len(a.split("train")) == 2 and a.split("test").ids[0].startswith(splits["test"][0])


def test_augment_keeps_image_and_label_aligned():
    np.random.seed(0)
    label = np.random.randint(0, 4, size=(6, 6))
    image = np.stack([label.astype(np.float32)] * 4)
    for _ in range(20):
        x, y = augment(image, label)
        assert x.shape == (4, 6, 6)
        noise = x[0] - y
        assert np.abs(noise).max() < 0.5  # the same rotation/flip moved image and label


def test_dice_per_volume_hand_computed(root):
    a = adapter(root)
    target = torch.zeros(3, 4, 4, dtype=torch.long)  # volume A: 2 slices, volume B: 1 slice
    target[0, :2, :2] = 3  # A: 4 ET voxels
    target[1, 0, 0] = 1  # A: 1 NCR voxel
    target[2, 0, :] = 2  # B: 4 ED voxels
    pred = torch.zeros(3, 4, 4, dtype=torch.long)
    pred[0, :2, :1] = 3  # A: 2 ET voxels, both right
    pred[1, 0, 0] = 2  # A: NCR predicted as ED
    pred[2, 0, :2] = 2  # B: 2 of the 4 ED voxels
    logits = torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).float()
    out = a.evaluate(logits, target, ["A/000", "A/001", "B/000"])
    # A: ET 2*2/(2+4) = 2/3; TC {1,3}: pred 2, target 5, overlap 2 -> 4/7;
    #    WT: pred 3, target 5, overlap 3 -> 6/8
    # B: ET and TC empty in both -> 1; WT 2*2/(2+4) = 2/3
    assert out["dice_ET"] == pytest.approx(100 * (2 / 3 + 1) / 2, abs=1e-4)
    assert out["dice_TC"] == pytest.approx(100 * (4 / 7 + 1) / 2, abs=1e-4)
    assert out["dice_WT"] == pytest.approx(100 * (6 / 8 + 2 / 3) / 2, abs=1e-4)
    assert out["dice_mean"] == pytest.approx((out["dice_ET"] + out["dice_TC"] + out["dice_WT"]) / 3)


# --- bad inputs -------------------------------------------------------------------------------------
def test_truncated_nifti_names_the_file(root, tmp_path):
    case = copy_case(root, tmp_path)
    t1 = case / f"{case.name}_t1.nii.gz"
    t1.write_bytes(t1.read_bytes()[:300])
    with pytest.raises(DataError, match=f"{t1.name}.*not a readable NIfTI"):
        convert_case(case)


def test_corrupt_gzip_names_the_file(root, tmp_path):
    case = copy_case(root, tmp_path)
    flair = case / f"{case.name}_flair.nii.gz"
    flair.write_bytes(gzip.compress(b"not a nifti header at all" * 20))
    with pytest.raises(DataError, match=flair.name):
        convert_case(case)


def test_missing_sequence_and_bad_labels(root, tmp_path):
    case = copy_case(root, tmp_path)
    (case / f"{case.name}_t2.nii.gz").unlink()
    with pytest.raises(DataMissingError, match=f"{case.name}_t2.nii.gz"):
        convert_case(case)
    case = copy_case(root, tmp_path / "b")
    seg = case / f"{case.name}_seg.nii.gz"
    labels = fixture.case_volumes(0)["seg"]
    labels[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(labels, np.eye(4)), seg)
    with pytest.raises(DataError, match=r"seg.nii.gz.*\[7\]"):
        convert_case(case)
    with pytest.raises(DataMissingError, match="no BraTS2021_XXXXX case folders"):
        convert_cases(
            tmp_path / "empty_does_not_exist_yet" if False else tmp_path / "b" / "raw" / case.name, tmp_path
        )


def test_missing_and_bad_h5(root, tmp_path):
    with pytest.raises(DataMissingError, match="splits.json"):
        adapter(tmp_path).verify()
    shutil.copytree(root / "h5", tmp_path / "h5")
    shutil.copy(root / "splits.json", tmp_path / "splits.json")
    vid = json.loads((root / "splits.json").read_text())["test"][0]
    (tmp_path / "h5" / f"{vid}.h5").unlink()
    with pytest.raises(DataMissingError, match=f"{vid}.h5"):
        adapter(tmp_path).verify()
    with h5py.File(tmp_path / "h5" / f"{vid}.h5", "w") as f:
        f["image"] = np.zeros((4, 40, 40, 3), np.float32)
    with pytest.raises(DataError, match=f"{vid}.h5.*'label'"):
        adapter(tmp_path).split("test")
    (tmp_path / "h5" / f"{vid}.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 50)
    with pytest.raises(DataError, match=f"{vid}.h5.*truncated"):
        adapter(tmp_path).split("test")
    with pytest.raises(DataError, match="smaller than the crop 64"):
        Brats(BratsParams(crop=64), root).split("valid")


# --- model and training --------------------------------------------------------------------------------
def test_model_shapes_and_cggm_classifier():
    torch.manual_seed(0)
    model = deeplab_multi_input(["flair", "t1ce"], 4, output_stride=8, **TINY).train()
    inputs = {m: torch.randn(2, 1, 32, 32) for m in model.modalities}
    out = model(inputs)
    assert out.pred.shape == (2, 4, 32, 32)
    assert out.features["flair"].shape == (2, 16, 4, 4)  # ASPP map at output stride 8
    assert model.encode(inputs)["t1ce"].shape == (2, 16, 4, 4)  # the base contract: encoder(x) -> feature
    assert out.aux["low_level/t1ce"].shape == (2, 256, 8, 8)  # ResNet layer1, stride 4
    classifier = model.unimodal_classifier("t1ce", 4)
    assert classifier(model.classifier_input(out, "t1ce")).shape == (2, 4, 8, 8)
    assert classifier.out_layer.weight.shape == model.out_layer.weight.shape  # CGGM's cosine needs this
    assert model.encoder_parameters("flair")  # scaling by structure finds the encoder
    with pytest.raises(ValueError, match="batch of 1"):
        model({m: torch.randn(1, 1, 32, 32) for m in model.modalities})


def test_joint_trains_one_epoch(root, tmp_path):
    spec = validate_spec({"dataset": "brats", "dataset_params": {"crop": 32}, "model_params": TINY,
                          "epochs": 1, "batch_size": 2, "probe_every": 1})  # fmt: skip
    result = train(spec, results=tmp_path, data_root=root.parent, device="cpu", progress=False)
    assert result.status == "done"
    assert (result.path / "final.json").is_file() and (result.path / "metrics.jsonl").is_file()
    test = result.final["test"]
    assert set(test) >= {"dice_ET", "dice_TC", "dice_WT", "dice_mean", "loss"}
    assert 0 <= test["dice_mean"] <= 100


@pytest.mark.parametrize(
    ("train_cases", "batch_size", "message"),
    [
        (1, 2, r"1 training volume with train_items='volume'.*or use train_items='slice'"),
        (3, 2, r"3 training items in batches of 2 leave a final batch of 1.*use batch_size=3"),
    ],
)
def test_training_batches_of_one_are_refused_before_anything_is_written(root, tmp_path, train_cases,
                                                                        batch_size, message):  # fmt: skip
    listing = {"train": fixture.CASES[:train_cases], "valid": fixture.CASES[3:], "test": fixture.CASES[3:]}
    (root / f"split{train_cases}.json").write_text(json.dumps(listing))
    spec = validate_spec({"dataset": "brats", "dataset_params": {"crop": 32, "split_file": f"split{train_cases}.json"},
                          "model_params": TINY, "epochs": 1, "batch_size": batch_size})  # fmt: skip
    with pytest.raises(DataError, match=message):
        train(spec, results=tmp_path, data_root=root.parent, device="cpu", progress=False)
    assert not list((tmp_path / "runs").glob("*"))


def test_preset_is_a_valid_spec():
    from mmbalance.common.spec import deep_merge
    from mmbalance.scaleout.sweep import load_preset

    preset = load_preset("brats")
    cggm = preset.pop("method_overrides")["cggm"]
    spec = validate_spec(deep_merge(deep_merge(preset, cggm), {"method": "cggm"}))
    assert spec.optim.name == "sgd" and spec.schedule.name == "cosine" and spec.method_params["rho"] == 1.0


def test_prepare_script_resumes_and_reports_errors(root, tmp_path, capsys):
    import runpy

    main = runpy.run_path(str(Path(__file__).parent.parent / "scripts" / "prepare_brats.py"))["main"]
    raw = root / "BraTS2021_Training_Data"
    assert main([str(raw), str(tmp_path / "brats"), "--compression", "none"]) == 0
    first = tmp_path / "brats" / "h5" / f"{fixture.CASES[0]}.h5"
    with h5py.File(first) as f:
        assert f["image"].compression is None and f["image"].chunks == (4, 40, 40, 1)
    stamp = first.stat().st_mtime_ns
    assert main([str(raw), str(tmp_path / "brats")]) == 0  # a second run keeps the converted files
    assert first.stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "brats" / "splits.json").read_text()) == json.loads(
        (root / "splits.json").read_text()
    )
    assert main([str(root), str(tmp_path / "other")]) == 1  # the parent of the case folders holds no case
    assert "no BraTS2021_XXXXX case folders" in capsys.readouterr().err
