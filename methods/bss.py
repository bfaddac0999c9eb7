"""BSS: balance-aware sequence sampling; the training samples are ordered from balanced-and-easy
to imbalanced-and-hard, by a heuristic curriculum or a learned (self-paced) sampler.

Reference: Z.-H. Guan, Q.-Y. Jiang, Y. Yang, "Balance-aware Sequence Sampling Makes Multimodal
Learning Better", IJCAI 2025. Official code: njustkmg/IJCAI25-BSS @ 495b94e, ``CREMA-D/train-CL.py``
(heuristic scheduler: ``model_evaluate`` lines 141-182, schedule 226-239) and
``CREMA-D/train-SPL.py`` (learned scheduler: ``assign_weights`` 141-184, sampling 219-224); the
loss ``train`` 37-69 of both; model ``CREMA-D/models/basic_model.py::AVNet.forward`` 23-38.

Training loss (train-CL.py:54-57)::

    loss = 0.1 CE(head([f_a; f_v]), y) + 0.9 (CE(h_a(f_a), y) + CE(h_v(f_v), y))

Sample scores on the train split (no update)::

    sim_i  = cos(softmax(h_a(x_i)), softmax(h_v(x_i)))               # agreement of the modalities
    loss_i = 0.9 (CE_a + CE_v) + 0.1 CE_mm                           # per sample
    both min-max normalised over the train split (135-139)

- ``scheduler: heuristic`` (train-CL.py): once, at epoch 0 (the initial model), difficulty
  d_i = (1 - sim_i) + loss_i, samples sorted easy -> hard; in epoch e train on the easiest
  ``int(N lambda_e)``, shuffled, lambda_e = min(1, sqrt((1 - l0^2) / T (e + 1) + l0^2)), l0 = 0.1,
  T = 40 (219-239).
- ``scheduler: learned`` (train-SPL.py): every epoch, w_i = 1 - (loss_i - sim_i) + 0.01, one
  draw of all N samples without replacement with probability w / sum(w), trained in that order
  (``shuffle=False``, 219-224).

Prediction (``test``, train-CL.py:100, train-SPL.py:100), which also selects the best epoch::

    pred = sum_m h_m(f_m)                         # ``prediction: unimodal`` (CREMA-D scripts)
    pred = sum_m h_m(f_m) + head([f_a; f_v])      # ``prediction: all`` (KS/train-CL.py:99, train-SPL.py:98)

The fused head, which carries only 0.1 of the loss, is not the model's prediction. The KS scripts
are ``fused_weight: 1, unimodal_weight: 1, prediction: all`` (KS/train-CL.py:52-55, 99).

Defaults: SGD lr 0.01 (StepLR 70, 0.1), 120 epochs, batch 32 (train-CL.py:24-30).

Where this file generalises:

- **M modalities**: sim_i is the mean cosine over modality pairs (the code's one pair for M = 2),
  the unimodal term sums all M heads. ``h_m`` are ``UnimodalHeads``: the code's one ``nn.Linear``
  (``linear_a``) with the audio-visual ResNet model's ``unimodal_head: linear``; two layers otherwise.
- **Segmentation**: per-sample losses and similarities are means over pixels (not in the code).
  **Regression is refused**: the agreement compares class distributions.
- **[not followed]** the code scores in train mode (146: "to compute gradients", none are used), so
  the pass updates BatchNorm running statistics without training and dropout makes the scores
  random; we score in eval mode (the same numbers for models without BatchNorm or dropout).
- The curriculum keeps at least one batch of samples (a tiny split would otherwise start on one).
- The last incomplete batch is dropped, as the code's ``drop_last=True`` (kept when it is the only one).
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Epochs, Float
from mmbalance.models.base import MultimodalModel, Output
from mmbalance.training.data import Batch, StrictModel
from mmbalance.training.method import Resampling, RunContext
from mmbalance.training.method_parts import UnimodalHeadsMethod

__all__ = ["BSSParams", "BSS", "sample_scores", "pace", "min_max"]


class BSSParams(StrictModel):
    scheduler: Literal["heuristic", "learned"] = "heuristic"  # train-CL.py / train-SPL.py
    fused_weight: float = Field(0.1, ge=0)  # train-CL.py:57
    unimodal_weight: float = Field(0.9, ge=0)  # train-CL.py:57
    lambda_0: float = Field(0.1, gt=0, le=1)  # initial fraction of the curriculum (train-CL.py:223)
    grow_epochs: int = Field(40, ge=1)  # T_grow: epochs until all samples are used (train-CL.py:224)
    # What predicts (and selects the best epoch): the unimodal heads' summed logits (CREMA-D/train-CL.py:100),
    # or those plus the fused head's (KS/train-CL.py:99)
    prediction: Literal["unimodal", "all"] = "unimodal"


def min_max(x: Tensor) -> Tensor:
    """``(x - min) / (max - min)`` (train-CL.py:135-139)."""
    return (x - x.min()) / (x.max() - x.min())


def pace(epoch: int, lambda_0: float, grow: int) -> float:
    """Fraction of the sorted samples used in ``epoch`` (0-based; train-CL.py:235)."""
    return min(1.0, math.sqrt((1 - lambda_0**2) / grow * (epoch + 1) + lambda_0**2))


def sample_scores(
    fused: Tensor, unimodal: list[Tensor], target: Tensor, w_fused: float, w_uni: float
) -> tuple[Tensor, Tensor]:
    """Per sample ``(similarity, loss)``: the mean pairwise cosine of the unimodal class
    distributions and ``w_uni sum_m CE_m + w_fused CE_mm`` (train-CL.py:155-169); means over pixels."""
    n = target.shape[0]

    def per_sample(x: Tensor) -> Tensor:
        return x.reshape(n, -1).mean(1)

    probs = [z.softmax(dim=1) for z in unimodal]
    sims = [per_sample(F.cosine_similarity(p, q, dim=1)) for p, q in itertools.combinations(probs, 2)]
    ce = [per_sample(F.cross_entropy(z, target, reduction="none")) for z in unimodal]
    loss = w_uni * sum(ce) + w_fused * per_sample(F.cross_entropy(fused, target, reduction="none"))
    return torch.stack(sims).mean(0), loss


@METHODS.register
class BSS(Resampling, UnimodalHeadsMethod):
    name = "bss"
    Params = BSSParams
    # The unimodal weight stays at 0.9: with the fused one searched, the ratio of the two is free, and their
    # common scale is the learning rate's.
    search_space = {
        "fused_weight": Float(0.05, 1.0, log=True, source="around train-CL.py's 0.1 (no published grid)"),
        "lambda_0": Float(0.05, 0.5, log=True, source="around train-CL.py's 0.1 (no published grid)"),
        "grow_epochs": Epochs(
            0.15, 0.75, minimum=1, source="train-CL.py: T_grow 40 of 120 epochs; suite 4 of 12"
        ),
    }
    tasks = frozenset({"classification", "segmentation"})
    reference = "Guan, Jiang & Yang, IJCAI 2025 (BSS); njustkmg/IJCAI25-BSS CREMA-D/train-CL.py, train-SPL.py"
    unsupported = (
        "bss orders samples by the agreement of the modalities' class distributions; "
        "a regression output has no classes"
    )
    drop_last = True  # train-CL.py:239, train-SPL.py:223

    state_attrs = ("order",)

    @property
    def ordered_samples(self) -> bool:  # SPL trains in the drawn order
        return self.p.scheduler == "learned"

    def build(self, ctx: RunContext) -> None:
        super().build(ctx)
        self.order: list[int] | None = None  # heuristic: easy -> hard, fixed at epoch 0
        self.used = 0

    @torch.no_grad()
    def scores(self, ctx: RunContext) -> tuple[Tensor, Tensor]:
        """Normalised (similarity, loss) of every training sample, in train-split order."""
        model = ctx.model
        model.eval()  # the code: train mode (see the module docstring)
        sims, losses = [], []
        for batch in ctx.iterate("train"):
            out = model(batch.inputs)
            uni = self.heads(model, out)
            s, loss = sample_scores(
                out.pred,
                [uni[m] for m in ctx.modalities],
                batch.target,
                self.p.fused_weight,
                self.p.unimodal_weight,
            )
            sims.append(s.cpu())
            losses.append(loss.cpu())
        return min_max(torch.cat(sims)), min_max(torch.cat(losses))

    def epoch_samples(self, ctx: RunContext) -> list[list[tuple[int, int]]]:
        if self.p.scheduler == "learned":
            sim, loss = self.scores(ctx)
            weights = 1 - (loss - sim) + 1e-2  # train-SPL.py:177-180
            order = torch.multinomial(weights / weights.sum(), num_samples=len(weights), replacement=False)
            self.used = len(order)
            return [[(i, 0) for i in order.tolist()]]
        if self.order is None:  # train-CL.py:230-233: once, at the first epoch
            sim, loss = self.scores(ctx)
            difficulty = ((1 - sim) + loss).tolist()
            self.order = sorted(range(len(difficulty)), key=lambda k: difficulty[k])
        used = int(len(self.order) * pace(ctx.epoch, self.p.lambda_0, self.p.grow_epochs))
        self.used = max(used, min(len(self.order), ctx.batch_size))  # at least one batch (tiny splits)
        return [[(i, 0) for i in self.order[: self.used]]]

    def forward(self, model: MultimodalModel, batch: Batch, ctx: RunContext) -> Output:
        out = super().forward(model, batch, ctx)
        if not ctx.training:  # test(): train-CL.py:100 (KS/train-CL.py:99 with the fused logits)
            uni = sum(out.modality_logits[m] for m in ctx.modalities)
            out.pred = uni + out.pred if self.p.prediction == "all" else uni
        return out

    def loss(self, out: Output, batch: Batch, ctx: RunContext) -> Tensor:
        uni = sum(ctx.task_loss(out.modality_logits[m], batch.target) for m in ctx.modalities)
        return self.p.fused_weight * ctx.task_loss(out.pred, batch.target) + self.p.unimodal_weight * uni

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        return {"samples": float(self.used)}
