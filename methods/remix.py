"""Data Remixing: after a joint warm-up, every epoch assigns each training sample to the modality
that is least confident on it and trains that modality alone on it, one modality subset after
the other.

Reference: X. Ma et al., "Improving Multimodal Learning Balance and Sufficiency through Data
Remixing", ICML 2025. Official code: MatthewMaxy/Remix_ICML2025 @ 80898aa, ``train.py``:
``kl_divergence`` lines 52-57, ``remix`` 60-99, ``train_epoch`` (warm-up) 101-125,
``special_train_epoch`` 127-174, ``main`` 238-247; model ``models/models.py:38-67``; run
``scripts/run_train.sh``.

Warm-up epochs (``epoch < warmup``, train.py:240-242)::

    loss = CE(head([f_a; f_v]), y) + alpha CE(h_a(f_a), y) + beta CE(h_v(f_v), y)   # 113-118

Later epochs (train.py:244-246), with the model in eval mode first (remix, 60-99)::

    KL_m(i) = sum_c p_m(c) log2(p_m(c) / (1/C)),  p_m = softmax(h_m(f_m(x_i))) clipped at 1e-9
    sample i -> the subset of argmin_m KL_m(i)      (audio if KL_a < KL_v, else video: ties go to video)
    then for each subset (video first, then audio; each shuffled and batched on its own, 127-174):
        f_other <- 0                                 # models.py:55-59, mode "video" / "audio"
        loss = CE(head([f_a; f_v]), y) + gamma CE(h_m(f_m), y)

Defaults: ``warmup`` 10 (``run_train.sh``; argparse 10), ``alpha = beta = 0.5``, ``gamma1 =
gamma2 = 1``, Adam lr 5e-5, 60 epochs, batch 64 (train.py:32-47).

Where this file generalises:

- **M modalities**: a sample goes to the modality with the smallest KL to uniform (ties to the
  later modality, as the code's ``else``); the subsets run in reverse modality order (the
  code's video-then-audio for (audio, video)). ``alpha``/``beta`` become one ``warmup_weight``
  and ``gamma1``/``gamma2`` one ``gamma`` (the code's defaults are equal).
- ``h_m`` are ``UnimodalHeads`` (the model's ``unimodal_classifier``; the code's ``head_audio``
  is one Linear: the audio-visual ResNet model's ``unimodal_head: linear``, two layers otherwise); the fused prediction zeroes a modality's rows of a concat fusion, so other
  fusions are refused.
- **Classification only**: the assignment compares class distributions with the uniform one.
- The KL uses the task's number of classes (the code hard-codes 6, CREMA-D's).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Epochs, Float
from mmbalance.models.base import MultimodalModel, Output
from mmbalance.training.data import Batch, StrictModel
from mmbalance.training.method import Resampling, RunContext
from mmbalance.training.method_parts import (
    UnimodalHeadsMethod,
    logits_with_features_zeroed,
    require_concat_fusion,
)

__all__ = ["RemixParams", "Remix", "kl_to_uniform", "assign"]


class RemixParams(StrictModel):
    warmup: int = Field(10, ge=0)  # joint epochs before the first remix (run_train.sh, train.py:36)
    warmup_weight: float = Field(0.5, ge=0)  # alpha = beta, unimodal losses in warm-up (train.py:43-44)
    gamma: float = Field(1.0, ge=0)  # gamma1 = gamma2, the trained modality's unimodal loss (train.py:45-46)


def kl_to_uniform(logits: Tensor) -> Tensor:
    """Per sample ``sum_c p log2(p * C)`` with p = softmax, clipped at 1e-9 (train.py:52-57)."""
    p = logits.softmax(dim=1).clamp(1e-9, 1.0)
    return (p * torch.log2(p * p.shape[1])).sum(dim=1)


def assign(kl: Tensor) -> Tensor:
    """(N, M) KL values -> (N,) index of the least confident modality; ties go to the later one."""
    flipped = kl.flip(1).argmin(dim=1)  # argmin takes the first minimum; flipped, the last
    return kl.shape[1] - 1 - flipped


@METHODS.register
class Remix(Resampling, UnimodalHeadsMethod):
    name = "remix"
    Params = RemixParams
    search_space = {
        "warmup": Epochs(0.05, 0.4, minimum=1, source="run_train.sh: 10 of 60 epochs; suite 2 of 12"),
        "warmup_weight": Float(
            0.1, 2.0, log=True, source="around train.py's alpha = beta = 0.5 (no published grid)"
        ),
        "gamma": Float(0.25, 4.0, log=True, source="around train.py's gamma 1 (no published grid)"),
    }
    tasks = frozenset({"classification"})
    reference = "Ma et al., ICML 2025 (Data Remixing); MatthewMaxy/Remix_ICML2025 train.py"

    def build(self, ctx: RunContext) -> None:
        super().build(ctx)
        require_concat_fusion(ctx.model, "remix")  # models.py:55-61 zeroes a or v before torch.cat
        self.subset_sizes = [0] * len(ctx.modalities)

    def epoch_samples(self, ctx: RunContext) -> list[list[tuple[int, int]]] | None:
        if ctx.epoch < self.p.warmup:
            return None
        model = ctx.model
        model.eval()
        kls = []
        with torch.no_grad():
            for batch in ctx.iterate("train"):  # unshuffled: position = index in the train split
                logits = self.heads(model, model(batch.inputs))
                kls.append(torch.stack([kl_to_uniform(logits[m]) for m in ctx.modalities], dim=1).cpu())
        owner = assign(torch.cat(kls)).tolist()
        parts = [[(i, j) for i, o in enumerate(owner) if o == j] for j in range(len(ctx.modalities))]
        self.subset_sizes = [len(p) for p in parts]
        return parts[::-1]  # video, then audio (train.py:136-171)

    def forward(self, model: MultimodalModel, batch: Batch, ctx: RunContext) -> Output:
        out = super().forward(model, batch, ctx)
        if ctx.training and ctx.tags is not None:
            keep = {m: ctx.tags == j for j, m in enumerate(ctx.modalities)}
            out.pred, out.fused = logits_with_features_zeroed(model, out.features, keep)
        return out

    def loss(self, out: Output, batch: Batch, ctx: RunContext) -> Tensor:
        fused = ctx.task_loss(out.pred, batch.target)
        if ctx.tags is None:  # warm-up
            uni = sum(ctx.task_loss(out.modality_logits[m], batch.target) for m in ctx.modalities)
            return fused + self.p.warmup_weight * uni
        m = ctx.modalities[int(ctx.tags[0])]  # a batch never mixes subsets
        return fused + self.p.gamma * ctx.task_loss(out.modality_logits[m], batch.target)

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        return {f"subset/{m}": float(n) for m, n in zip(ctx.modalities, self.subset_sizes, strict=True)}
