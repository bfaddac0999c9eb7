"""CH-SIMS from MMSA's pickle: the layout (SIMS/Processed/unaligned_39.pkl), the per-modality labels kept and
checked, MMSA's SIMS metrics (hand-computed), the preset, the report column of each modality's own label, and
the LNLN paper table holding only the README's numbers."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mmbalance.common.spec import compose, validate_spec
from mmbalance.datasets.sims import Sims, SimsParams
from mmbalance.fixtures import mosi as mosi_fixture
from mmbalance.fixtures import sims as fixture
from mmbalance.reporting.modality_report import label_rank_corr
from mmbalance.reporting.paper import load_table
from mmbalance.training.data import DataError, DataMissingError
from mmbalance.training.metrics import sims_classes, sims_metrics


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return fixture.write(tmp_path_factory.mktemp("data"))


def test_mmsa_layout_shapes_and_labels(root):
    a = Sims(SimsParams(), root)
    assert a.path == root / "SIMS" / "Processed" / "unaligned_39.pkl"
    assert a.input_dims() == {"text": 768, "audio": 33, "vision": 709}
    train = a.split("train")
    assert len(train) == mosi_fixture.SIZES["train"] and a.task.kind == "regression"
    raw = pickle.loads(a.path.read_bytes())["train"]
    assert torch.equal(train.target[:, 0], torch.from_numpy(raw["regression_labels"]))
    for m, key in (("text", "T"), ("audio", "A"), ("vision", "V")):
        assert torch.equal(train.modality_targets[m], torch.from_numpy(raw[f"regression_labels_{key}"]))
    assert not torch.equal(train.modality_targets["text"], train.modality_targets["vision"])
    assert (train.inputs["audio"] == 0).any() and torch.isfinite(train.inputs["audio"]).all()  # -inf -> 0


def test_word_ids_for_bert(root):
    text = Sims(SimsParams(text="text_bert"), root).split("valid").inputs["text"]
    assert text.dtype == torch.int64 and text.shape[1:] == (3, fixture.LENGTHS["text"])
    assert (text[:, 0, 0] == 101).all() and (text[:, 1] == 0).any()  # [CLS] first; padded rows


def test_missing_file_names_the_layout(tmp_path):
    with pytest.raises(DataMissingError, match="SIMS/Processed/unaligned_39.pkl"):
        Sims(SimsParams(), tmp_path / "sims").verify()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda p: p.pop("regression_labels_A"),
            r"lacks the per-modality label\(s\) \['regression_labels_A'\]",
        ),
        (
            lambda p: p.__setitem__("regression_labels_V", p["regression_labels_V"] * 3),
            "regression_labels_V: .*bad label",
        ),
        (
            lambda p: p.__setitem__("regression_labels", p["regression_labels"] - 2),
            "regression_labels: .*bad label",
        ),
    ],
)
def test_bad_labels_are_named(tmp_path, change, message):
    data = fixture.sims_pickle()
    change(data["test"])
    folder = tmp_path / "sims"
    folder.mkdir()
    (folder / "unaligned_39.pkl").write_bytes(pickle.dumps(data))
    with pytest.raises(DataError, match=message):
        Sims(SimsParams(), folder).split("train")


def test_sims_classes_follow_mmsa_edges():
    # (-1.01, -0.7], (-0.7, -0.1], (-0.1, 0.1], (0.1, 0.7], (0.7, 1.01]; float32 labels on an edge stay below it
    v = np.array([-1.0, -0.7, -0.6, -0.1, 0.0, 0.1, 0.2, 0.7, 0.8, 1.0], dtype=np.float32)
    assert sims_classes(v, 5).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert sims_classes(v, 3).tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert sims_classes(v, 2).tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]


def test_sims_metrics_by_hand():
    y = torch.tensor([-0.8, -0.2, 0.0, 0.4, 1.0])
    p = torch.tensor([-1.5, 0.2, 0.0, 0.6, 0.6])  # -1.5 is clipped to -1 first
    m = sims_metrics(p, y)
    # classes (5): y 0 1 2 3 4, p 0 3 2 3 3 -> 3/5; (3): y 0 0 1 2 2, p 0 2 1 2 2 -> 4/5; (2): y 0 0 0 1 1, p 0 1 0 1 1
    assert (
        m["acc5"] == pytest.approx(60.0)
        and m["acc3"] == pytest.approx(80.0)
        and m["acc2"] == pytest.approx(80.0)
    )
    # weighted F1 of (2): class 0 (3 true): tp 2, predicted 2 -> 2*2/5; class 1 (2 true): tp 2, predicted 3 -> 4/5
    assert m["f1"] == pytest.approx(100 * (3 * 0.8 + 2 * 0.8) / 5)
    assert m["mae"] == pytest.approx((0.2 + 0.4 + 0 + 0.2 + 0.4) / 5)  # |-1 - -0.8| ... after the clip
    assert m["corr"] == pytest.approx(np.corrcoef([-1, 0.2, 0, 0.6, 0.6], [-0.8, -0.2, 0, 0.4, 1.0])[0, 1])


def test_own_labels_scored_against_the_target(root):
    a = Sims(SimsParams(), root)
    own = a.modality_labels("test")
    ds = a.split("test")
    y, yt = ds.target[:, 0].double(), ds.modality_targets["text"].double()
    assert own["text"]["mae"] == pytest.approx(float((yt - y).abs().mean()))
    assert (
        own["vision"]["mae"] > own["text"]["mae"]
    )  # the fixture's audio and text agree with the target more


def test_label_rank_corr():
    phi = {"text": 0.3, "audio": 0.1, "vision": 0.0}
    assert label_rank_corr(phi, {"text": 0.1, "audio": 0.2, "vision": 0.3}, higher=False) == pytest.approx(
        1.0
    )
    assert label_rank_corr(phi, {"text": 0.1, "audio": 0.2, "vision": 0.3}, higher=True) == pytest.approx(
        -1.0
    )
    assert label_rank_corr({"text": 1.0}, {"text": 0.1}, higher=False) is None


def test_preset_and_lnln_override():
    joint = validate_spec(compose({}, {"dataset": "sims", "preset": "sims"}, {"method": "joint"}))
    lnln = validate_spec(compose({}, {"dataset": "sims", "preset": "sims"}, {"method": "lnln"}))
    assert joint.model_params.get("arch") is None and joint.optim.name == "adam"
    assert lnln.model_params["arch"] == "lnln" and lnln.model_params["lnln"]["fusion_depth"] == 4
    assert lnln.method_params["beta"] == 0.6 and lnln.optim.name == "adamw" and lnln.epochs == 200


def test_paper_table_holds_only_the_readme_numbers():
    table, _ = load_table("lnln-sims-table")
    published = {(r.label, k): v for r in table.rows for k, v in r.published.items() if v is not None}
    # Haoyu-ha/LNLN README.md @ 80a052c, Corrigendum 2
    readme = {"acc5": 34.68, "acc3": 57.32, "acc2": 73.15, "f1": 69.18, "mae": 0.515, "corr": 0.387}
    assert published == {("LNLN", k): v for k, v in readme.items()}
