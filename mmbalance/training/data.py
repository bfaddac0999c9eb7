"""The dataset contract: what an adapter in ``datasets/`` provides to the runner.

An adapter is a class registered with ``@DATASETS.register``. It declares its task
(``TaskInfo``), builds its paper model, and serves its splits as torch datasets whose items
are ``(inputs: {modality: Tensor}, target: Tensor, id: str)``; ``collate`` turns a list of
items into a ``Batch``.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from mmbalance.common.core import (  # noqa: F401 (re-exported: adapters import them from here)
    DATA_ROOT_ENV,
    FIXTURE_MARK,
    DataError,
    DataMissingError,
    NoParams,
    StrictModel,
    default_data_root,
)
from mmbalance.models.base import MultimodalModel
from mmbalance.training import metrics

TaskKind = Literal["classification", "regression", "segmentation"]
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class TaskInfo:
    kind: TaskKind
    modalities: tuple[str, ...]
    num_classes: int  # classes (classification, segmentation); output size (regression)
    class_names: tuple[str, ...] = ()
    # Segmentation only: region name -> label values that make it up (BraTS WT/TC/ET).
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def primary_metric(self) -> str:
        return metrics.PRIMARY[self.kind][0]

    @property
    def higher_is_better(self) -> bool:
        return metrics.PRIMARY[self.kind][1]


@dataclass
class Batch:
    inputs: dict[str, Tensor]
    target: Tensor
    ids: list[str]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            {m: x.to(device, non_blocking=non_blocking) for m, x in self.inputs.items()},
            self.target.to(device, non_blocking=non_blocking),
            self.ids,
        )

    def __len__(self) -> int:
        return len(self.ids)


def collate(items: Sequence[tuple[dict[str, Tensor], Tensor, str]] | Batch) -> Batch:
    if isinstance(items, Batch):  # fetched whole by the split's ``__getitems__`` (``ArraySplit``)
        return items
    modalities = items[0][0].keys()
    return Batch(
        {m: torch.stack([it[0][m] for it in items]) for m in modalities},
        torch.stack([torch.as_tensor(it[1]) for it in items]),
        [it[2] for it in items],
    )


def _noting_access(verify: Callable[[DatasetAdapter], None]) -> Callable[[DatasetAdapter], None]:
    @functools.wraps(verify)
    def checked(self: DatasetAdapter) -> None:
        try:
            verify(self)
        except DataMissingError as e:
            if not self.access or "Where to get it:" in str(e):
                raise
            raise type(e)(f"{e}\nWhere to get it: {self.access}") from None

    return checked


class DatasetAdapter:
    """Base class of every dataset adapter.

    Subclasses set ``name``, ``description``, ``Params`` (pydantic, validated spec field
    ``dataset_params``) and ``ModelParams`` (spec field ``model_params``), and implement
    ``task``, ``split`` and ``build_model``. Real datasets also implement ``expected_files``.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Params: ClassVar[type[StrictModel]] = NoParams
    ModelParams: ClassVar[type[StrictModel]] = NoParams
    needs_files: ClassVar[bool] = True  # False for generated data
    access: ClassVar[str] = ""  # where to get the data, its licence or access terms (a literal: listings)
    # The Params field (a seed of the data or of its split) that the run's seed fills when it is null, so
    # that seeds vary the data where the data allows (synthetic draws, mfeat's split); None: fixed data.
    seed_param: ClassVar[str | None] = None

    def __init__(self, params: StrictModel, root: Path | None = None) -> None:
        self.params = params
        self.root = Path(root) if root is not None else default_data_root() / self.name

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every adapter's missing-data message ends with where to get the data (``access``), whether it
        keeps the base ``verify`` or writes its own (most real formats do)."""
        super().__init_subclass__(**kwargs)
        if "verify" in cls.__dict__:
            cls.verify = _noting_access(cls.__dict__["verify"])

    @property
    def fixture(self) -> bool:
        """The files are ``mmbalance.fixtures``' tiny copies of the real format (marked by their writer)."""
        return self.needs_files and (self.root / FIXTURE_MARK).is_file()

    # --- what the dataset is -------------------------------------------------------------
    @property
    def task(self) -> TaskInfo:
        raise NotImplementedError

    def expected_files(self) -> list[Path]:
        """Files (relative to ``self.root``) that must exist for this configuration."""
        return []

    def verify(self) -> None:
        """Raise ``DataMissingError`` naming every missing file and the expected layout."""
        missing = [p for p in self.expected_files() if not (self.root / p).exists()]
        if missing:
            listing = "\n  ".join(str(self.root / p) for p in missing)
            raise DataMissingError(
                f"{self.name}: missing {len(missing)} file(s) under {self.root}:\n  {listing}\n"
                f"Expected layout: {self.layout_help()} (set --data-root or ${DATA_ROOT_ENV})"
                + (f"\nWhere to get it: {self.access}" if self.access else "")
            )

    def layout_help(self) -> str:
        return ", ".join(str(p) for p in self.expected_files())

    # --- data ------------------------------------------------------------------------------
    def split(self, name: str) -> Dataset:
        """The torch dataset of split ``name`` (one of ``SPLITS``)."""
        raise NotImplementedError

    def reads_items(self) -> bool:
        """Whether items are read (and decoded) from files as they are drawn, rather than held in memory:
        then loader worker processes overlap that with the GPU's step (``runner.auto_workers``)."""
        return False

    def fingerprint(self, name: str) -> str:
        """SHA-256 of the split's ids and labels: the same file content gives the same value."""
        h = hashlib.sha256()
        ds = self.split(name)
        for i in range(len(ds)):
            _, target, item_id = ds[i]
            h.update(item_id.encode())
            h.update(torch.as_tensor(target).cpu().numpy().tobytes())
        return h.hexdigest()

    def data_files(self) -> list[Path]:
        """Files and folders (relative to ``self.root``) whose bytes the content fingerprint covers:
        every file this configuration reads. Default: ``expected_files()``."""
        return self.expected_files()

    def content_digest(self, record: bool = True) -> str:
        """SHA-256 over the paths and content hashes of every file under ``data_files()`` (cached per
        file by size and mtime, see ``mmbalance.training.fingerprint``); "" for generated data and for an adapter
        that lists no files (mfeat reads a package's copy or the UCI files: same data, different bytes)."""
        files = self.data_files() if self.needs_files else []
        if not files:
            return ""
        from mmbalance.training.fingerprint import manifest

        return manifest(self.root, files, record=record).digest

    # --- model, loss, metrics --------------------------------------------------------------
    def build_model(self, model_params: StrictModel, modalities: Sequence[str]) -> MultimodalModel:
        raise NotImplementedError

    def check_train_batches(self, n: int, batch_size: int) -> None:
        """Raise ``DataError`` if ``n`` training items in batches of ``batch_size`` cannot train this
        adapter's model (called before anything of the run is written). Default: any batch will do."""

    def loss_fn(self) -> Callable[[Tensor, Tensor], Tensor]:
        """Task loss ``(pred, target) -> scalar``: CE, L1 (MOSI, as MulT/CGGM) or Dice + CE (MONAI)."""
        kind = self.task.kind
        if kind == "classification":
            return nn.CrossEntropyLoss()
        if kind == "regression":
            return nn.L1Loss()
        from monai.losses import DiceCELoss  # MONAI only where segmentation needs it (a 4 s import)

        dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
        return lambda pred, target: dice_ce(pred, target.unsqueeze(1))

    def compact_prediction(self, pred: Tensor) -> Tensor:
        """What evaluation keeps of one batch's prediction until ``evaluate`` sees the whole split.
        Default: all of it. BraTS keeps the argmax label map (a split's logits would not fit in memory)."""
        return pred

    def evaluate(self, pred: Tensor, target: Tensor, ids: list[str]) -> dict[str, float]:
        """Metrics of a whole split from the concatenated predictions."""
        kind = self.task.kind
        if kind == "classification":
            return metrics.classification_metrics(pred, target)
        if kind == "regression":
            return metrics.mosi_metrics(pred, target)
        return metrics.dice_per_region(pred.argmax(dim=1), target, self.task.regions)

    def primary_value(self, pred: Tensor, target: Tensor, ids: list[str]) -> float:
        """The split's primary metric alone, equal to ``evaluate(...)[primary_metric]`` but without the
        other metrics (``modality_eval`` scores 2^M + 9M + 27 variants of the test split per run); an adapter
        that evaluates its own way (BraTS: Dice per volume) is asked through ``evaluate``."""
        if type(self).evaluate is DatasetAdapter.evaluate:
            return metrics.split_primary(self.task.kind, pred, target, self.task.regions)
        return self.evaluate(pred, target, ids)[self.task.primary_metric]

    def unknown_token(self) -> int:
        """The word id a removed word becomes in LNLN's incomplete-data protocol (``mmbalance/training/incomplete.py``),
        for inputs of BERT word ids: 100, [UNK] of the bert-base vocabularies (LNLN's); an adapter with its
        own tokenizer returns that tokenizer's."""
        return 100

    def describe(self) -> dict[str, Any]:
        t = self.task
        return {"name": self.name, "task": t.kind, "modalities": list(t.modalities), "classes": t.num_classes}
