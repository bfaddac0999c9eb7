"""What the audio-visual adapters (CREMA-D, Kinetics-Sounds, AVE) share: one split class, the frame
sampling and image transforms of the released code, the hold-out of a validation split, the checks of
list files. Private module: the registry does not import ``_`` files.

Frames (GeWu-Lab/BalanceBenchmark @ 4c1482f ``balancemm/datasets/cremad_dataset.py`` l.49-76, the
same in ``KS_dataset.py`` l.65-99): the clip's frames (sorted by name) are cut into ``T`` equal segments;
training takes a random frame of each segment, evaluation its middle frame. Train images get
``RandomResizedCrop(224)`` + horizontal flip, evaluation images ``Resize((224, 224))``; both are
normalised with the ImageNet mean / std (OGM-GE ``dataset/CramedDataset.py`` l.68-80). A clip is
returned as (3, T, H, W), as OGM-GE permutes it (l.92).
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor
from torch.utils.data import Dataset

from mmbalance.models.base import MultimodalModel
from mmbalance.models.resnet_av import ResNetAVParams, build_resnet_av
from mmbalance.training.data import SPLITS, DataError, DataMissingError, DatasetAdapter, StrictModel, TaskInfo
from mmbalance.training.safe_pickle import check_finite

__all__ = [
    "AVAdapter",
    "AVParams",
    "AVSplit",
    "holdout",
    "read_list",
    "frame_files",
    "image_transform",
    "read_pickled_spectrogram",
]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_list(
    path: Path, parse: Callable[[list[str]], tuple[str, int]], sep: str | None, fields: str
) -> list:
    """``[(id, label), ...]`` from a split list, fields split at ``sep`` (``None``: at commas if the line
    has one, else at whitespace); ``parse`` maps a row's fields to (id, label) or raises
    ``ValueError``/``IndexError``, which becomes a one-line error naming the file, line and the format."""
    if not path.is_file():
        raise DataMissingError(f"{path}: missing (expected lines '{fields}')")
    try:
        text = path.read_text(encoding="utf-8-sig")  # OGM-GE opens its CSVs as UTF-8-sig
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        sep_ = sep if sep is not None else ("," if "," in line else None)
        fields_ = [f.strip() for f in line.split(sep_)]
        try:
            rows.append(parse(fields_))
        except (ValueError, IndexError, KeyError) as e:
            raise DataError(f"{path}: line {n} {line.strip()!r}: expected '{fields}' ({e})") from None
    if not rows:
        raise DataError(f"{path}: no samples (expected lines '{fields}')")
    return rows


def holdout(rows: Sequence[tuple[str, int]], fraction: float, seed: int) -> tuple[list, list]:
    """(train, valid): per class, ``round(n * fraction)`` clips (at least 1 when n >= 2) go to valid."""
    by_class: dict[int, list] = defaultdict(list)
    for row in sorted(rows):
        by_class[row[1]].append(row)
    rng, valid = random.Random(seed), set()
    for label in sorted(by_class):
        group = by_class[label]
        rng.shuffle(group)
        k = max(1, round(len(group) * fraction)) if len(group) >= 2 else 0
        valid.update(r[0] for r in group[:k])
    return [r for r in rows if r[0] not in valid], [r for r in rows if r[0] in valid]


def frame_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataMissingError(f"{folder}: missing frame folder")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)


def image_transform(train: bool, size: int):
    from torchvision import transforms as T

    steps = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()] if train else [T.Resize((size, size))]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def pick_frames(n: int, count: int, train: bool) -> list[int]:
    """Indices of ``count`` frames out of ``n``: one per equal segment, random (train) or middle (eval)."""
    seg = n // count
    if train:
        return [i * seg + int(torch.randint(seg, ())) for i in range(count)]
    return [i * seg + seg // 2 for i in range(count)]


def load_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"{path}: unreadable image: {e}") from None


def read_pickled_spectrogram(path: Path) -> Tensor:
    """A pickled float array (PMR's and OGM-GE's stored spectrograms), through the restricted unpickler."""
    import numpy as np

    from mmbalance.training.safe_pickle import load_pickle

    spec = load_pickle(path)
    if not isinstance(spec, np.ndarray) or spec.dtype.kind != "f":
        got = getattr(spec, "dtype", type(spec).__name__)
        raise DataError(f"{path}: expected a pickled float array (F, T), got {got}")
    return torch.from_numpy(spec.astype(np.float32))


class AVSplit(Dataset):
    """Items ``({"audio": (1, F, T), "visual": (3, T_v, H, W)}, label, id)``.

    ``audio(id)`` returns the (F, T) spectrogram of a clip; ``frames(id)`` its frame folder."""

    def __init__(
        self,
        rows: Sequence[tuple[str, int]],
        audio: Callable[[str], Tensor],
        frames: Callable[[str], Path],
        num_frames: int,
        train: bool,
        image_size: int,
    ) -> None:
        self.ids = [r[0] for r in rows]
        self.target = torch.tensor([r[1] for r in rows], dtype=torch.long)
        self.audio, self.frames, self.num_frames, self.train = audio, frames, num_frames, train
        self.transform = image_transform(train, image_size)

    def __len__(self) -> int:
        return len(self.ids)

    def clip(self, clip_id: str) -> Tensor:
        files = frame_files(self.frames(clip_id))
        if len(files) < self.num_frames:
            raise DataError(f"{self.frames(clip_id)}: {len(files)} frame(s), need {self.num_frames} "
                            "(dataset_params.num_frames)")  # fmt: skip
        picks = pick_frames(len(files), self.num_frames, self.train)
        return torch.stack([self.transform(load_image(files[k])) for k in picks], dim=1)

    def __getitem__(self, i: int) -> tuple[dict[str, Tensor], Tensor, str]:
        clip_id = self.ids[i]
        spec = self.audio(clip_id)
        return {"audio": spec.unsqueeze(0), "visual": self.clip(clip_id)}, self.target[i], clip_id


def ids_labels_fingerprint(split: AVSplit) -> str:
    """SHA-256 of the split's ids and labels (no file is decoded)."""
    h = hashlib.sha256()
    for clip_id, y in zip(split.ids, split.target.tolist(), strict=True):
        h.update(f"{clip_id}\t{y}\n".encode())
    return h.hexdigest()


class AVParams(StrictModel):
    num_frames: int = Field(1, ge=1)  # frames per clip fed to the visual encoder
    image_size: int = Field(224, ge=8)  # the released code's 224; smaller only for tests
    protocol: Literal["holdout", "test_as_valid"] = "holdout"  # train/test-only datasets: see AVAdapter
    valid_fraction: float = Field(0.1, gt=0, lt=1)  # holdout: share of each train class kept for validation
    split_seed: int = Field(0, ge=0)
    skip_missing: bool = False  # leave out listed clips whose audio or frames are missing (as released)


class AVAdapter(DatasetAdapter):
    """An audio-visual classification dataset served as (1, F, T) spectrograms and (3, T, H, W) clips to
    the OGM-GE ResNet-18 model.

    Subclasses give the class names, the rows of each raw split (``raw_splits``), where a clip's audio
    and frames are, and how to read the audio. Datasets released with train and test lists only
    (CREMA-D, Kinetics-Sounds) get a validation split held out of train per class (``holdout``);
    ``protocol: test_as_valid`` validates on test, as the released code does (it keeps the best
    test accuracy over epochs)."""

    modalities: ClassVar[tuple[str, ...]] = ("audio", "visual")
    class_names: ClassVar[tuple[str, ...]]
    raw_splits: ClassVar[dict[str, str]] = {"train": "train", "test": "test"}  # our split -> raw list
    ModelParams = ResNetAVParams

    def __init__(self, params: AVParams, root: Path | None = None) -> None:
        super().__init__(params, root)
        self._rows: dict[str, list[tuple[str, int]]] = {}
        self._splits: dict[str, AVSplit] = {}

    # --- what subclasses provide -----------------------------------------------------------------
    def read_rows(self, raw: str) -> list[tuple[str, int]]:
        raise NotImplementedError

    def audio_file(self, clip_id: str, raw: str) -> Path:
        raise NotImplementedError

    def frame_dir(self, clip_id: str, raw: str) -> Path:
        raise NotImplementedError

    def read_audio(self, path: Path) -> Tensor:
        """The (F, T) spectrogram stored in or computed from ``path``."""
        raise NotImplementedError

    # --- contract ---------------------------------------------------------------------------------
    @property
    def task(self) -> TaskInfo:
        return TaskInfo("classification", self.modalities, len(self.class_names), self.class_names)

    def rows(self, raw: str) -> list[tuple[str, int]]:
        if raw not in self._rows:
            rows, seen = [], set()
            for clip_id, label in self.read_rows(raw):
                if clip_id not in seen:  # a clip listed twice is kept once (PMR's AVEDataset l.59)
                    seen.add(clip_id)
                    rows.append((clip_id, label))
            self._rows[raw] = self._present(rows, raw)
        return self._rows[raw]

    def _present(self, rows: list[tuple[str, int]], raw: str) -> list[tuple[str, int]]:
        paths = {r[0]: (self.audio_file(r[0], raw), self.frame_dir(r[0], raw)) for r in rows}
        if self.params.skip_missing:
            return [r for r in rows if all(p.exists() for p in paths[r[0]])]
        missing = [p for pair in paths.values() for p in pair if not p.exists()]
        if missing:
            shown = ", ".join(str(p) for p in missing[:3])
            raise DataMissingError(
                f"{self.name}: {len(missing)} audio file(s) / frame folder(s) of the {raw} list missing, e.g. "
                f"{shown} (dataset_params.skip_missing=true leaves those clips out, as the released loaders do)"
            )
        return rows

    def split_rows(self, name: str) -> tuple[list[tuple[str, int]], str]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid: {', '.join(SPLITS)}")
        if name == "test" or "valid" in self.raw_splits:
            raw = self.raw_splits[name]
            return self.rows(raw), raw
        if self.params.protocol == "test_as_valid":
            raw = self.raw_splits["test" if name == "valid" else "train"]
            return self.rows(raw), raw
        train, valid = holdout(self.rows("train"), self.params.valid_fraction, self.params.split_seed)
        return (train if name == "train" else valid), "train"

    def split(self, name: str) -> AVSplit:
        if name not in self._splits:
            self.verify()
            rows, raw = self.split_rows(name)
            p = self.params
            self._splits[name] = AVSplit(
                rows, partial(self._audio, raw=raw), partial(self.frame_dir, raw=raw), p.num_frames,
                train=name == "train", image_size=p.image_size,
            )  # fmt: skip
        return self._splits[name]

    def _audio(self, clip_id: str, raw: str) -> Tensor:
        path = self.audio_file(clip_id, raw)
        try:
            spec = self.read_audio(path)
        except DataError:
            raise
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: unreadable audio of clip {clip_id!r}: {e}") from None
        if spec.dim() != 2:
            raise DataError(f"{path}: expected a 2-D (F, T) spectrogram, got shape {tuple(spec.shape)}")
        check_finite(spec.numpy(), path, f"the spectrogram of clip {clip_id!r}")
        return spec.float()

    def reads_items(self) -> bool:
        """Whether items are read from files as they are drawn (so loader workers pay off on a GPU)."""
        return True

    def fingerprint(self, name: str) -> str:
        return ids_labels_fingerprint(self.split(name))

    def build_model(self, model_params: ResNetAVParams, modalities: Sequence[str]) -> MultimodalModel:
        channels, clips = {"audio": 1, "visual": 3}, {"audio": False, "visual": True}
        return build_resnet_av(
            {m: channels[m] for m in modalities}, clips, self.task.num_classes, model_params
        )
