"""CMU-MOSEI sentiment from the MulT or the MMSA pickle: the MOSI adapter with MOSEI's files.

Files under the dataset root (``$MMBALANCE_DATA/mosei`` or ``--data-root``), one of:

- MulT (yaohungt/Multimodal-Transformer ``src/dataset.py``, read by BalanceBenchmark's
  ``balancemm/datasets/Mosei_dataset.py`` l.41-53 with ``data: mosei_senti``): ``mosei_senti_data.pkl``
  (aligned) or ``mosei_senti_data_noalign.pkl`` (BalanceBenchmark's ``if_align: false``,
  ``configs/dataset_config.yaml`` l.6-15: text 300, audio 74, vision 35); keys as MOSI's MulT file.
- MMSA (thuiar/MMSA): ``aligned_50.pkl`` / ``unaligned_50.pkl``, also where MMSA's archive unpacks them
  (``MOSEI/Processed/``); checked against the README's SHA-256 when the file holds the full release
  (16,326 training samples, ``config_regression.json``).

Targets (``dataset_params.target``): ``score``, the sentiment in [-3, 3] regressed with L1 and the MOSI
metrics (as CGGM/MulT treat MOSI); or ``binary``, BalanceBenchmark's task: class 1 when the score is
>= 0, else 0 (``Mosei_dataset.py`` ``acc2``, l.32-36 and l.76), cross-entropy, accuracy and F1.
The model is the MSA transformer of the MOSI preset (BalanceBenchmark's own MOSEI encoders are not
reproduced here).
"""

from __future__ import annotations

from typing import Literal

from mmbalance.common.registry import DATASETS
from mmbalance.datasets._cmu import ArraySplit
from mmbalance.datasets.mosi import MODALITIES, Mosi, MosiParams
from mmbalance.training.data import TaskInfo

__all__ = ["Mosei", "MoseiParams"]


class MoseiParams(MosiParams):
    target: Literal["score", "binary"] = "score"  # binary: BalanceBenchmark's acc2 classes (score >= 0)


@DATASETS.register
class Mosei(Mosi):
    name = "mosei"
    description = "CMU-MOSEI sentiment (text, audio, vision) from the MulT or MMSA pickle"
    access = (  # where to get it, its licence or access terms (`datasets`, missing-data message)
        "CMU-MOSEI (Zadeh et al. 2018) via the CMU Multimodal SDK; MulT's or MMSA's pickles; research use "
        "under the providers' terms"
    )
    Params = MoseiParams
    files = {
        ("mult", True): "mosei_senti_data.pkl",
        ("mult", False): "mosei_senti_data_noalign.pkl",
        ("mmsa", True): "aligned_50.pkl",
        ("mmsa", False): "unaligned_50.pkl",
    }
    # thuiar/MMSA README ("SHA-256 for feature files", commit a94e65d) for MOSEI/Processed/*.pkl.
    mmsa_sha256 = {
        "aligned_50.pkl": "45eccfb748a87c80ecab9bfac29582e7b1466bf6605ff29d3b338a75120bf791",
        "unaligned_50.pkl": "ad8b23d50557045e7d47959ce6c5b955d8d983f2979c7d9b7b9226f6dd6fec1f",
    }
    mmsa_train_samples = 16326  # MMSA config_regression.json datasetCommonParams.mosei
    mmsa_folder = "MOSEI"

    @property
    def task(self) -> TaskInfo:
        if self.params.target == "binary":
            return TaskInfo("classification", MODALITIES, 2, ("negative", "non-negative"))
        return TaskInfo("regression", MODALITIES, 1)

    def load_splits(self) -> dict[str, ArraySplit]:
        splits = super().load_splits()
        if self.params.target == "binary":
            for ds in splits.values():
                ds.target = (ds.target[:, 0] >= 0).long()
        return splits
