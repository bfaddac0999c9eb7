"""PMR: prototypical modal rebalance.

Reference: Y. Fan, W. Xu, H. Wang, J. Wang, S. Guo, "PMR: Prototypical Modal Rebalance for
Multimodal Learning", CVPR 2023. Official code: fanyunfeng-bit/Modal-Imbalance-PMR,
``main_Prototype_grad.py`` (``calculate_prototype``, ``train_epoch``, ``EU_dist``).

Prototypes (fixed during an epoch): before the first epoch and after every epoch, with the model
in eval mode, ``P_m[c]`` = mean encoder feature of modality m over the samples of class c in
``proto_fraction`` of the training batches, drawn at random each time (the released loop reads the
first 10% of the *shuffled* train loader); from the third computation on
``P_m <- (1 - momentum) * P_m + momentum * P_m_old`` (the released ``calculate_prototype`` skips the
momentum while ``epoch <= 0``, and it is called with epoch 0 both before training and after the
first epoch). Per training step (released code)::

    sim_m   = -||f_m - P_m[c]||_2                  # (B, C) prototypical logits, no temperature
    L_m     = CE(sim_m, y)                         # prototypical cross-entropy
    s_m     = sum_i softmax(sim_m)[i, y_i]         # no gradient
    ratio_m = s_m / mean_{k != m} s_k             # M = 2: rho_a = s_a / s_v
    coeff_m = alpha if ratio_m < 1 else 0          # a hard switch: only the weaker modality
    loss    = task_loss + sum_m coeff_m * L_m      # epochs modulation_starts..modulation_ends (inclusive)

The prototypes are constants, so ``L_m`` only pulls the weak encoder's features toward its
class means; the fusion head is untouched. Diagnostics per step: ``ratio/<m>``, ``coeff/<m>``
(alpha or 0) and ``proto_loss/<m>``.

Where this file differs from or generalises the released code:

- **M modalities**: the ratio against the mean of the other modalities; for M = 2 this is the
  official switch (``rho_a > 1``: visual gets ``alpha``; ``< 1``: audio; ``= 1``: neither).
- **Momentum** defaults to 0.0: the argparse default is 0.2, but every PMR run in the
  repository's ``bash.sh`` passes ``--momentum_coef 0.0``.
- **Prototype batches**: as the official loop, ``len(loader) // 10`` batches (at least one) of a
  fresh random order each time; the order is a seeded stream of its own (``ctx.iterate`` with
  ``shuffle_round``: the k-th computation reads the k-th order), so a resumed run computes the same
  prototypes and the training order is untouched. The whole split (``proto_fraction: 1``) is read
  in order. ``proto_split: valid`` with ``proto_fraction: 1`` is the official AVE setting. A class
  absent from those batches keeps its previous prototype (zero before the first); the official
  code divides by zero there.
- **Not implemented: the paper's prototypical entropy regularisation** (PER, early epochs only).
  It is absent from the released code (``bash.sh`` calls ``main_Proto_PER.py``, which the
  repository does not contain) and we could not verify its exact form from a stored copy of
  the paper, so we do not guess it. The paper's smooth, ratio-dependent coefficient is
  likewise replaced by the code's hard switch.
- **Task kinds**: classification only. Prototypes are per-class means of per-sample features;
  regression has no classes and segmentation would need per-pixel prototypes, a new design.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Choice, Epochs, Float
from mmbalance.models.base import Output
from mmbalance.training.data import Batch
from mmbalance.training.method import Method, ModulationWindow, RunContext

__all__ = ["PMRParams", "PMR", "class_prototypes", "prototype_logits", "pmr_coefficients"]


class PMRParams(ModulationWindow):
    alpha: float = Field(1.0, gt=0)  # argparse default; bash.sh: 2.0 on CREMA-D / AVE, 1.0 on CG-MNIST
    modulation_starts: int = Field(0, ge=0)  # first epoch with the prototype loss (0-based, inclusive)
    modulation_ends: int = Field(100, ge=0)  # last one (inclusive), argparse default
    momentum: float = Field(0.0, ge=0, lt=1)  # EMA of prototypes; 0.0 as every released run
    proto_split: Literal["train", "valid"] = "train"  # valid: the official AVE setting
    proto_fraction: float = Field(0.1, gt=0, le=1)  # share of that split's batches (official: 10%)


def class_prototypes(
    features: Tensor, labels: Tensor, num_classes: int, previous: Tensor | None = None
) -> Tensor:
    """Per-class mean of (N, D) ``features`` -> (C, D). A class without samples keeps its row of
    ``previous`` (zeros when there is none)."""
    sums = features.new_zeros(num_classes, features.shape[1]).index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=num_classes).to(features.dtype).unsqueeze(1)
    fallback = previous if previous is not None else torch.zeros_like(sums)
    return torch.where(counts > 0, sums / counts.clamp(min=1), fallback)


def prototype_logits(features: Tensor, prototypes: Tensor) -> Tensor:
    """``-||f_i - P_c||_2``: (..., B, D) features, (..., C, D) prototypes -> (..., B, C); the official
    ``-EU_dist``."""
    return -torch.cdist(features, prototypes)


def pmr_coefficients(scores: Sequence[float], alpha: float) -> tuple[list[float], list[float]]:
    """``(ratio, coeff)`` from the M prototype scores: ``coeff_m = alpha`` if ``ratio_m < 1``, else 0."""
    total, m = sum(scores), len(scores)
    ratio = [s * (m - 1) / (total - s) for s in scores]
    return ratio, [alpha if r < 1 else 0.0 for r in ratio]


def stack_padded(features: Sequence[Tensor]) -> Tensor:
    """(N, D_m) per modality -> (M, N, max D_m), zero-padded: distances to equally padded
    prototypes are unchanged, and one batched ``cdist`` serves every modality."""
    width = max(f.shape[1] for f in features)
    return torch.stack([f if f.shape[1] == width else F.pad(f, (0, width - f.shape[1])) for f in features])


@METHODS.register
class PMR(Method):
    name = "pmr"
    Params = PMRParams
    # Every released run starts the window at 0 (bash.sh), so only its end is searched.
    search_space = {
        "alpha": Float(
            0.1, 5.0, log=True, source="bash.sh: 1 CG-MNIST, 2 AVE/CREMA-D, 3 and 5 CREMA-D, 0.5 AVE"
        ),
        "modulation_ends": Epochs(
            0.45, 1.0, source="bash.sh: 70 of 130 epochs (AVE, CREMA-D), 60 of 100 (CG-MNIST)"
        ),
        "momentum": Choice((0.0, 0.2, 0.5), source="bash.sh: 0.0 every main run, 0.2 and 0.5 AVE ablations"),
    }
    tasks = frozenset({"classification"})
    reference = "Fan et al., CVPR 2023 (PMR); fanyunfeng-bit/Modal-Imbalance-PMR main_Prototype_grad.py"
    unsupported = (
        "pmr builds class prototypes (per-class mean features of each sample); a {kind} task "
        "has no per-sample class label (use cggm, which handles regression and segmentation)"
    )

    state_attrs = ("prototypes", "stacked", "rounds")

    def build(self, ctx: RunContext) -> None:
        self.modalities, self.num_classes = list(ctx.modalities), ctx.task.num_classes
        self.prototypes: dict[str, Tensor] | None = None  # built in on_epoch_start of the first epoch
        self.stacked: Tensor | None = None  # the prototypes as one (M, C, D) tensor
        self.rounds = 0  # prototype computations so far
        self.ratio = self.coeff = self.proto_loss = [0.0] * len(self.modalities)
        # The official loop stops after len(loader) // 10 batches (at least one).
        n_split = (
            ctx.steps_per_epoch if self.p.proto_split == "train" else sum(1 for _ in ctx.iterate("valid"))
        )
        self.proto_batches = max(1, int(n_split * self.p.proto_fraction))

    @torch.no_grad()
    def update_prototypes(self, ctx: RunContext) -> None:
        model = ctx.model
        was_training = model.training
        model.eval()
        feats: dict[str, list[Tensor]] = {m: [] for m in self.modalities}
        labels = []
        subset = self.p.proto_fraction < 1  # a random subset, as the released shuffled loader gives
        batches = ctx.iterate(
            self.p.proto_split, max_batches=self.proto_batches, shuffle_round=self.rounds if subset else None
        )
        for batch in batches:
            out = model(batch.inputs)
            for m in self.modalities:
                feats[m].append(out.features[m].flatten(1))
            labels.append(batch.target)
        model.train(was_training)
        y = torch.cat(labels)
        old = self.prototypes
        new = {
            m: class_prototypes(torch.cat(feats[m]), y, self.num_classes, old[m] if old else None)
            for m in self.modalities
        }
        if self.rounds >= 2 and self.p.momentum > 0:  # released: not while epoch <= 0 (calls 1 and 2)
            new = {m: torch.lerp(new[m], old[m], self.p.momentum) for m in self.modalities}
        self.rounds += 1
        self._set(new)

    def _set(self, prototypes: dict[str, Tensor]) -> None:
        self.prototypes = prototypes
        self.stacked = stack_padded([prototypes[m] for m in self.modalities])  # (M, C, D)

    def on_epoch_start(self, ctx: RunContext) -> None:
        if self.prototypes is None:  # the official code builds them once on the initial model
            self.update_prototypes(ctx)

    def on_epoch_end(self, ctx: RunContext) -> None:
        self.update_prototypes(ctx)

    def loss(self, out: Output, batch: Batch, ctx: RunContext) -> Tensor:
        task_loss = ctx.task_loss(out.pred, batch.target)
        features = stack_padded([out.features[m].flatten(1) for m in self.modalities])  # (M, B, D)
        log_p = prototype_logits(features, self.stacked).log_softmax(dim=2)  # (M, B, C)
        target = batch.target.expand(len(self.modalities), -1).unsqueeze(2)
        nll = -log_p.gather(2, target).squeeze(2)  # (M, B)
        losses = nll.mean(dim=1)  # CE(sim_m, y) per modality
        with torch.no_grad():  # one host sync for 2M numbers (the runner syncs on loss.item() anyway)
            scores, self.proto_loss = torch.stack([nll.neg().exp().sum(dim=1), losses]).tolist()
        self.ratio, self.coeff = pmr_coefficients(scores, self.p.alpha)
        if not self.p.modulates(ctx.epoch):
            return task_loss
        return task_loss + sum(c * losses[i] for i, c in enumerate(self.coeff) if c)

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        values = {"ratio": self.ratio, "coeff": self.coeff, "proto_loss": self.proto_loss}
        return {f"{k}/{m}": x for k, v in values.items() for m, x in zip(self.modalities, v, strict=True)}
