"""UPMC-Food101: every layout, splits, feature extraction with tiny BERT/ViT, bad inputs, one joint epoch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import mmbalance.datasets.food101 as food
from mmbalance.common.spec import validate_spec
from mmbalance.datasets.food101 import Food101, Food101Params, extract_features, ingredients_tokens
from mmbalance.fixtures import food101 as fixture
from mmbalance.training.data import DataError, DataMissingError
from mmbalance.training.runner import train

TINY_MODEL = {"layers": 2, "cls_layers": 1}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return fixture.write(tmp_path_factory.mktemp("data"))


def models(root: Path) -> dict[str, str]:
    return {
        "text_model": str(root / "tiny_models" / "bert"),
        "image_model": str(root / "tiny_models" / "vit"),
    }


def adapter(root: Path, **params) -> Food101:
    return Food101(Food101Params(**params), root)


def copy(root: Path, tmp_path: Path, *names: str) -> Path:
    for name in names:
        src = root / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    return tmp_path


# --- layouts ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "layout, n_train, text_has",
    [("json", 14, "cinnamon"), ("texts_txt", 14, "cinnamon"), ("titles_csv", 15, "recipe")],
)
def test_every_layout_loads(root, layout, n_train, text_has):
    a = adapter(root, layout=layout, mode="end_to_end", **models(root))
    a.verify()
    assert a.task.class_names == tuple(fixture.CLASSES) and a.task.num_classes == 3
    assert a.task.modalities == ("image", "text")
    sizes = {s: len(a.split(s)) for s in ("train", "valid", "test")}
    assert sizes == {"train": n_train - 3, "valid": 3, "test": 6}  # one valid sample per class
    for s in ("train", "valid", "test"):
        ds = a.split(s)
        for sample, label in zip(ds.samples, ds.labels.tolist(), strict=True):
            assert a.task.class_names[label] == sample.label and sample.label in sample.id
    apple = next(s for s in a.split("train").samples if s.label == "apple_pie")
    assert text_has in apple.text and "serves" not in apple.text  # bmmal keeps the ingredient tokens only
    x, y, item_id = a.split("test")[0]
    assert x["image"].shape == (3, 32, 32) and x["text"].shape == (3, 50) and x["text"].dtype == torch.long
    assert x["text"][0, 0] == a.split("test").tokenizer.cls_token_id and x["text"][1].sum() > 2


def test_full_text_and_headerless_csv(root):
    full = adapter(root, layout="texts_txt", txt_text="full").raw_samples("train")
    assert len(full) == 15 and "serves" in full[0].text  # the page without ingredients is kept
    titles = adapter(root, layout="titles_csv").raw_samples("test")  # test csv has a header row
    assert len(titles) == 6 and titles[0].text == "apple cinnamon recipe"
    assert ingredients_tokens("Home. INGREDIENTS: 2 eggs, flour; Ingredients-list salt") == ["list", "salt"]


def test_holdout_is_deterministic_and_disjoint(root):
    a, b = adapter(root, layout="json"), adapter(root, layout="json", split_seed=1)
    train_ids = {s.id for s in a.split_samples("train")[0]}
    valid_ids = {s.id for s in a.split_samples("valid")[0]}
    assert not train_ids & valid_ids and len(train_ids | valid_ids) == 14
    assert valid_ids == {s.id for s in adapter(root, layout="json").split_samples("valid")[0]}
    assert valid_ids != {s.id for s in b.split_samples("valid")[0]}
    assert {s.label for s in a.split_samples("valid")[0]} == set(fixture.CLASSES)  # stratified
    cggm = adapter(root, layout="json", protocol="cggm_test_as_valid")
    assert [s.id for s in cggm.split_samples("valid")[0]] == [s.id for s in cggm.split_samples("test")[0]]


def test_json_absolute_paths_survive_a_move(root, tmp_path):
    copy(root, tmp_path, "images", "train.json")
    rows = json.loads((root / "test.json").read_text())
    assert Path(rows[0]["img_path"]).is_absolute()
    for r in rows:
        r["img_path"] = "/gone/elsewhere/UPMC_Food101/" + r["img_path"][r["img_path"].index("images/") :]
    (tmp_path / "test.json").write_text(json.dumps(rows))
    samples = adapter(tmp_path, layout="json").raw_samples("test")
    assert samples[0].image == tmp_path / "images" / "test" / "apple_pie" / "apple_pie_100.jpg"


def test_fingerprint_decodes_no_image(root, monkeypatch):
    a = adapter(root, layout="titles_csv", mode="end_to_end", **models(root))
    expected = a.fingerprint("train")
    monkeypatch.setattr(food, "load_image", lambda path: pytest.fail(f"decoded {path}"))
    assert (
        adapter(root, layout="titles_csv", mode="end_to_end", **models(root)).fingerprint("train") == expected
    )
    assert expected != a.fingerprint("valid")


# --- features -----------------------------------------------------------------------------------------
def test_features_match_the_tiny_encoders(root):
    from transformers import AutoModel, AutoTokenizer

    a = adapter(root)  # auto -> json, features mode, features_json.h5 from the fixture
    assert a.layout == "json" and a.features_path.name == "features_json.h5"
    x, y, item_id = a.split("test")[0]
    assert x["text"].shape == (50, 32) and x["image"].shape == (5, 24)  # BERT tokens, ViT CLS + 2x2 patches
    sample = a.split("test").samples[0]
    tokenizer = AutoTokenizer.from_pretrained(models(root)["text_model"])
    bert = AutoModel.from_pretrained(models(root)["text_model"]).eval()
    enc = tokenizer([sample.text], padding="max_length", max_length=50, truncation=True, return_tensors="pt")
    with torch.no_grad():
        expected = bert(**enc).last_hidden_state[0]
    torch.testing.assert_close(x["text"], expected, atol=2e-2, rtol=1e-2)  # stored as float16


def test_extraction_resumes_after_a_failure(root, tmp_path, monkeypatch):
    copy(root, tmp_path, "images", "texts")
    real_load, calls = food.load_image, []

    def failing(path):
        calls.append(path)
        if len(calls) > 8:  # the first batch of 8 goes through, the second fails
            raise DataError(f"{path}: simulated failure")
        return real_load(path)

    monkeypatch.setattr(food, "load_image", failing)
    out = tmp_path / "features_titles_csv.h5"
    with pytest.raises(DataError, match="simulated"):
        extract_features(tmp_path, "titles_csv", **models(root), out=out, batch_size=8, progress=False)
    with h5py.File(tmp_path / "features_titles_csv.h5.partial") as f:
        assert f["train"]["done"][()].sum() == 8 and not out.exists()
    monkeypatch.setattr(food, "load_image", real_load)
    calls.clear()
    extract_features(tmp_path, "titles_csv", **models(root), out=out, batch_size=8, progress=False)
    with h5py.File(out) as f:
        assert f["train"]["done"][()].all() and f["train"]["image"].shape == (15, 5, 24)
        assert f["test"]["text"].dtype == np.float16 and f.attrs["layout"] == "titles_csv"
    a = adapter(tmp_path, layout="titles_csv")
    assert len(a.split("train")) == 12 and a.split("valid")[0][0]["text"].shape == (50, 32)


# --- bad inputs -------------------------------------------------------------------------------------------
def test_missing_files_are_named(root, tmp_path):
    with pytest.raises(DataMissingError, match="train.json"):
        adapter(tmp_path / "nothing").verify()
    copy(root, tmp_path, "images", "texts", "texts_txt", "train.json", "test.json")
    with pytest.raises(DataMissingError, match="features_json.h5"):
        adapter(tmp_path).verify()
    (tmp_path / "images" / "train" / "sushi" / "sushi_1.jpg").unlink()
    for layout in ("json", "titles_csv"):  # texts_txt enumerates the images, so nothing is missing there
        with pytest.raises(DataMissingError, match=r"images/train/sushi/sushi_1.jpg: image of sample"):
            adapter(tmp_path, layout=layout).raw_samples("train")


def test_class_without_text_rows(root, tmp_path):
    copy(root, tmp_path, "images", "texts", "texts_txt")
    csv = tmp_path / "texts" / "train_titles.csv"
    csv.write_text("".join(line + "\n" for line in csv.read_text().splitlines() if "pizza" not in line))
    with pytest.raises(DataError, match=r"train_titles.csv: no text rows for class folder .*pizza"):
        adapter(tmp_path, layout="titles_csv").raw_samples("train")
    shutil.rmtree(tmp_path / "texts_txt" / "sushi")
    with pytest.raises(DataError, match=r"texts_txt/sushi: no text file for any of the 5 images"):
        adapter(tmp_path, layout="texts_txt").raw_samples("train")
    csv.write_text("apple_pie_0.jpg,only two columns\n")
    with pytest.raises(DataError, match="train_titles.csv: line 2 has 2 column"):
        adapter(tmp_path, layout="titles_csv").raw_samples("train")


def test_bad_json_and_unreadable_image(root, tmp_path):
    copy(root, tmp_path, "images", "train.json")
    (tmp_path / "test.json").write_text(json.dumps([{"id": "x", "label": "pizza"}]))
    with pytest.raises(DataError, match=r"test.json: sample 0 lacks \['text_tokens', 'img_path'\]"):
        adapter(tmp_path, layout="json").raw_samples("test")
    (tmp_path / "test.json").write_text("[{")
    with pytest.raises(DataError, match="test.json: not valid JSON"):
        adapter(tmp_path, layout="json").raw_samples("test")
    shutil.copy(root / "test.json", tmp_path / "test.json")
    broken = tmp_path / "images" / "train" / "pizza" / "pizza_0.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError, match="pizza_0.jpg: unreadable image"):
        food.load_image(broken)


def test_bad_features_file(root, tmp_path):
    copy(root, tmp_path, "images", "train.json", "test.json")
    (tmp_path / "features_json.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(DataError, match="features_json.h5: not a readable h5"):
        adapter(tmp_path).split("train")
    with h5py.File(tmp_path / "features_json.h5", "w") as f:
        f.create_group("train").create_dataset("ids", data=["nope"], dtype=h5py.string_dtype())
    with pytest.raises(DataError, match="features_json.h5: 11 sample.*no features"):
        adapter(tmp_path).split("train")


# --- model and training ----------------------------------------------------------------------------------
def test_end_to_end_model_freezes_the_backbones(root):
    a = adapter(root, layout="json", mode="end_to_end", **models(root))
    model = a.build_model(a.ModelParams(**TINY_MODEL), a.task.modalities).train()
    assert not model.encoders["text"].backbone.training  # frozen extractor: dropout stays off
    trainable = {id(p) for p in model.encoder_parameters("text")}
    assert trainable and not any(id(p) in trainable for p in model.encoders["text"].backbone.parameters())
    from mmbalance.training.data import collate

    batch = collate([a.split("train")[i] for i in range(2)])
    out = model(batch.inputs)
    assert out.pred.shape == (2, 3) and out.aux["image"].shape == (2, 5, 40)
    classifier = model.unimodal_classifier("text", 3)
    assert classifier(model.classifier_input(out, "text")).shape == (2, 3)


@pytest.mark.parametrize("mode", ["features", "end_to_end"])
def test_joint_trains_one_epoch(root, tmp_path, mode):
    spec = validate_spec({"dataset": "food101", "dataset_params": {"mode": mode, **models(root)},
                          "model_params": TINY_MODEL, "epochs": 1, "batch_size": 4, "probe_every": 1,
                          "optim": {"name": "adamw", "lr": 1e-3}})  # fmt: skip
    result = train(spec, results=tmp_path, data_root=root.parent, device="cpu", progress=False)
    assert result.status == "done" and (result.path / "final.json").is_file()
    assert set(result.final["test"]) >= {"accuracy", "f1_macro", "loss"}
    assert set(result.final["test"]["probe"]) == {"image", "text"}


def test_preset_is_a_valid_spec():
    from mmbalance.common.spec import deep_merge
    from mmbalance.scaleout.sweep import load_preset

    preset = load_preset("food101")
    cggm = preset.pop("method_overrides")["cggm"]
    spec = validate_spec(deep_merge(deep_merge(preset, cggm), {"method": "cggm"}))
    assert spec.batch_size == 128 and spec.optim.clip_grad_norm == 0.8 and spec.method_params["lam"] == 0.05


def test_task_without_files_and_mismatched_features(root, tmp_path):
    task = adapter(tmp_path / "absent").task
    assert (
        task.num_classes == 101 and task.class_names[0] == "apple_pie" and task.class_names[-1] == "waffles"
    )
    with pytest.raises(DataError, match=r"features_json.h5: extracted with other settings.*max_text_length"):
        adapter(root, max_text_length=40).split("train")


def test_extract_script(root, tmp_path, capsys, monkeypatch):
    import runpy

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # what the script sets; restored after the test

    main = runpy.run_path(str(Path(__file__).parent.parent / "scripts" / "extract_food101_features.py"))[
        "main"
    ]
    copy(root, tmp_path, "images", "texts_txt")
    m = models(root)
    args = [
        str(tmp_path),
        "--text-model",
        m["text_model"],
        "--image-model",
        m["image_model"],
        "--batch-size",
        "4",
    ]
    assert main(args) == 0
    with h5py.File(tmp_path / "features_texts_txt.h5") as f:  # layout detected, default name
        assert f["train"]["text"].shape == (14, 50, 32) and f.attrs["txt_text"] == "ingredients"
    assert main([str(tmp_path), "--text-model", "no-such/model-anywhere"]) == 2
    assert "not found locally" in capsys.readouterr().err
