"""Modality valuation (sample level): value each modality's contribution to each training sample
by a Shapley split of the prediction's correctness, then re-sample the samples where a modality
contributes little, with only that modality present.

Reference: Y. Wei, R. Feng, Z. Wang, D. Hu, "Enhancing Multimodal Cooperation via Sample-level
Modality Valuation", CVPR 2024. Official code: GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation
@ 7ed12b0: ``code/sample_level.py`` (``execute_modulation`` lines 75-153, ``train_epoch`` 156-181,
``main`` 321-335), ``code/datasets/dataloader.py::AV_KS_Dataset_sample_level`` (lines 152-186),
``code/models/models.py::AVClassifier.forward`` (lines 62-70) and ``exec_drop`` (74-86).

At the start of every epoch from ``warmup`` on (the code values at the end of epoch warmup-1 and
each later epoch and trains the next epoch on the result, ``sample_level.py:321-335``: the same
model)::

    for every training sample, model in eval mode:
        v(S) = |S| * [argmax head(fusion(f with the modalities outside S zeroed)) == y]
               # M = 2: value_all = 2, value_a = value_v = 1 (sample_level.py:107-115)
        phi_m = Shapley share of m in v            # 117-118: (v_a + v_all - v_v) / 2
    the epoch's samples: every sample once (nothing dropped), plus for each (sample, m) copies
    that keep only modality m:  1 if 0.4 < phi_m < 1,  2 if -0.1 < phi_m < 0.4,  3 if phi_m < -0.1
                                (dataloader.py:154-186; phi_m = 1 or 0.4 exactly: none)
    train on them, shuffled, with CE(head(fusion(features, dropped ones zeroed)), y)   # models.py:62-70

Epochs before ``warmup`` train jointly on the plain train split. Defaults: ``warmup`` 5,
(``sample_level.py:44``), Adam lr 5e-5, 60 epochs, batch 64 (sample_level.py:41-58).

Where this file generalises:

- **M modalities**: v(S) = |S| x correctness, the M = 2 values of the code, split by the exact
  Shapley formula (``method_parts.shapley_values``); a copy keeps one modality.
- It needs a fusion that concatenates the features (the code zeroes a modality's feature rows
  before ``torch.cat``); other fusions are refused.
- **Classification only**: the value is the correctness of the arg-max; regression and
  segmentation (a per-pixel value would be a new design) are refused.
- The code's modality-level variant (``modality_level.py``) is not implemented.
"""

from __future__ import annotations

import itertools

import torch
from pydantic import Field
from torch import Tensor

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Epochs
from mmbalance.models.base import MultimodalModel, Output
from mmbalance.training.data import Batch, StrictModel
from mmbalance.training.method import Resampling, RunContext
from mmbalance.training.method_parts import logits_with_features_zeroed, require_concat_fusion, shapley_values

__all__ = ["ValuationParams", "Valuation", "copies", "sample_contributions"]

KEEP_ALL = -1  # tag of an original sample; a copy's tag is the index of the modality it keeps


class ValuationParams(StrictModel):
    warmup: int = Field(5, ge=0)  # plain joint epochs before the first valuation (sample_level.py:44)


def copies(phi: float) -> int:
    """Number of extra single-modality copies of a sample for a contribution phi (dataloader.py:156-186)."""
    if 0.4 < phi < 1:
        return 1
    if -0.1 < phi < 0.4:
        return 2
    if phi < -0.1:
        return 3
    return 0


@torch.no_grad()
def sample_contributions(
    model: MultimodalModel, features: dict[str, Tensor], target: Tensor
) -> dict[str, Tensor]:
    """Per-sample Shapley contribution of each modality to v(S) = |S| x correctness (sample_level.py:86-118)."""
    mods = list(features)
    n = target.shape[0]
    value = {}
    for size in range(1, len(mods) + 1):
        for subset in itertools.combinations(mods, size):
            keep = {m: torch.full((n,), m in subset, device=target.device) for m in mods}
            correct = logits_with_features_zeroed(model, features, keep)[0].argmax(dim=1) == target
            value[frozenset(subset)] = size * correct.float()
    return shapley_values(value, mods)


@METHODS.register
class Valuation(Resampling):
    name = "valuation"
    Params = ValuationParams
    search_space = {
        "warmup": Epochs(0.05, 0.3, minimum=1, source="sample_level.py: 5 of 60 epochs; suite 1 of 12"),
    }
    tasks = frozenset({"classification"})
    reference = "Wei et al., CVPR 2024 (sample-level modality valuation); GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation"

    def build(self, ctx: RunContext) -> None:
        require_concat_fusion(ctx.model, "valuation")  # models.py:62-70 zeroes rows before torch.cat
        self.modalities = list(ctx.modalities)
        self.mean_phi = [0.0] * len(ctx.modalities)
        self.n_samples = 0

    def epoch_samples(self, ctx: RunContext) -> list[list[tuple[int, int]]] | None:
        if ctx.epoch < self.p.warmup:
            return None
        model = ctx.model
        model.eval()
        phis = {m: [] for m in ctx.modalities}
        for batch in ctx.iterate("train"):  # unshuffled: position = index in the train split
            out = model(batch.inputs)
            for m, phi in sample_contributions(model, out.features, batch.target).items():
                phis[m].append(phi.cpu())
        phi = torch.stack([torch.cat(phis[m]) for m in ctx.modalities], dim=1)  # (N, M)
        samples = [(i, KEEP_ALL) for i in range(phi.shape[0])]
        for i, row in enumerate(phi.tolist()):
            samples += [(i, j) for j, p in enumerate(row) for _ in range(copies(p))]
        self.mean_phi, self.n_samples = phi.mean(0).tolist(), len(samples)
        return [samples]

    def forward(self, model: MultimodalModel, batch: Batch, ctx: RunContext) -> Output:
        out = model(batch.inputs)
        if not ctx.training or ctx.tags is None:
            return out
        keep = {m: (ctx.tags == KEEP_ALL) | (ctx.tags == j) for j, m in enumerate(ctx.modalities)}
        pred, fused = logits_with_features_zeroed(model, out.features, keep)
        return Output(pred, out.features, fused, out.aux)

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        out = {f"phi/{m}": p for m, p in zip(self.modalities, self.mean_phi, strict=True)}
        return out | {"samples": float(self.n_samples)}
