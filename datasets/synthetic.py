"""Synthetic multimodal data with a controllable imbalance: the suite's embedded default.

N modalities (default 3: ``m0``, ``m1``, ``m2``). Each modality m carries the label through its own
*signal* of strength ``strength[m]`` plus Gaussian noise ``noise[m]``, and is *informative* on a
fraction ``informative[m]`` of the samples (elsewhere its signal points to a random other class).
The defaults make ``m0`` strong (large signal, little noise, right on 90% of samples) and ``m2``
weak but always informative: joint training fits ``m0`` first and leaves ``m2``'s encoder
under-trained. With the suite's settings (20 epochs, SGD lr 0.05) a linear probe on ``m2``'s
features inside the joint model reaches about 32% test accuracy, while ``m2`` trained alone
reaches about 66%, and joint training is no better than ``m0`` alone (about 92%). This is the
imbalance the balancing methods exist to fix.

Vector modalities (classification, regression): the signal lives in a random ``signal_dim``-dim
subspace of a ``dim``-dim input (random orthogonal basis per modality); the other directions are
unit-variance clutter. An encoder must find the subspace, which takes training.

- classification: class prototypes per modality, x_m = R_m [strength_m * mu_{m, c}; clutter] + noise_m * eps,
  with c = y on informative samples and a random class otherwise.
- regression: latent u_m ~ N(0, 1) per modality, y = clip(sum_m w_m u_m, -3, 3) (MOSI's range);
  modality m sees strength_m * u_m along one signal direction; w = ``weights``.
- segmentation: ``size`` x ``size`` images, labels 0 (background), 1 and 2 (rectangles, 2 drawn over 1).
  Modality m's image is strength_m * contrast_m[label] + noise_m * eps with the contrasts in
  ``CONTRASTS`` (m0 shows the whole foreground, m1 only label 2, m2 tells 1 from 2 weakly), like MRI
  sequences that each show some tumour regions.

Everything is a pure function of ``data_seed`` and the split: the same params give the same data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pydantic import Field, model_validator
from torch.utils.data import Dataset

from mmbalance.data import DatasetAdapter, StrictModel, TaskInfo
from mmbalance.models.base import MultimodalModel
from mmbalance.models.small import late_fusion_cnn, late_fusion_mlp
from mmbalance.registry import DATASETS

SPLIT_OFFSET = {"train": 0, "valid": 1, "test": 2}
# Per-modality contrast of labels (0, 1, 2) in the segmentation images; cycled for more modalities.
CONTRASTS = ((0.0, 1.0, 1.0), (0.0, 0.0, 1.0), (0.0, 1.0, -1.0))


class SyntheticParams(StrictModel):
    task: str = Field("classification", pattern="^(classification|regression|segmentation)$")
    modalities: int = Field(3, ge=1, le=8)
    strength: list[float] = [4.0, 1.5, 1.5]  # signal scale per modality
    noise: list[float] = [0.5, 1.0, 1.0]  # Gaussian noise std per modality
    informative: list[float] = [0.9, 0.9, 1.0]  # fraction of samples where the signal is right
    weights: list[float] = [1.2, 0.8, 0.8]  # regression: y = sum_m w_m u_m
    num_classes: int = Field(4, ge=2)  # classification (segmentation always has 3 labels)
    dim: int = Field(64, ge=2)
    signal_dim: int = Field(4, ge=1)
    size: int = Field(16, ge=8)  # segmentation image side
    n_train: int = Field(1000, ge=8)
    n_valid: int = Field(500, ge=4)
    n_test: int = Field(500, ge=4)
    data_seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _lengths(self) -> SyntheticParams:
        for name in ("strength", "noise", "informative", "weights"):
            if len(getattr(self, name)) < self.modalities:
                raise ValueError(
                    f"{name} has {len(getattr(self, name))} values, need one per modality ({self.modalities})"
                )
        if self.signal_dim > self.dim:
            raise ValueError(f"signal_dim ({self.signal_dim}) must not exceed dim ({self.dim})")
        return self


class SyntheticModelParams(StrictModel):
    hidden: int = Field(64, ge=1)  # MLP hidden width (vector tasks)
    feature_dim: int = Field(16, ge=1)  # per-modality feature size fed to the fusion head
    dropout: float = Field(0.0, ge=0, lt=1)
    width: int = Field(16, ge=1)  # CNN width (segmentation)


class ArrayDataset(Dataset):
    def __init__(self, inputs: dict[str, np.ndarray], target: np.ndarray, prefix: str) -> None:
        self.inputs = {m: torch.from_numpy(x).float() for m, x in inputs.items()}
        self.target = torch.from_numpy(target)
        self.ids = [f"{prefix}-{i:06d}" for i in range(len(target))]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        return {m: x[i] for m, x in self.inputs.items()}, self.target[i], self.ids[i]


@DATASETS.register
class Synthetic(DatasetAdapter):
    name = "synthetic"
    description = (
        "Generated N-modality data with a controllable imbalance (classification/regression/segmentation)"
    )
    Params = SyntheticParams
    ModelParams = SyntheticModelParams
    needs_files = False

    def __init__(self, params: SyntheticParams, root=None) -> None:
        super().__init__(params, root)
        self._cache: dict[str, ArrayDataset] = {}

    @property
    def modality_names(self) -> list[str]:
        return [f"m{i}" for i in range(self.params.modalities)]

    @property
    def task(self) -> TaskInfo:
        p = self.params
        names = tuple(self.modality_names)
        if p.task == "classification":
            return TaskInfo(
                "classification", names, p.num_classes, tuple(f"class{c}" for c in range(p.num_classes))
            )
        if p.task == "regression":
            return TaskInfo("regression", names, 1)
        return TaskInfo(
            "segmentation",
            names,
            3,
            ("background", "label1", "label2"),
            regions={"label1": (1,), "label2": (2,), "foreground": (1, 2)},
        )

    def split(self, name: str) -> ArrayDataset:
        if name not in SPLIT_OFFSET:
            raise ValueError(f"unknown split {name!r}; valid: {', '.join(SPLIT_OFFSET)}")
        if name not in self._cache:
            n = getattr(self.params, f"n_{name}")
            generate = {
                "classification": self._classification,
                "regression": self._regression,
                "segmentation": self._segmentation,
            }[self.params.task]
            inputs, target = generate(n, np.random.default_rng([self.params.data_seed, SPLIT_OFFSET[name]]))
            self._cache[name] = ArrayDataset(inputs, target, f"{self.params.task}-{name}")
        return self._cache[name]

    # --- generators -----------------------------------------------------------------------------
    def _bases(self) -> list[np.ndarray]:
        """A fixed random orthogonal basis per modality (shared by all splits)."""
        rng = np.random.default_rng([self.params.data_seed, 99])
        return [
            np.linalg.qr(rng.normal(size=(self.params.dim, self.params.dim)))[0] for _ in self.modality_names
        ]

    def _embed(self, signal: np.ndarray, m: int, basis: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        p = self.params
        n, r = signal.shape
        clutter = rng.normal(size=(n, p.dim - r))
        x = np.concatenate([p.strength[m] * signal, clutter], axis=1) @ basis.T
        return (x + p.noise[m] * rng.normal(size=x.shape)).astype(np.float32)

    def _classification(self, n: int, rng: np.random.Generator):
        p = self.params
        proto_rng = np.random.default_rng([p.data_seed, 98])
        prototypes = proto_rng.normal(size=(p.modalities, p.num_classes, p.signal_dim))
        prototypes /= np.linalg.norm(prototypes, axis=-1, keepdims=True)
        y = rng.integers(0, p.num_classes, size=n)
        inputs = {}
        for m, (name, basis) in enumerate(zip(self.modality_names, self._bases(), strict=True)):
            wrong = (y + rng.integers(1, p.num_classes, size=n)) % p.num_classes
            shown = np.where(rng.random(n) < p.informative[m], y, wrong)
            inputs[name] = self._embed(prototypes[m, shown], m, basis, rng)
        return inputs, y.astype(np.int64)

    def _regression(self, n: int, rng: np.random.Generator):
        p = self.params
        u = rng.normal(size=(n, p.modalities))
        y = np.clip(u @ np.asarray(p.weights[: p.modalities]), -3, 3)
        inputs = {}
        for m, (name, basis) in enumerate(zip(self.modality_names, self._bases(), strict=True)):
            seen = np.where(rng.random(n) < p.informative[m], u[:, m], rng.normal(size=n))
            signal = np.zeros((n, p.signal_dim))
            signal[:, 0] = seen
            inputs[name] = self._embed(signal, m, basis, rng)
        return inputs, y.astype(np.float32).reshape(n, 1)

    def _segmentation(self, n: int, rng: np.random.Generator):
        p, s = self.params, self.params.size
        labels = np.zeros((n, s, s), dtype=np.int64)
        for i in range(n):
            for value in (1, 2):  # one rectangle per label, 2 drawn over 1
                h, w = rng.integers(s // 4, s // 2 + 1, size=2)
                top, left = rng.integers(0, s - h + 1), rng.integers(0, s - w + 1)
                labels[i, top : top + h, left : left + w] = value
        inputs = {}
        for m, name in enumerate(self.modality_names):
            contrast = np.asarray(CONTRASTS[m % len(CONTRASTS)])
            image = p.strength[m] * contrast[labels] + p.noise[m] * rng.normal(size=labels.shape)
            inputs[name] = image[:, None].astype(np.float32)  # (n, 1, s, s)
        return inputs, labels

    # --- model ------------------------------------------------------------------------------------
    def build_model(self, model_params: SyntheticModelParams, modalities: Sequence[str]) -> MultimodalModel:
        p, mp = self.params, model_params
        if p.task == "segmentation":
            return late_fusion_cnn({m: 1 for m in modalities}, mp.width, mp.feature_dim, 3)
        out = p.num_classes if p.task == "classification" else 1
        return late_fusion_mlp({m: p.dim for m in modalities}, mp.hidden, mp.feature_dim, out, mp.dropout)
