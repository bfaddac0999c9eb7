"""Synthetic multimodal data with a controllable imbalance: the suite's embedded default.

N modalities ``m0``, ``m1``, ... Each modality m carries the label through its own *signal* of strength
``strength[m]`` plus Gaussian noise ``noise[m]``, scaled as a whole by ``scale[m]``, and is *informative*
on a fraction ``informative[m]`` of the samples. Vector inputs (classification, regression) have
``dim[m]`` dimensions: the signal lives in a random ``signal_dim``-dim subspace (a random orthogonal
basis per modality), the other directions are unit-variance, sample-specific clutter.

A ``scenario`` picks the mechanism and its default parameters (``SCENARIOS``; explicit params override):

- ``lazy`` (classification default): modality laziness (Du et al., ICML 2023). ``m0`` is informative
  on 70% of the samples only; on the rest it carries *no* signal, just 124 dimensions of sample-specific
  clutter, through which an MLP memorises those training labels. So m0 alone can fit the whole
  training set. ``m1`` and ``m2`` are informative on every sample but small in scale (0.2 vs 0.5):
  their encoders get small gradients and learn slowly. Joint training fits m0 (signal, then memorised
  clutter), the training loss goes to zero and the weak encoders stop learning; trained alone they keep
  learning. Measured at the suite's settings (12 epochs, SGD lr 0.05, momentum 0.9, 5 seeds): m0 alone
  78.3, m1 / m2 alone 69.4 / 68.8, joint 82.4, unimodal ensemble 88.0 test accuracy; joint's best
  validation epoch is 5 or later. Class prototypes are orthonormal, so a modality's difficulty is set by
  its strength, noise and scale alone.

  ``imbalance`` (lazy only; default 1, the scenario above) is the degree of that mechanism, a number
  lambda in [0, 1] that moves every parameter in which the modalities differ along a straight line from
  three identical modalities (lambda = 0: each informative on every sample, 16 dimensions, strength
  1.5, noise 1, scale 0.5; nothing to be lazy about) to the scenario above (lambda = 1)::

      m0:      informative 1 - 0.3 lambda   dim 16 + 112 lambda   strength 1.5 + 1.5 lambda
               noise 1 - 0.5 lambda         scale 0.5
      m1, m2:  informative 1   dim 16   strength 1.5   noise 1   scale 0.5 - 0.3 lambda

  So lambda grows m0's shortcut (the clutter it can memorise and the samples that need it) and shrinks
  the weak modalities' gradients together. Fixed before any method was run on it (the suite's sweep
  takes lambda in {0, 0.25, 0.5, 0.75, 1}).
- ``redundant`` (the suite's default before; data identical to it): every modality shows the same
  label; m0 strong (strength 4, noise 0.5) but pointing to a random wrong class on 10% of samples, m1
  likewise weak, m2 weak and always right. Joint training rests on m0 and under-trains m2, but m0 alone
  already solves the task (about 92%), so a method can hardly gain.
- ``complementary``: each modality determines a part of the label the others cannot. Classification:
  y has ``num_classes = k ** modalities`` values and modality m shows the m-th base-k digit of y (default
  2 modalities, 4 classes: m0 strong, m1 weak). Regression (its default, identical to the former
  default): a latent u_m ~ N(0, 1) per modality, y = clip(sum_m w_m u_m, -3, 3) (MOSI's range), m sees
  u_m. Segmentation (its only scenario, identical to the former default): ``size`` x ``size`` images,
  labels 0 (background), 1 and 2 (rectangles, 2 drawn over 1); modality m's image is
  strength_m * contrast_m[label] + noise, with the contrasts in ``CONTRASTS`` (m0 shows the whole
  foreground, m1 only label 2, m2 tells 1 from 2 weakly), like MRI sequences that each show some
  tumour regions.

Where the mechanism does not apply: ``lazy`` is classification only. For regression (L1 loss on a
continuous target) the same construction did not make joint training lazy (joint MAE 0.30 vs unimodal
ensemble 0.33, 3 seeds), and a CNN with local receptive fields cannot memorise per-image noise into
per-pixel labels, so segmentation has no lazy scenario either. Regression also has ``redundant`` (one
latent shown by every modality).

Classification elsewhere: x_m = scale_m * (R_m [strength_m * mu_{m, c}; clutter] + noise_m * eps) with
c = y on informative samples and a random other class otherwise (``lazy``: no signal otherwise).
Everything is a pure function of ``data_seed`` and the split: the same params give the same data.
``data_seed: null`` (the default) takes the run's seed, so each seed of a suite trains and tests on
its own draw of the data, and the seed spread measures the data's noise as well as the initialisation's.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field, model_validator
from threadpoolctl import threadpool_limits

from mmbalance.common.registry import DATASETS
from mmbalance.datasets._cmu import ArraySplit
from mmbalance.models.base import MultimodalModel
from mmbalance.models.small import late_fusion_cnn, late_fusion_mlp
from mmbalance.training.data import DatasetAdapter, StrictModel, TaskInfo

SPLIT_OFFSET = {"train": 0, "valid": 1, "test": 2}
# Per-modality contrast of labels (0, 1, 2) in the segmentation images; cycled for more modalities.
CONTRASTS = ((0.0, 1.0, 1.0), (0.0, 0.0, 1.0), (0.0, 1.0, -1.0))
TODAY = {"strength": [4.0, 1.5, 1.5], "noise": [0.5, 1.0, 1.0], "informative": [0.9, 0.9, 1.0]}
LAZY = {
    "modalities": 3, "dim": [128, 16, 16], "strength": [3.0, 1.5, 1.5], "noise": [0.5, 1.0, 1.0],
    "scale": [0.5, 0.2, 0.2], "informative": [0.7, 1.0, 1.0],
}  # fmt: skip


def lazy_at(imbalance: float) -> dict[str, Any]:
    """The ``lazy`` scenario's parameters at imbalance degree lambda (module docstring); 1 gives ``LAZY``."""
    lam = imbalance
    return {
        "modalities": 3, "dim": [16 + round(112 * lam), 16, 16], "strength": [1.5 + 1.5 * lam, 1.5, 1.5],
        "noise": [1.0 - 0.5 * lam, 1.0, 1.0], "scale": [0.5, 0.5 - 0.3 * lam, 0.5 - 0.3 * lam],
        "informative": [1.0 - 0.3 * lam, 1.0, 1.0],
    }  # fmt: skip


# Each (task kind, scenario)'s defaults; explicit dataset_params override them. Fixed before any method
# was run on them (never tune them to a method). The first scenario of a task kind is its default.
SCENARIOS: dict[str, dict[str, dict[str, Any]]] = {
    "classification": {
        "lazy": LAZY,
        "redundant": {"modalities": 3, **TODAY, "dim": 64},
        "complementary": {
            "modalities": 2, "strength": [3.0, 1.0], "noise": [0.5, 1.0], "informative": [1.0, 1.0], "dim": 64,
        },
    },
    "regression": {
        "complementary": {"modalities": 3, **TODAY, "weights": [1.2, 0.8, 0.8], "dim": 64},
        "redundant": {"modalities": 3, **TODAY, "dim": 64},
    },
    "segmentation": {"complementary": {"modalities": 3, **TODAY}},
}  # fmt: skip


def _qr(a: np.ndarray) -> np.ndarray:
    """Q of ``a``'s QR decomposition, on one BLAS thread: for these small matrices threads only cost (a
    128 x 128 QR took 6 ms on 2 threaded cores, 1 ms on one; over 100 ms beside a busy sweep). The same
    bits either way, so the data do not depend on the thread count."""
    with threadpool_limits(1, user_api="blas"):
        return np.linalg.qr(a)[0]


MAX_SAMPLES = 1_000_000  # per split
MAX_DIM = 65_536
MAX_VALUES = 1 << 28  # input values over the three splits: 1 GiB of float32
MAX_WIDTH = 4096  # hidden and feature sizes of the model
Dim = Annotated[int, Field(ge=1, le=MAX_DIM)]


class SyntheticParams(StrictModel):
    task: str = Field("classification", pattern="^(classification|regression|segmentation)$")
    scenario: str | None = None  # lazy | redundant | complementary; None: the task kind's default
    modalities: int = Field(3, ge=1, le=8)
    strength: list[float]  # signal scale per modality
    noise: list[float]  # Gaussian noise std per modality
    scale: list[float] = [1.0] * 8  # overall input scale per modality (small: small gradients, slow learning)
    informative: list[float]  # fraction of samples where the modality carries the signal
    weights: list[float] = []  # complementary regression: y = sum_m w_m u_m
    num_classes: int = Field(4, ge=2, le=10_000)  # classification (segmentation always has 3 labels)
    dim: Dim | list[Dim] = 64  # input size, one for all modalities or one per modality
    signal_dim: int = Field(4, ge=1, le=MAX_DIM)
    size: int = Field(16, ge=8, le=1024)  # segmentation image side
    # Bounded so that an absurd size is refused here, not by the allocator (see _lengths for the total).
    n_train: int = Field(1000, ge=8, le=MAX_SAMPLES)
    n_valid: int = Field(500, ge=4, le=MAX_SAMPLES)
    n_test: int = Field(500, ge=4, le=MAX_SAMPLES)
    imbalance: float | None = Field(None, ge=0, le=1)  # lazy classification: degree lambda (None: 1)
    data_seed: int | None = Field(None, ge=0)  # None: the run's seed draws the data

    @model_validator(mode="before")
    @classmethod
    def _scenario_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        task = data.get("task", "classification")
        scenarios = SCENARIOS.get(task)
        if scenarios is None:
            return data  # the task pattern reports it
        scenario = data.get("scenario") or next(iter(scenarios))
        if scenario not in scenarios:
            raise ValueError(f"scenario {scenario!r} is not one of {list(scenarios)} for task {task!r}")
        out = {**scenarios[scenario], **data, "scenario": scenario}
        if scenario == "lazy" and task == "classification":
            level = 1.0 if data.get("imbalance") is None else data["imbalance"]
            if isinstance(level, int | float) and 0 <= level <= 1:  # else the field's range reports it
                out = {**lazy_at(level), **data, "scenario": scenario, "imbalance": level}
        elif data.get("imbalance") is not None:
            raise ValueError(f"imbalance applies to the lazy classification scenario only, not {scenario!r}")
        return out

    @property
    def dims(self) -> list[int]:
        return [self.dim] * self.modalities if isinstance(self.dim, int) else list(self.dim)

    def input_values(self) -> int:
        per_sample = self.modalities * self.size**2 if self.task == "segmentation" else sum(self.dims)
        return (self.n_train + self.n_valid + self.n_test) * per_sample

    @model_validator(mode="after")
    def _lengths(self) -> SyntheticParams:
        used = ("strength", "noise", "scale", "informative")
        for name in used + (
            ("weights",) if self.task == "regression" and self.scenario == "complementary" else ()
        ):
            if len(getattr(self, name)) < self.modalities:
                raise ValueError(
                    f"{name} has {len(getattr(self, name))} values, need one per modality ({self.modalities})"
                )
        dims = self.dims
        if len(dims) < self.modalities:
            raise ValueError(f"dim has {len(dims)} values, need one per modality ({self.modalities})")
        if (values := self.input_values()) > MAX_VALUES:
            raise ValueError(f"the splits hold {values} input values (samples x input size, all modalities), "
                             f"more than {MAX_VALUES} (1 GiB of float32)")  # fmt: skip
        if self.signal_dim > min(dims):
            raise ValueError(f"signal_dim ({self.signal_dim}) must not exceed dim ({min(dims)})")
        if self.scenario == "lazy" and self.task == "classification" and self.num_classes > self.signal_dim:
            raise ValueError(f"lazy classification needs num_classes <= signal_dim ({self.signal_dim})")
        if self.scenario == "complementary" and self.task == "classification":
            if round(self.num_classes ** (1 / self.modalities)) ** self.modalities != self.num_classes:
                raise ValueError(
                    f"complementary classification needs num_classes = k ** modalities, got "
                    f"{self.num_classes} classes for {self.modalities} modalities"
                )
        return self


class SyntheticModelParams(StrictModel):
    hidden: int = Field(64, ge=1, le=MAX_WIDTH)  # MLP hidden width (vector tasks)
    feature_dim: int = Field(16, ge=1, le=MAX_WIDTH)  # per-modality feature size fed to the fusion head
    dropout: float = Field(0.0, ge=0, lt=1)
    width: int = Field(16, ge=1, le=1024)  # CNN width (segmentation)


@DATASETS.register
class Synthetic(DatasetAdapter):
    name = "synthetic"
    description = (
        "Generated N-modality data with a controllable imbalance (classification/regression/segmentation)"
    )
    access = (  # where to get it, its licence or access terms (`datasets`, missing-data message)
        "generated here (datasets/synthetic.py); nothing to download"
    )
    Params = SyntheticParams
    ModelParams = SyntheticModelParams
    needs_files = False
    seed_param = "data_seed"

    def __init__(self, params: SyntheticParams, root=None) -> None:
        super().__init__(params, root)
        self._cache: dict[str, ArraySplit] = {}

    @property
    def data_seed(self) -> int:
        """The draw's seed: ``data_seed``, which a run fills with its seed when null (0 outside a run)."""
        return 0 if self.params.data_seed is None else self.params.data_seed

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

    def split(self, name: str) -> ArraySplit:
        if name not in SPLIT_OFFSET:
            raise ValueError(f"unknown split {name!r}; valid: {', '.join(SPLIT_OFFSET)}")
        if name not in self._cache:
            n = getattr(self.params, f"n_{name}")
            generate = {
                "classification": self._classification,
                "regression": self._regression,
                "segmentation": self._segmentation,
            }[self.params.task]
            inputs, target = generate(n, np.random.default_rng([self.data_seed, SPLIT_OFFSET[name]]))
            ids = [f"{self.params.task}-{name}-{i:06d}" for i in range(len(target))]
            tensors = {m: torch.from_numpy(x).float() for m, x in inputs.items()}
            self._cache[name] = ArraySplit(tensors, torch.from_numpy(target), ids)
        return self._cache[name]

    # --- generators -----------------------------------------------------------------------------
    @functools.cached_property
    def _bases(self) -> list[np.ndarray]:
        """A fixed random orthogonal basis per modality (shared by all splits, so computed once)."""
        rng = np.random.default_rng([self.data_seed, 99])
        return [_qr(rng.normal(size=(d, d))) for d in self.params.dims[: self.params.modalities]]

    def _embed(self, signal: np.ndarray, m: int, basis: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        p = self.params
        n, r = signal.shape
        clutter = rng.normal(size=(n, p.dims[m] - r))
        x = np.concatenate([p.strength[m] * signal, clutter], axis=1) @ basis.T
        return (p.scale[m] * (x + p.noise[m] * rng.normal(size=x.shape))).astype(np.float32)

    def _shown(
        self, m: int, truth: np.ndarray, k: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """What modality m shows of ``truth`` (values in [0, k)): the truth on its informative samples,
        a random other value elsewhere; and the informative mask."""
        wrong = (truth + rng.integers(1, k, size=len(truth))) % k
        informative = rng.random(len(truth)) < self.params.informative[m]
        return np.where(informative, truth, wrong), informative

    def _classification(self, n: int, rng: np.random.Generator):
        p = self.params
        proto_rng = np.random.default_rng([self.data_seed, 98])
        if p.scenario == "lazy":  # orthonormal: a modality's difficulty is set by strength and noise alone
            square = proto_rng.normal(size=(p.modalities, p.signal_dim, p.signal_dim))
            prototypes = _qr(square).transpose(0, 2, 1)[:, : p.num_classes]
        else:
            prototypes = proto_rng.normal(size=(p.modalities, p.num_classes, p.signal_dim))
            prototypes /= np.linalg.norm(prototypes, axis=-1, keepdims=True)
        y = rng.integers(0, p.num_classes, size=n)
        k = round(p.num_classes ** (1 / p.modalities)) if p.scenario == "complementary" else p.num_classes
        inputs = {}
        for m, (name, basis) in enumerate(zip(self.modality_names, self._bases, strict=True)):
            # complementary: modality m shows the m-th base-k digit of y; otherwise y itself.
            truth = (y // k**m) % k if p.scenario == "complementary" else y
            shown, informative = self._shown(m, truth, k, rng)
            signal = prototypes[m, shown]
            if p.scenario == "lazy":  # no signal at all, only sample-specific clutter and noise
                signal = signal * informative[:, None]
            inputs[name] = self._embed(signal, m, basis, rng)
        return inputs, y.astype(np.int64)

    def _regression(self, n: int, rng: np.random.Generator):
        p = self.params
        if p.scenario == "complementary":  # a latent per modality, y their weighted sum
            u = rng.normal(size=(n, p.modalities))
            y = u @ np.asarray(p.weights[: p.modalities])
        else:  # one latent that every modality shows
            y = rng.normal(size=n)
            u = np.repeat(y[:, None], p.modalities, axis=1)
        y = np.clip(y, -3, 3)  # MOSI's range
        inputs = {}
        for m, (name, basis) in enumerate(zip(self.modality_names, self._bases, strict=True)):
            informative = rng.random(n) < p.informative[m]
            signal = np.zeros((n, p.signal_dim))
            signal[:, 0] = np.where(informative, u[:, m], rng.normal(size=n))
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
        dims = dict(zip(self.modality_names, p.dims, strict=False))
        return late_fusion_mlp({m: dims[m] for m in modalities}, mp.hidden, mp.feature_dim, out, mp.dropout)
