"""CMU-MOSI sentiment regression from the MulT or the MMSA pickle (CGGM's MOSI task).

Files under the dataset root (``$MMBALANCE_DATA/mosi`` or ``--data-root``), one of:

- MulT (yaohungt/Multimodal-Transformer, read by CGGM): ``mosi_data.pkl`` (aligned) or
  ``mosi_data_noalign.pkl``; per split ``text`` (N, T, 300) GloVe, ``audio`` (N, T, 5) COVAREP,
  ``vision`` (N, T, 20) FACET, ``labels`` (N, 1, 1) and optionally ``id`` (N, 3) bytes.
- MMSA (thuiar/MMSA): ``aligned_50.pkl`` or ``unaligned_50.pkl``; per split ``text`` (N, T, 768) BERT
  features or ``text_bert`` (N, 3, L) word ids / mask / segment ids, ``audio``, ``vision``,
  ``regression_labels`` (N,), ``id`` ("video$_$clip"), ``audio_lengths``/``vision_lengths``, ...

Both are ``{'train', 'valid', 'test'}`` dicts; the format is detected from the keys (``labels`` vs
``regression_labels``). Audio ``-inf`` is set to 0 as both loaders do. Sequence lengths and feature
sizes are read from the file (unaligned audio/vision lengths differ between sources). The full MMSA
release (1284 training samples) is checked against the SHA-256 in MMSA's README. ``text: text_bert``
serves MMSA's word ids as (3, L) int64 per item; the model then runs a local BERT
(``model_params.bert``, frozen unless ``finetune``) before the text encoder, as MMSA's ``use_bert``.
MMSA's ``audio_lengths`` / ``vision_lengths`` are not used: like the CGGM code, the model attends over
the padded steps. ``model_params.arch: lnln`` builds LNLN's network instead (``mmbalance/models/lnln.py``;
with ``text_bert`` its text encoder holds the BERT, trained unless ``finetune`` is false), which the
``lnln`` method trains; ``arch`` and ``lnln`` stay out of the MSA model's canonical spec (its run ids).
Task: regression of the sentiment score in [-3, 3], L1 loss, the MOSI metrics (MAE, Corr, Acc-7,
Acc-2, F1). Modalities in CGGM's order: text, audio, vision. Pickles are read with the restricted
unpickler (``mmbalance.training.safe_pickle``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import model_serializer

from mmbalance.common.registry import DATASETS
from mmbalance.datasets._cmu import ArraySplit, PreloadedAdapter, check_labels, read_split_arrays
from mmbalance.models.food import PretrainedSequenceEncoder, load_pretrained
from mmbalance.models.lnln import LNLNModel, LNLNModelParams, build_lnln_model
from mmbalance.models.transformer import MSAModel, MSAModelParams, build_msa_model
from mmbalance.training.data import SPLITS, DataError, DataMissingError, StrictModel, TaskInfo
from mmbalance.training.safe_pickle import load_pickle

__all__ = ["Mosi", "MosiParams", "MosiModelParams"]

MODALITIES = ("text", "audio", "vision")
FILES = {  # (source, aligned) -> file name
    ("mult", True): "mosi_data.pkl",
    ("mult", False): "mosi_data_noalign.pkl",
    ("mmsa", True): "aligned_50.pkl",
    ("mmsa", False): "unaligned_50.pkl",
}
# thuiar/MMSA README ("SHA-256 for feature files", commit a94e65d) for MOSI/Processed/*.pkl.
MMSA_SHA256 = {
    "aligned_50.pkl": "d3994fd25681f9c7ad6e9c6596a6fe9b4beb85ff7d478ba978b124139002e5f9",
    "unaligned_50.pkl": "78e0f8b5ef8ff71558e7307848fc1fa929ecb078203f565ab22b9daab2e02524",
}
SCORE_RANGE = (-3.0, 3.0)  # MOSI's sentiment scale: strongly negative to strongly positive
MMSA_TRAIN_SAMPLES = 1284  # MMSA config_regression.json; a file this size is taken as the full release


class MosiParams(StrictModel):
    source: Literal["auto", "mult", "mmsa"] = (
        "auto"  # auto: the MulT file (CGGM's input) if present, else MMSA
    )
    aligned: bool = True  # word-aligned sequences (mosi_data.pkl / aligned_50.pkl)
    text: Literal["text", "text_bert"] = "text"  # MMSA only: BERT features, or word ids (model_params.bert)
    file: str | None = None  # a file name under the root instead of the standard ones (format from keys)
    check_sha256: bool = True  # the full MMSA release must match MMSA's published hash


class MosiModelParams(MSAModelParams):
    bert: str | None = None  # text='text_bert': a local BERT folder or hub-cache name (no download)
    finetune: bool = False  # train that BERT too (MMSA's use_finetune); frozen, it is a feature extractor
    arch: Literal["msa", "lnln"] = "msa"  # msa: CGGM's transformer (the fields above); lnln: LNLN's network
    lnln: LNLNModelParams = LNLNModelParams()  # arch=lnln only

    @model_serializer(mode="wrap")
    def _msa_as_before(self, handler):
        # The MSA model's records keep their canonical spec (so their run ids) from before LNLN existed.
        doc = handler(self)
        if self.arch == "msa":
            doc.pop("arch")
            doc.pop("lnln")
        return doc


@DATASETS.register
class Mosi(PreloadedAdapter):
    name = "mosi"
    description = "CMU-MOSI sentiment regression (text, audio, vision) from the MulT or MMSA pickle"
    access = (  # where to get it, its licence or access terms (`datasets`, missing-data message)
        "CMU-MOSI (Zadeh et al. 2016) via the CMU Multimodal SDK; MulT's pickles (MulT README) or MMSA's "
        "(MMSA README); research use under the providers' terms"
    )
    Params = MosiParams
    ModelParams = MosiModelParams

    # --- files --------------------------------------------------------------------------------
    files = FILES  # (source, aligned) -> file name; MOSEI overrides these four class attributes
    mmsa_sha256 = MMSA_SHA256
    mmsa_train_samples = MMSA_TRAIN_SAMPLES
    mmsa_folder = "MOSI"  # MMSA's downloads unpack as MOSI/Processed/<file>
    score_range = SCORE_RANGE  # CH-SIMS: [-1, 1]

    def candidates(self) -> list[str]:
        """File names under the root, in the order they are looked for. An MMSA file is also found where
        MMSA's archive puts it: ``Processed/``, ``MOSI/Processed/`` under the root, or ``MOSI/Processed/``
        beside it (``--data-root`` pointing at the folder MMSA unpacked into)."""
        p = self.params
        if p.file is not None:
            return [p.file]
        sources = ("mult", "mmsa") if p.source == "auto" else (p.source,)
        names = []
        for s in sources:
            name = self.files[s, p.aligned]
            names.append(name)
            if s == "mmsa":
                folder = f"{self.mmsa_folder}/Processed/{name}"
                names += [f"Processed/{name}", folder, f"../{folder}"]
        return names

    def _found(self) -> str:
        names = self.candidates()
        return next((n for n in names if self._under_root(n).is_file()), names[0])

    def _under_root(self, name: str) -> Path:
        # lexically: "../MOSI/..." must resolve even when the root folder itself does not exist
        return Path(os.path.normpath(self.root / name))

    @property
    def path(self) -> Path:
        """The file this configuration reads: the first candidate that exists."""
        return self._under_root(self._found())

    def expected_files(self) -> list[Path]:
        return [Path(self._found())]

    def layout_help(self) -> str:
        mult, mmsa = self.files["mult", True], self.files["mmsa", True]
        return (
            " or ".join(self.candidates())
            + f" (MulT: {mult.replace('.pkl', '[_noalign].pkl')}; MMSA: [un]{mmsa}, also in "
            f"{self.mmsa_folder}/Processed/)"
        )

    def verify(self) -> None:
        if not self.path.is_file():
            raise DataMissingError(
                f"{self.name}: none of {', '.join(self.candidates())} found under {self.root}. Expected layout: "
                f"{self.layout_help()} (set --data-root or $MMBALANCE_DATA)"
            )

    # --- loading ------------------------------------------------------------------------------
    def load_splits(self) -> dict[str, ArraySplit]:
        path = self.path
        data = load_pickle(path)
        train = data.get("train") if isinstance(data, dict) else None
        if not isinstance(train, dict):
            raise DataError(f"{path}: expected a dict with splits {list(SPLITS)} of dicts")
        if "regression_labels" in train:
            fmt, label_key, text_key = "mmsa", "regression_labels", self.params.text
        elif "labels" in train:
            fmt, label_key, text_key = "mult", "labels", "text"
            if self.params.text != "text":
                raise DataError(f"{path}: text={self.params.text!r} needs an MMSA file; this is a MulT file")
        else:
            found = sorted(train)
            raise DataError(
                f"{path}: neither 'labels' (MulT) nor 'regression_labels' (MMSA) in split 'train' ({found=})"
            )
        if fmt == "mmsa":
            self._check_release(path, len(train[label_key]))
        keys = {"text": text_key, "audio": "audio", "vision": "vision"}
        splits = {}
        for split in SPLITS:
            features, labels, ids = read_split_arrays(data, split, keys, label_key, str(path))
            if labels.size != len(labels):
                raise DataError(
                    f"{path}: {split}/{label_key} must hold one score per sample, got shape {labels.shape}"
                )
            check_labels(labels, f"{path}: {split}/{label_key}", *self.score_range)
            if text_key == "text_bert" and features["text"].shape[1] != 3:
                raise DataError(f"{path}: {split}/text_bert must be (N, 3, L) (ids, mask, segments), "
                                f"got {features['text'].shape}")  # fmt: skip
            inputs = {m: torch.from_numpy(x) for m, x in features.items()}
            if text_key == "text_bert":  # (N, 3, L) ids / mask / segments, the layout BERT encoders read
                inputs["text"] = inputs["text"].round().long()
            splits[split] = ArraySplit(
                inputs, torch.from_numpy(labels.astype(np.float32).reshape(-1, 1)), ids
            )
            self.read_extras(data[split], splits[split], f"{path}: {split}")
        self._check_dims(path, splits)
        return splits

    def read_extras(self, part: dict, ds: ArraySplit, where: str) -> None:
        """What a subclass keeps of a split beyond features and labels (CH-SIMS: the per-modality labels)."""

    def _check_release(self, path: Path, n_train: int) -> None:
        expected = self.mmsa_sha256.get(path.name)
        if not self.params.check_sha256 or expected is None or n_train != self.mmsa_train_samples:
            return  # not the full release (a subset or a fixture): nothing published to compare with
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != expected:
            raise DataError(
                f"{path}: SHA-256 {h.hexdigest()} differs from MMSA's published {expected}; the file is "
                "corrupt or not MMSA's release (dataset_params.check_sha256=false uses it anyway)"
            )

    def _check_vocabulary(self, vocab_size: int, bert: str) -> None:
        """Word ids index BERT's embedding table: an id outside it is a tokenizer/BERT mismatch."""
        for split in SPLITS:
            ids = self.split(split).inputs["text"][:, 0]  # (N, L) word ids
            bad = ((ids < 0) | (ids >= vocab_size)).any(dim=1)
            if bad.any():
                i = int(bad.nonzero()[0])
                word = int(ids[i][(ids[i] < 0) | (ids[i] >= vocab_size)][0])
                raise DataError(
                    f"{self.path}: {split}/text_bert sample {i} has word id {word}, outside the vocabulary of "
                    f"{bert} ({vocab_size} words); use the BERT whose tokenizer made the ids (MMSA: "
                    "bert-base-uncased)"
                )

    @staticmethod
    def _check_dims(path: Path, splits: dict[str, ArraySplit]) -> None:
        for m in MODALITIES:
            dims = {s: tuple(ds.inputs[m].shape[2:]) for s, ds in splits.items()}
            if len(set(dims.values())) > 1:
                raise DataError(f"{path}: {m} feature size differs between splits: {dims}")

    # --- contract -----------------------------------------------------------------------------
    @property
    def task(self) -> TaskInfo:
        return TaskInfo("regression", MODALITIES, 1)

    def input_dims(self) -> dict[str, int]:
        return {m: x.shape[-1] for m, x in self.split("train").inputs.items()}

    def build_model(self, model_params: MosiModelParams, modalities: Sequence[str]) -> MSAModel | LNLNModel:
        dims = self.input_dims()
        bert = None
        if "text" in modalities and self.params.text == "text_bert":
            if model_params.bert is None:
                raise DataError(
                    f"{self.name}: text='text_bert' serves BERT word ids (3, L); set model_params.bert to a local "
                    "BERT folder (MMSA uses bert-base-uncased, bert-base-chinese for SIMS), or use text='text' "
                    "(MMSA's BERT features)"
                )
            bert = load_pretrained(model_params.bert)
            self._check_vocabulary(bert.config.vocab_size, model_params.bert)
            dims["text"] = bert.config.hidden_size
        if model_params.arch == "lnln":  # BERT inside LNLN's text encoder, trained unless finetune is false
            train = self.split("train").inputs
            lengths = {m: train[m].shape[-1 if m == "text" and bert is not None else 1] for m in modalities}
            return build_lnln_model({m: dims[m] for m in modalities}, lengths, self.task.num_classes,
                                    model_params.lnln, bert, model_params.finetune)  # fmt: skip
        model = build_msa_model({m: dims[m] for m in modalities}, self.task.num_classes, model_params)
        if bert is not None:  # BERT's last_hidden_state feeds the text encoder (frozen unless finetune)
            model.encoders["text"] = PretrainedSequenceEncoder(
                bert, model.encoders["text"], model_params.finetune
            )
        return model
