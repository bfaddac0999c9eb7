"""CH-SIMS (Yu et al., ACL 2020) Chinese sentiment regression from MMSA's pickle, with its per-modality labels.

File: ``unaligned_39.pkl`` under the dataset root (``$MMBALANCE_DATA/sims`` or ``--data-root``), also where
MMSA's archive unpacks it (``SIMS/Processed/``, the path LNLN's ``configs/train_sims.yaml`` reads). A dict
``{'train', 'valid', 'test'}``, each split with MMSA's keys (thuiar/MMSA README, ``data_loader.py``
``__init_mosi``, used for SIMS too): ``text`` (N, 39, 768) BERT features, ``text_bert`` (N, 3, 39) word ids /
mask / segment ids (bert-base-chinese), ``audio`` (N, 400, 33), ``vision`` (N, 55, 709), ``audio_lengths``,
``vision_lengths``, ``raw_text``, ``id``, ``regression_labels`` (N,) in [-1, 1] and, unique to SIMS, one label
per modality: ``regression_labels_T`` / ``_A`` / ``_V`` (LNLN's ``core/dataset.py`` l.47-49 reads them too).
The full release (1,368 training samples, MMSA ``config_regression.json``) is checked against the SHA-256 in
MMSA's README.

Task: regression of the multimodal label, L1 loss, the SIMS metrics of MMSA (``metrics.sims_metrics``: Acc-2,
Acc-3, Acc-5, weighted F1, MAE, Corr on values clipped to [-1, 1]). The per-modality labels are kept beside
the target (``ArraySplit.modality_targets``); ``modality_labels`` scores each against the multimodal label,
which the report sets beside each modality's Shapley contribution. Everything else (text as features or word
ids through a local BERT, the MSA transformer or LNLN as the model) is the MOSI adapter's.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from mmbalance.common.registry import DATASETS
from mmbalance.datasets._cmu import ArraySplit, check_labels
from mmbalance.datasets.mosi import MODALITIES, Mosi, MosiParams
from mmbalance.training import metrics
from mmbalance.training.data import DataError, TaskInfo

__all__ = ["Sims", "SimsParams", "MODALITY_LABELS"]

FILE = "unaligned_39.pkl"
MODALITY_LABELS = {
    "text": "regression_labels_T",
    "audio": "regression_labels_A",
    "vision": "regression_labels_V",
}


class SimsParams(MosiParams):
    source: Literal["mmsa"] = "mmsa"  # MMSA's release is the only one
    aligned: Literal[False] = False  # SIMS ships unaligned only


@DATASETS.register
class Sims(Mosi):
    name = "sims"
    description = (
        "CH-SIMS Chinese sentiment regression (text, audio, vision) with per-modality labels, MMSA pickle"
    )
    access = (  # where to get it, its licence or access terms (`datasets`, missing-data message)
        "CH-SIMS (Yu et al., ACL 2020): the processed features from thuiar/MMSA (README's download links, "
        "SIMS/Processed/unaligned_39.pkl); research use under the providers' terms"
    )
    Params = SimsParams
    files = {("mmsa", False): FILE}
    # thuiar/MMSA README ("SHA-256 for feature files", commit a94e65d) for SIMS/Processed/unaligned_39.pkl.
    mmsa_sha256 = {FILE: "c9e20c13ec0454d98bb9c1e520e490c75146bfa2dfeeea78d84de047dbdd442f"}
    mmsa_train_samples = 1368  # MMSA config_regression.json datasetCommonParams.sims
    mmsa_folder = "SIMS"
    score_range = (-1.0, 1.0)

    def layout_help(self) -> str:
        return " or ".join(self.candidates()) + " (MMSA's SIMS/Processed/unaligned_39.pkl)"

    def read_extras(self, part: dict, ds: ArraySplit, where: str) -> None:
        """Keep ``regression_labels_T/A/V`` as ``ds.modality_targets`` ({modality: (N,)}), checked like the
        multimodal label."""
        missing = [k for k in MODALITY_LABELS.values() if k not in part]
        if missing:
            raise DataError(f"{where} lacks the per-modality label(s) {missing} of CH-SIMS")
        ds.modality_targets = {}
        for m, key in MODALITY_LABELS.items():
            y = np.asarray(part[key])
            if y.dtype.kind not in "biuf" or y.size != len(ds):
                raise DataError(
                    f"{where}/{key} must hold one number per sample ({len(ds)}), got {y.dtype} {y.shape}"
                )
            check_labels(y.reshape(-1), f"{where}/{key}", *self.score_range)
            ds.modality_targets[m] = torch.from_numpy(y.astype(np.float32).reshape(-1))

    @property
    def task(self) -> TaskInfo:
        return TaskInfo("regression", MODALITIES, 1)

    def evaluate(self, pred: Tensor, target: Tensor, ids: list[str]) -> dict[str, float]:
        return metrics.sims_metrics(pred, target)

    def modality_labels(self, split: str = "test") -> dict[str, dict[str, float]]:
        """How well each modality's own label predicts the multimodal one on ``split``: the SIMS metrics
        (MAE, Corr, Acc-2, ...) of ``regression_labels_m`` taken as the prediction of ``regression_labels``.
        The ground truth of how much sentiment the annotators found in that modality alone."""
        ds = self.split(split)
        return {m: metrics.sims_metrics(y, ds.target) for m, y in ds.modality_targets.items()}
