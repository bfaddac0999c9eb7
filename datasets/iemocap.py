"""IEMOCAP emotion recognition from the MMIN features (CGGM's task) or the MulT pickle.

Two releases with two different tasks (``dataset_params.format``):

- ``mmin`` (AIM3-RUC/MMIN features, read by CGGM): 4-class single-label classification.
  Under the dataset root::

      A/comparE.h5            utterance id -> (T_a, 130) openSMILE ComParE frames
      A/comparE_mean_std.h5   groups "1".."10" (fold) with 'mean', 'std' (130,): train statistics
      V/denseface.h5          utterance id -> (T_v, 342)
      L/bert_large.h5         utterance id -> (T_l, 1024)
      target/{fold}/{trn,val,tst}_label.npy     (N, 4) one-hot
      target/{fold}/{trn,val,tst}_int2name.npy  (N, 1) bytes utterance ids

  Ten cross-validation folds (``fold``, CGGM uses fold 1); trn/val/tst become train/valid/test.
  Audio is normalised with the fold's train mean/std (``norm: trn``, MMIN's and CGGM's default).
  Sequences are zero-padded at the end or truncated to fixed lengths (defaults text 22, audio 350,
  vision 50: CGGM's ``get_seq_len``). CGGM pads audio to 350 and text/vision to the longest in the
  batch, and crashes on audio longer than 350; fixed lengths give the same steps, plus trailing zero
  steps in batches whose longest text/vision is shorter. MMIN's repository does not state which label
  index is which emotion (IEMOCAP-4 is usually happy+excited, angry, sad, neutral): the classes are
  named class0..class3. Features are read from the h5 files on access, as CGGM (``in_mem=False``).
- ``mult`` (yaohungt/Multimodal-Transformer): ``iemocap_data.pkl`` (aligned) or
  ``iemocap_data_noalign.pkl``; per split ``text`` (N, T, 300), ``audio`` (N, T, 74), ``vision``
  (N, T, 35), ``labels`` (N, 4, 2): for each emotion (Neutral, Happy, Sad, Angry) a 2-way one-hot,
  whose argmax MulT takes as the binary target. MulT trains one 8-logit model and reports accuracy and
  weighted F1 per emotion. Here ``emotion`` picks one of the four as a binary classification task, so
  that every method and metric applies unchanged: four runs give MulT's per-emotion table (accuracy
  and ``f1_weighted`` are MulT's two numbers; they do not depend on which index means "present").

Modalities in CGGM's order: text, audio, vision.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import torch
from pydantic import Field
from torch import Tensor
from torch.utils.data import Dataset

from mmbalance.common.registry import DATASETS
from mmbalance.datasets._cmu import ArraySplit, PreloadedAdapter, check_one_hot, read_split_arrays
from mmbalance.models.transformer import MSAModel, MSAModelParams, build_msa_model
from mmbalance.training.data import SPLITS, DataError, DataMissingError, StrictModel, TaskInfo
from mmbalance.training.safe_pickle import load_npy, load_pickle

__all__ = ["Iemocap", "IemocapParams", "IemocapModelParams", "H5Split"]

MODALITIES = ("text", "audio", "vision")
MMIN_FEATURES = {"text": "L/bert_large.h5", "audio": "A/comparE.h5", "vision": "V/denseface.h5"}
MMIN_AUDIO_STATS = "A/comparE_mean_std.h5"
# 64 MB of float32 per utterance: comparE of a 5-minute utterance (3,000 x 130) is 0.4 M; more is a damaged file
MAX_UTTERANCE_VALUES = 2**24
MMIN_SETS = {"train": "trn", "valid": "val", "test": "tst"}
MULT_FILES = {True: "iemocap_data.pkl", False: "iemocap_data_noalign.pkl"}
MULT_EMOTIONS = ("neutral", "happy", "sad", "angry")  # MulT eval_metrics.eval_iemocap order


class IemocapParams(StrictModel):
    format: Literal["mmin", "mult"] = "mmin"  # mmin: CGGM's 4-class task; mult: MulT's binary emotions
    fold: int = Field(1, ge=1, le=10)  # mmin: cross-validation fold (CGGM: 1)
    norm: Literal["trn", "utt", "none"] = "trn"  # mmin audio: fold's train mean/std, per utterance, or none
    text_len: int = Field(22, ge=1)  # mmin: steps after padding/truncation (CGGM's get_seq_len)
    audio_len: int = Field(350, ge=1)
    vision_len: int = Field(50, ge=1)
    aligned: bool = True  # mult: iemocap_data.pkl (aligned) or iemocap_data_noalign.pkl
    emotion: Literal["neutral", "happy", "sad", "angry"] = "neutral"  # mult: the binary task


class IemocapModelParams(MSAModelParams):
    """CGGM's IEMOCAP defaults (run/iemo_run.py): 4 layers, res dropout 0.15, out dropout 0.2."""

    layers: int = Field(4, ge=2)
    res_dropout: float = Field(0.15, ge=0, lt=1)
    out_dropout: float = Field(0.2, ge=0, lt=1)


def pad_or_truncate(x: np.ndarray, length: int) -> np.ndarray:
    """(T, D) -> (length, D) float32: zeros appended at the end, or the first ``length`` steps."""
    out = np.zeros((length, x.shape[1]), dtype=np.float32)
    out[: len(x)] = x[:length]
    return out


def open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise DataMissingError(f"{path}: no such file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot open as HDF5 (truncated or not an h5 file?): {e}") from None


class H5Split(Dataset):
    """One MMIN split: features read from the h5 files per item, padded/truncated to fixed lengths."""

    def __init__(self, files: dict[str, Path], ids: list[str], target: Tensor, lengths: dict[str, int],
                 audio_stats: tuple[np.ndarray, np.ndarray] | None, utt_norm: bool) -> None:  # fmt: skip
        self.files, self.ids, self.target, self.lengths = files, ids, target, lengths
        self.audio_stats, self.utt_norm = audio_stats, utt_norm
        self._handles: dict[str, h5py.File] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.ids)

    def _h5(self, m: str) -> h5py.File:
        if self._pid != os.getpid():  # a forked DataLoader worker opens its own handles
            self._handles, self._pid = {}, os.getpid()
        if m not in self._handles:
            self._handles[m] = open_h5(self.files[m])
        return self._handles[m]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": {}}  # h5 handles do not pickle (spawned workers reopen)

    def read(self, m: str, uid: str) -> Tensor:
        # numpy, not torch, per item: small torch ops cost more than the h5 read on a busy CPU
        try:
            x = np.asarray(self._h5(m)[uid][()], dtype=np.float32)
        except (OSError, KeyError) as e:
            raise DataError(f"{self.files[m]}: cannot read utterance {uid!r}: {e}") from None
        if m == "audio" and self.audio_stats is not None:
            mean, std = self.audio_stats
            x = (x - mean) / std
        elif m == "audio" and self.utt_norm:  # MMIN's normalize_on_utt (unbiased std; 0 or NaN -> 1)
            std = x.std(axis=0, ddof=1) if len(x) > 1 else np.ones(x.shape[1], np.float32)
            x = (x - x.mean(axis=0)) / np.where(np.isfinite(std) & (std > 0), std, 1).astype(np.float32)
        return torch.from_numpy(pad_or_truncate(x, self.lengths[m]))

    def __getitem__(self, i: int) -> tuple[dict[str, Tensor], Tensor, str]:
        uid = self.ids[i]
        return {m: self.read(m, uid) for m in self.files}, self.target[i], uid


@DATASETS.register
class Iemocap(PreloadedAdapter):
    name = "iemocap"
    description = "IEMOCAP emotions (text, audio, vision): MMIN features (4 classes, 10 folds) or MulT pickle"
    access = (  # where to get it, its licence or access terms (`datasets`, missing-data message)
        "IEMOCAP (Busso et al. 2008, USC SAIL): access on request (release form at sail.usc.edu/iemocap); "
        "MMIN's features from the MMIN README"
    )
    Params = IemocapParams
    ModelParams = IemocapModelParams

    def reads_items(self) -> bool:
        return self.params.format == "mmin"  # MMIN h5 features per utterance; the MulT pickle is in memory

    # --- files --------------------------------------------------------------------------------
    def expected_files(self) -> list[Path]:
        p = self.params
        if p.format == "mult":
            return [Path(MULT_FILES[p.aligned])]
        files = [Path(f) for f in MMIN_FEATURES.values()]
        if p.norm == "trn":
            files.append(Path(MMIN_AUDIO_STATS))
        target = Path("target") / str(p.fold)
        return files + [
            target / f"{s}_{kind}.npy" for s in MMIN_SETS.values() for kind in ("label", "int2name")
        ]

    # --- loading ------------------------------------------------------------------------------
    def load_splits(self) -> dict[str, Dataset]:
        return self._load_mult() if self.params.format == "mult" else self._load_mmin()

    def _load_mult(self) -> dict[str, ArraySplit]:
        path = self.root / MULT_FILES[self.params.aligned]
        data = load_pickle(path)
        emotion = MULT_EMOTIONS.index(self.params.emotion)
        splits = {}
        for split in SPLITS:
            features, labels, ids = read_split_arrays(
                data, split, {m: m for m in MODALITIES}, "labels", str(path)
            )
            if labels.shape[1:] != (4, 2):
                raise DataError(
                    f"{path}: {split}/labels must be (N, 4, 2) (4 emotions x one-hot), got {labels.shape}"
                )
            check_one_hot(labels, f"{path}: {split}/labels")
            target = torch.from_numpy(labels[:, emotion, :].argmax(axis=-1).astype(np.int64))
            splits[split] = ArraySplit({m: torch.from_numpy(x) for m, x in features.items()}, target, ids)
        return splits

    def _load_mmin(self) -> dict[str, H5Split]:
        p = self.params
        files = {m: self.root / f for m, f in MMIN_FEATURES.items()}
        lengths = {"text": p.text_len, "audio": p.audio_len, "vision": p.vision_len}
        splits, dims = {}, {}
        for split, set_name in MMIN_SETS.items():
            ids, target = self._mmin_targets(set_name)
            for m, path in files.items():
                dims[m] = self._check_utterances(path, ids, dims.get(m), lengths[m], f"{m}_len")
            stats = self._audio_stats(dims["audio"]) if p.norm == "trn" else None
            splits[split] = H5Split(files, ids, target, lengths, stats, utt_norm=p.norm == "utt")
        self._mmin_dims = dims
        return splits

    def _mmin_targets(self, set_name: str) -> tuple[list[str], Tensor]:
        folder = self.root / "target" / str(self.params.fold)
        label_path, name_path = folder / f"{set_name}_label.npy", folder / f"{set_name}_int2name.npy"
        labels, names = load_npy(label_path), load_npy(name_path)
        if labels.ndim != 2 or labels.shape[1] != 4:
            raise DataError(f"{label_path}: expected one-hot labels of shape (N, 4), got {labels.shape}")
        check_one_hot(labels, str(label_path))
        if len(names) != len(labels):
            raise DataError(
                f"{name_path}: {len(names)} utterance ids for {len(labels)} labels in {label_path}"
            )
        ids = [_utterance_id(e) for e in names]
        return ids, torch.from_numpy(labels.argmax(axis=1).astype(np.int64))  # MMIN: np.argmax(label, axis=1)

    @staticmethod
    def _check_utterances(path: Path, ids: list[str], dim: int | None, length: int, param: str) -> int:
        """Every id is a 2-D (T, D) dataset with one D across utterances; returns D. Warns on truncation."""
        with open_h5(path) as f:
            missing = [u for u in ids if u not in f]
            if missing:
                raise DataError(
                    f"{path}: {len(missing)} utterance(s) of the split are missing, e.g. {missing[:3]}"
                )
            too_long = 0
            for u in ids:
                shape = f[u].shape
                if len(shape) != 2 or (dim is not None and shape[1] != dim):
                    want = f"(T, {dim})" if dim is not None else "(T, D)"
                    raise DataError(f"{path}: utterance {u!r} has shape {shape}, expected {want}")
                if math.prod(shape) > MAX_UTTERANCE_VALUES:  # checked before any read allocates it
                    raise DataError(f"{path}: utterance {u!r} claims shape {shape}, more than the "
                                    f"{MAX_UTTERANCE_VALUES} values an utterance's features can have")  # fmt: skip
                dim = shape[1]
                too_long += shape[0] > length
        if too_long:
            msg = (
                f"{too_long} of {len(ids)} utterances are longer than {length} steps (dataset_params.{param})"
            )
            warnings.warn(f"{path}: {msg} and are truncated", stacklevel=3)
        return dim

    def _audio_stats(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        path, fold = self.root / MMIN_AUDIO_STATS, str(self.params.fold)
        with open_h5(path) as f:
            if fold not in f or "mean" not in f[fold] or "std" not in f[fold]:
                raise DataError(
                    f"{path}: expected group {fold!r} with datasets 'mean' and 'std' (fold statistics)"
                )
            mean, std = (np.asarray(f[fold][k][()], np.float32).reshape(-1) for k in ("mean", "std"))
        if mean.shape != (dim,) or std.shape != (dim,):
            sizes = f"{tuple(mean.shape)}/{tuple(std.shape)}"
            raise DataError(
                f"{path}: fold {fold} mean/std have shapes {sizes}; the audio features have {dim}"
            )
        return mean, np.where(std > 0, std, 1).astype(np.float32)  # a constant feature stays 0, not NaN

    # --- contract -----------------------------------------------------------------------------
    @property
    def task(self) -> TaskInfo:
        if self.params.format == "mult":
            e = self.params.emotion
            return TaskInfo("classification", MODALITIES, 2, (f"{e}:index0", f"{e}:index1"))
        return TaskInfo("classification", MODALITIES, 4, ("class0", "class1", "class2", "class3"))

    def input_dims(self) -> dict[str, int]:
        splits = self._splits
        if self.params.format == "mmin":
            return dict(self._mmin_dims)
        return {m: x.shape[-1] for m, x in splits["train"].inputs.items()}

    def build_model(self, model_params: IemocapModelParams, modalities: Sequence[str]) -> MSAModel:
        dims = self.input_dims()
        return build_msa_model({m: dims[m] for m in modalities}, self.task.num_classes, model_params)


def _utterance_id(entry: object) -> str:
    """int2name rows are (1,) bytes arrays in MMIN (``int2name[i][0].decode()``); accept flat too."""
    if isinstance(entry, np.ndarray) and entry.shape:
        entry = entry[0]
    return entry.decode("utf-8") if isinstance(entry, bytes) else str(entry)
