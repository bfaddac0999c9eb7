"""BraTS 2021 (RSNA-ASNR-MICCAI) glioma segmentation: four MRI sequences, per-volume h5 files.

On disk (``scripts/prepare_brats.py`` writes it from the raw ``BraTS2021_XXXXX_{flair,t1,t1ce,t2,seg}.nii.gz``
case folders, with ``convert_cases`` below)::

    brats/h5/BraTS2021_XXXXX.h5   image (4, H, W, D) float32, channels flair, t1ce, t1, t2, each z-scored
                                  inside the brain mask (background 0); label (H, W, D) uint8 {0, 1, 2, 4}
    brats/splits.json             {"train": [ids], "valid": [ids], "test": [ids]}

The layout the CGGM code reads (``{train,valid,test}/*.h5``, same two datasets per file) is accepted
too, so h5 files made by others load unchanged. Labels 4 (ET) become 3 at load time, as in the CGGM
code's ``BraTSData``; classes 0 background, 1 NCR/NET, 2 ED, 3 ET.

Samples, following the CGGM code (``datasets/BratsDataset.py``): a training item is an axial slice
with tumour, centre-cropped to ``crop`` x ``crop``, rotated by k * 90 degrees (k in {0, 1, 2}),
flipped along a random axis and, with probability 0.1, given Gaussian noise of a std drawn from
U(0, 0.1). ``train_items="volume"`` draws one random tumour slice of a volume per visit (the CGGM
code; an epoch has one item per volume), ``"slice"`` visits every tumour slice once per epoch.
Unlike the CGGM code (one random tumour slice per volume, unseeded, first 128 slices only),
validation and test cover *every* slice of each volume, and Dice is computed per volume over its
stack of cropped slices (ET = {3}, TC = {1, 3}, WT = {1, 2, 3}), then averaged over volumes.
All randomness uses NumPy's global generator, which the runner seeds and checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import zlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import h5py
import nibabel as nib
import numpy as np
import torch
from pydantic import Field
from torch import Tensor
from torch.utils.data import Dataset

from mmbalance.common.registry import DATASETS
from mmbalance.training.data import SPLITS, DataError, DataMissingError, DatasetAdapter, StrictModel, TaskInfo
from mmbalance.training.metrics import dice_per_region

if TYPE_CHECKING:
    from mmbalance.models.segmentation import DeepLabMultiInput

__all__ = ["Brats", "convert_case", "convert_cases", "read_volume"]

MODALITIES = ("flair", "t1ce", "t1", "t2")  # channel order of ``image`` (the CGGM code unpacks it so)
RAW_SUFFIXES = ("flair", "t1ce", "t1", "t2", "seg")
CASE_NAME = re.compile(r"BraTS\d{4}_\d+")  # BraTS2021_00000
LABEL_VALUES = (0, 1, 2, 3, 4)
MAX_VOLUME_VOXELS = 2**26  # 67 M voxels; BraTS volumes have 240 x 240 x 155 = 8.9 M
REGIONS = {"ET": (3,), "TC": (1, 3), "WT": (1, 2, 3)}
# CGGM's BraTSData: noise with probability 0.1, std ~ U(0, 0.1) ("variance" in its code, used as std).
NOISE_P, NOISE_STD = 0.1, (0.0, 0.1)


class BratsParams(StrictModel):
    split_file: str = "splits.json"  # relative to the dataset root; absent -> {train,valid,test}/*.h5 folders
    h5_dir: str = "h5"  # folder of the per-volume h5 files named in split_file
    crop: int = Field(160, ge=8)  # centre crop of every slice (CGGM: 160 x 160)
    train_items: Literal["volume", "slice"] = "volume"
    augment: bool = True  # CGGM's rotation/flip/noise on training slices


class BratsModelParams(StrictModel):
    layers: list[int] = [3, 4, 23, 3]  # ResNet-101 blocks per stage (CGGM); [1, 1, 1, 1] for tests
    width: int = Field(64, ge=1)  # torchvision width_per_group of the Bottleneck blocks
    output_stride: Literal[8, 16] = 16  # what CGGM's segtrain.py builds
    aspp_channels: int = Field(256, ge=1)
    decoder_channels: int = Field(256, ge=1)


# --- files ----------------------------------------------------------------------------------------
def _read_nifti(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataMissingError(
            f"{path}: missing (a BraTS case folder holds <case>_{{{','.join(RAW_SUFFIXES)}}}.nii.gz)"
        )
    try:
        return np.asarray(nib.load(str(path)).dataobj)
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as e:
        raise DataError(f"{path}: not a readable NIfTI file (truncated or corrupt?): {e}") from None


def convert_case(case_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one raw case folder: ``image`` (4, H, W, D) float32 (flair, t1ce, t1, t2; each z-scored
    inside the brain mask, background 0) and ``label`` (H, W, D) uint8 with the raw values {0, 1, 2, 4}."""
    case = case_dir.name
    volumes = {s: _read_nifti(case_dir / f"{case}_{s}.nii.gz") for s in RAW_SUFFIXES}
    shapes = {s: v.shape for s, v in volumes.items()}
    if len(set(shapes.values())) != 1 or len(shapes["seg"]) != 3:
        raise DataError(f"{case_dir}: the five volumes must share one 3-D shape, got {shapes}")
    label = volumes["seg"]
    bad = np.setdiff1d(np.unique(label), (0, 1, 2, 4))
    if bad.size:
        raise DataError(
            f"{case_dir / f'{case}_seg.nii.gz'}: label values {bad.tolist()} outside {{0, 1, 2, 4}}"
        )
    image = np.stack([volumes[m].astype(np.float32) for m in MODALITIES])
    brain = image.sum(0) > 0
    for c in range(len(MODALITIES)):  # z-score inside the brain mask, as the brats-unet converter
        values = image[c][brain]
        std = values.std() if values.size else 0.0
        image[c] = np.where(brain, (image[c] - values.mean()) / (std if std > 0 else 1.0), 0.0)
    return image, label.astype(np.uint8)


def _write_h5(path: Path, image: np.ndarray, label: np.ndarray, compression: str | None = "gzip") -> None:
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        # One chunk per axial slice: the loader reads one slice at a time.
        f.create_dataset("image", data=image, compression=compression, chunks=(*image.shape[:3], 1))
        f.create_dataset("label", data=label, compression=compression, chunks=(*label.shape[:2], 1))
    os.replace(tmp, path)


def split_ids(
    ids: Sequence[str], valid_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[str]]:
    """Deterministic split: sort, shuffle with ``random.Random(seed)``, cut test, valid, then train."""
    ids = sorted(ids)
    random.Random(seed).shuffle(ids)
    n_test = max(1, round(len(ids) * test_fraction))
    n_valid = max(1, round(len(ids) * valid_fraction))
    if len(ids) - n_test - n_valid < 1:
        raise DataError(f"{len(ids)} cases cannot make a train/valid/test split (need at least 3)")
    return {"test": sorted(ids[:n_test]), "valid": sorted(ids[n_test : n_test + n_valid]),
            "train": sorted(ids[n_test + n_valid :])}  # fmt: skip


def convert_cases(
    raw_root: Path,
    out_root: Path,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    progress: bool = False,
    compression: str | None = "gzip",
) -> dict[str, list[str]]:
    """Convert every ``BraTS2021_*`` case folder under ``raw_root`` to ``out_root/h5/<case>.h5`` and write
    ``out_root/splits.json``. Files already converted are kept (the conversion resumes).
    ``compression``: gzip (as the brats-unet converter; ~12 ms to read a 240 x 240 slice), lzf, or None
    (about 30x faster slice reads, 143 MB per volume)."""
    from tqdm.auto import tqdm

    if not Path(raw_root).is_dir():
        raise DataMissingError(f"{raw_root}: no such folder (expected BraTS2021_XXXXX case folders)")
    cases = sorted(p for p in Path(raw_root).iterdir() if p.is_dir() and CASE_NAME.fullmatch(p.name))
    if not cases:
        raise DataMissingError(f"{raw_root}: no BraTS2021_XXXXX case folders")
    h5_dir = Path(out_root) / "h5"
    h5_dir.mkdir(parents=True, exist_ok=True)
    for case_dir in tqdm(cases, desc="BraTS -> h5", disable=not progress):
        target = h5_dir / f"{case_dir.name}.h5"
        if not target.exists():  # written atomically, so an existing file is complete
            _write_h5(target, *convert_case(case_dir), compression=compression)
    splits = split_ids([c.name for c in cases], valid_fraction, test_fraction, seed)
    (Path(out_root) / "splits.json").write_text(json.dumps(splits, indent=1))
    return splits


def read_volume(path: Path) -> tuple[h5py.Dataset, h5py.Dataset]:
    """Open a per-volume h5 file and check its two datasets; the handles stay open."""
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not a readable h5 file (truncated or corrupt?): {e}") from None
    if "image" not in f or "label" not in f:
        raise DataError(
            f"{path}: expected datasets 'image' (4, H, W, D) and 'label' (H, W, D), found {list(f)}"
        )
    image, label = f["image"], f["label"]
    if image.ndim != 4 or image.shape[0] != 4 or label.shape != image.shape[1:]:
        raise DataError(
            f"{path}: expected image (4, H, W, D) and label (H, W, D), got {image.shape} and {label.shape}"
        )
    if label.size > MAX_VOLUME_VOXELS:  # the label is read whole: check the claim before it allocates
        raise DataError(f"{path}: label claims shape {label.shape}, more than the {MAX_VOLUME_VOXELS} voxels "
                        "a volume can have (damaged file?)")  # fmt: skip
    return image, label


# --- torch datasets --------------------------------------------------------------------------------
class _Volumes(Dataset):
    """Lazy access to a list of per-volume h5 files, with per-process open handles."""

    def __init__(self, files: dict[str, Path], crop: int) -> None:
        self.files, self.crop = files, crop
        self._open: dict[str, tuple[h5py.Dataset, h5py.Dataset]] = {}
        self._pid = os.getpid()
        self._tumour: dict[str, np.ndarray] = {}

    def volume(self, vid: str) -> tuple[h5py.Dataset, h5py.Dataset]:
        if os.getpid() != self._pid:  # a forked DataLoader worker must not share h5 handles
            self._open, self._pid = {}, os.getpid()
        if vid not in self._open:
            self._open[vid] = read_volume(self.files[vid])
            h, w = self._open[vid][1].shape[:2]
            if min(h, w) < self.crop:
                raise DataError(f"{self.files[vid]}: slices are {h} x {w}, smaller than the crop {self.crop}")
        return self._open[vid]

    def tumour_slices(self, vid: str) -> np.ndarray:
        """Axial indices whose label has foreground (read once per volume)."""
        if vid not in self._tumour:
            label = self.volume(vid)[1][()]
            bad = np.setdiff1d(np.unique(label), LABEL_VALUES)
            if bad.size:
                raise DataError(f"{self.files[vid]}: label values {bad.tolist()} outside {LABEL_VALUES}")
            self._tumour[vid] = np.flatnonzero(label.reshape(-1, label.shape[-1]).max(axis=0) > 0)
        return self._tumour[vid]

    def slice(self, vid: str, z: int) -> tuple[np.ndarray, np.ndarray]:
        """Centre-cropped (4, c, c) image and (c, c) label (4 -> 3) of axial slice z."""
        image, label = self.volume(vid)
        h, w = label.shape[:2]
        top, left = int(round((h - self.crop) / 2.0)), int(round((w - self.crop) / 2.0))
        rows, cols = slice(top, top + self.crop), slice(left, left + self.crop)
        x = image[:, rows, cols, z].astype(np.float32)
        y = label[rows, cols, z].astype(np.int64)
        y[y == 4] = 3
        return x, y

    @staticmethod
    def item(x: np.ndarray, y: np.ndarray, item_id: str) -> tuple[dict[str, Tensor], Tensor, str]:
        x = torch.from_numpy(np.ascontiguousarray(x))
        return (
            {m: x[c : c + 1] for c, m in enumerate(MODALITIES)},
            torch.from_numpy(np.ascontiguousarray(y)),
            item_id,
        )


def augment(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CGGM's ``RandomRotFlip`` then ``GaussianNoise(p=0.1)`` on a (C, H, W) slice and its (H, W) label."""
    k = np.random.randint(0, 3)
    x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k)
    axis = np.random.randint(1, 3)
    x, y = np.flip(x, axis=axis), np.flip(y, axis=axis - 1)
    if np.random.uniform() < NOISE_P:
        x = x + np.random.normal(0.0, np.random.uniform(*NOISE_STD), size=x.shape).astype(np.float32)
    return x, y


class TrainSlices(_Volumes):
    """Training items: tumour slices, one random per volume (``per_volume``) or all of them."""

    def __init__(self, files: dict[str, Path], crop: int, per_volume: bool, augment: bool) -> None:
        super().__init__(files, crop)
        self.per_volume, self.augment = per_volume, augment
        if per_volume:
            self.ids = list(files)
        else:
            self.index = [(v, int(z)) for v in files for z in self.tumour_slices(v)]
            self.ids = [f"{v}/{z:03d}" for v, z in self.index]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        if self.per_volume:
            vid = self.ids[i]
            slices = self.tumour_slices(vid)
            if slices.size == 0:
                raise DataError(f"{self.files[vid]}: training volume without tumour (no slice to sample)")
            z = int(slices[np.random.randint(len(slices))])
        else:
            vid, z = self.index[i]
        x, y = self.slice(vid, z)
        if self.augment:
            x, y = augment(x, y)
        return self.item(x, y, self.ids[i])


class AllSlices(_Volumes):
    """Evaluation items: every axial slice of every volume, in order; ids ``<volume>/<slice>``."""

    def __init__(self, files: dict[str, Path], crop: int) -> None:
        super().__init__(files, crop)
        self.index = [(v, z) for v in files for z in range(self.volume(v)[1].shape[-1])]
        self.ids = [f"{v}/{z:03d}" for v, z in self.index]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        return self.item(*self.slice(*self.index[i]), self.ids[i])


# --- adapter ------------------------------------------------------------------------------------------
@DATASETS.register
class Brats(DatasetAdapter):
    name = "brats"
    description = "BraTS 2021 glioma segmentation: flair/t1ce/t1/t2 slices, Dice ET/TC/WT (per-volume h5)"
    access = (  # where to get it, its licence or access terms (`datasets`, missing-data message)
        "BraTS 2021 (RSNA-ASNR-MICCAI): register for the challenge data on Synapse (syn25829067); use under "
        "the BraTS terms, cite its papers"
    )
    Params = BratsParams
    ModelParams = BratsModelParams

    def __init__(self, params: BratsParams, root: Path | None = None) -> None:
        super().__init__(params, root)
        self._splits: dict[str, Dataset] = {}

    @property
    def task(self) -> TaskInfo:
        return TaskInfo("segmentation", MODALITIES, 4, ("background", "NCR/NET", "ED", "ET"), regions=REGIONS)

    def _folder_layout(self) -> bool:
        return not (self.root / self.params.split_file).exists() and (self.root / "train").is_dir()

    def split_files(self, name: str) -> dict[str, Path]:
        """Volume id -> h5 path of split ``name``."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid: {', '.join(SPLITS)}")
        if self._folder_layout():
            return {p.stem: p for p in sorted((self.root / name).glob("*.h5"))}
        path = self.root / self.params.split_file
        try:
            listing = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataMissingError(f"{path}: missing. Expected layout: {self.layout_help()}") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON: {e}") from None
        if not isinstance(listing, dict) or not isinstance(listing.get(name), list):
            raise DataError(
                f"{path}: expected {{'train': [ids], 'valid': [ids], 'test': [ids]}}, no list {name!r}"
            )
        return {v: self.root / self.params.h5_dir / f"{v}.h5" for v in listing[name]}

    def expected_files(self) -> list[Path]:
        if self._folder_layout():
            return [Path(s) for s in SPLITS]
        if not (self.root / self.params.split_file).exists():
            return [Path(self.params.split_file)]
        return [Path(self.params.split_file)] + [
            p.relative_to(self.root) for s in SPLITS for p in self.split_files(s).values()
        ]

    def layout_help(self) -> str:
        return (
            f"{self.params.split_file} + {self.params.h5_dir}/<case>.h5 (scripts/prepare_brats.py writes "
            "them from BraTS2021_XXXXX case folders), or the CGGM layout {train,valid,test}/*.h5"
        )

    def split(self, name: str) -> Dataset:
        if name not in self._splits:
            files, p = self.split_files(name), self.params
            if name == "train":
                self._splits[name] = TrainSlices(files, p.crop, p.train_items == "volume", p.augment)
            else:
                self._splits[name] = AllSlices(files, p.crop)
        return self._splits[name]

    def check_train_batches(self, n: int, batch_size: int) -> None:
        # DeepLab's ASPP image-pooling branch runs BatchNorm on 1x1 maps: a training batch of 1 fails.
        if n == 1:
            what = "1 training volume with train_items='volume' (one item per volume and epoch)"
            if self.params.train_items == "slice":
                what = "1 training slice"
            raise DataError(
                f"brats: {what} under {self.root}; the model's BatchNorm needs at least 2 samples per batch: "
                "add training volumes to the split"
                + (" or use train_items='slice'" if self.params.train_items == "volume" else "")
            )
        if n % batch_size == 1:
            fits = min((b for b in range(2, n + 1) if n % b != 1), key=lambda b: (abs(b - batch_size), b))
            raise DataError(
                f"brats: {n} training items in batches of {batch_size} leave a final batch of 1, which the "
                f"model's BatchNorm cannot normalise; use batch_size={fits} (or any b with {n} % b != 1)"
            )

    def reads_items(self) -> bool:
        """Whether items are read from files as they are drawn (so loader workers pay off on a GPU)."""
        return True

    def fingerprint(self, name: str) -> str:
        """SHA-256 of the split's volume ids and file sizes (decoding every volume would take minutes)."""
        h = hashlib.sha256()
        for vid, path in self.split_files(name).items():
            h.update(f"{vid}:{path.stat().st_size if path.exists() else -1};".encode())
        return h.hexdigest()

    def build_model(self, model_params: BratsModelParams, modalities: Sequence[str]) -> DeepLabMultiInput:
        from mmbalance.models.segmentation import deeplab_multi_input  # torchvision: only to build the model

        mp = model_params
        return deeplab_multi_input(
            list(modalities),
            self.task.num_classes,
            mp.layers,
            mp.width,
            mp.output_stride,
            mp.aspp_channels,
            mp.decoder_channels,
        )

    def compact_prediction(self, pred: Tensor) -> Tensor:
        return pred.argmax(dim=1).to(torch.uint8)  # (B, H, W): every slice's logits would not fit in memory

    def evaluate(self, pred: Tensor, target: Tensor, ids: list[str]) -> dict[str, float]:
        """Dice per region of each volume (its slices stacked), averaged over volumes (percent)."""
        labels = pred.argmax(dim=1) if pred.dim() == target.dim() + 1 else pred
        rows: dict[str, list[int]] = defaultdict(list)
        for i, item_id in enumerate(ids):
            rows[item_id.split("/")[0]].append(i)
        per_volume = [
            dice_per_region(labels[r].unsqueeze(0), target[r].unsqueeze(0), REGIONS) for r in rows.values()
        ]
        return {k: float(np.mean([d[k] for d in per_volume])) for k in per_volume[0]}
