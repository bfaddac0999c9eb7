"""Helpers shared by the CMU-style pickle adapters (MOSI, IEMOCAP's MulT file): in-memory splits and
the checked reading of one split's arrays. Private module: the registry does not import ``_`` files."""

from __future__ import annotations

import hashlib
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmbalance.training.data import SPLITS, Batch, DataError, DatasetAdapter

__all__ = [
    "ArraySplit",
    "PreloadedAdapter",
    "read_split_arrays",
    "ids_labels_fingerprint",
    "check_labels",
    "check_one_hot",
]


class ArraySplit(Dataset):
    """In-memory split: items ``({modality: (T, D)}, target, id)``; tensors are shared, not copied.
    A batch is fetched with one indexing per tensor (``__getitems__``, which ``DataLoader`` prefers):
    the same values as stacking its items, without a Python call per item (a fifth of a small run)."""

    def __init__(self, inputs: dict[str, Tensor], target: Tensor, ids: list[str]) -> None:
        self.inputs, self.target, self.ids = inputs, target, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[dict[str, Tensor], Tensor, str]:
        return {m: x[i] for m, x in self.inputs.items()}, self.target[i], self.ids[i]

    def __getitems__(self, indices: list[int]) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return Batch(
            {m: x[idx] for m, x in self.inputs.items()}, self.target[idx], [self.ids[i] for i in indices]
        )


def check_labels(labels: np.ndarray, where: str, low: float = -np.inf, high: float = np.inf) -> None:
    """Every label finite and in ``[low, high]``, else a ``DataError`` naming ``where`` (file: split/key)
    and the first bad sample."""
    values = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)
    bad = ~(np.isfinite(values) & (values >= low) & (values <= high)).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        allowed = f" (allowed: [{low:g}, {high:g}])" if np.isfinite([low, high]).any() else ""
        raise DataError(f"{where}: {int(bad.sum())} bad label(s), the first at index {i}: "
                        f"{values[i].tolist()}{allowed}")  # fmt: skip


def check_one_hot(labels: np.ndarray, where: str) -> None:
    """Each row along the last axis one-hot (zeros and a single 1), else a ``DataError`` naming the first."""
    values = np.asarray(labels, dtype=np.float64)
    ok = np.isin(values, (0.0, 1.0)).all(axis=-1) & (values.sum(axis=-1) == 1)
    if not ok.all():
        index = tuple(int(i) for i in np.argwhere(~ok)[0])
        raise DataError(f"{where}: {int((~ok).sum())} label row(s) are not one-hot, the first at index "
                        f"{index[0] if len(index) == 1 else index}: {values[index].tolist()}")  # fmt: skip


def _id_string(entry: Any) -> str:
    """MulT ids are rows of bytes (video, start, end); MMSA ids are str."""
    if isinstance(entry, (np.ndarray, list, tuple)):
        return "_".join(_id_string(e) for e in entry)
    return entry.decode("utf-8") if isinstance(entry, bytes) else str(entry)


def read_split_arrays(
    data: Any, split: str, keys: dict[str, str], label_key: str, source: str
) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    """Check one split of a CMU-style pickle and return ``(features, labels, ids)``, features float32.

    ``keys`` maps modality -> pickle key. Every feature must be 3-D (N, T, D) with the labels' N;
    audio ``-inf`` becomes 0 (MulT, MMSA, CGGM do the same); any other non-finite value is an error
    naming the file, split and key. Shared by the MOSI and IEMOCAP adapters.
    """
    if not isinstance(data, dict) or split not in data:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DataError(
            f"{source}: expected a dict with splits {list(SPLITS)}, split {split!r} missing (found {found})"
        )
    part = data[split]
    missing = [k for k in (*keys.values(), label_key) if not isinstance(part, dict) or k not in part]
    if missing:
        found = sorted(part) if isinstance(part, dict) else type(part).__name__
        raise DataError(f"{source}: split {split!r} lacks key(s) {missing} (found {found})")
    labels = np.asarray(part[label_key])
    if labels.dtype.kind not in "biuf" or labels.ndim == 0:
        raise DataError(
            f"{source}: {split}/{label_key} must be a numeric array, got {labels.dtype} {labels.shape}"
        )
    check_labels(labels, f"{source}: {split}/{label_key}")
    n = len(labels)
    features = {}
    for m, key in keys.items():
        x = part[key]
        if not isinstance(x, np.ndarray) or x.ndim != 3 or x.shape[0] != n:
            shape = getattr(x, "shape", type(x).__name__)
            raise DataError(f"{source}: {split}/{key} must be an array of shape (N={n}, T, D) "
                            f"(N from {label_key}), got {shape}")  # fmt: skip
        x = x.astype(np.float32)
        if m == "audio":
            x[x == -np.inf] = 0
        if not np.isfinite(x).all():
            raise DataError(f"{source}: {split}/{key} has {int((~np.isfinite(x)).sum())} NaN/inf values")
        features[m] = x
    ids = [_id_string(e) for e in part["id"]] if "id" in part else [f"{split}-{i:05d}" for i in range(n)]
    if len(ids) != n:
        raise DataError(f"{source}: {split}/id has {len(ids)} entries for {n} labels")
    return features, labels, ids


def ids_labels_fingerprint(ids: list[str], target: Tensor) -> str:
    """SHA-256 of a split's ids and labels, from the arrays (features are never read)."""
    h = hashlib.sha256("\n".join(ids).encode())
    h.update(target.cpu().numpy().tobytes())
    return h.hexdigest()


class PreloadedAdapter(DatasetAdapter):
    """An adapter that builds its three splits at once (``load_splits``), each with ``ids`` and ``target``
    in memory, so ``fingerprint`` hashes them without reading a feature."""

    def load_splits(self) -> dict[str, Dataset]:
        raise NotImplementedError

    @cached_property
    def _splits(self) -> dict[str, Dataset]:
        self.verify()
        return self.load_splits()

    def split(self, name: str) -> Dataset:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid: {', '.join(SPLITS)}")
        return self._splits[name]

    def fingerprint(self, name: str) -> str:
        ds = self.split(name)
        return ids_labels_fingerprint(ds.ids, ds.target)
