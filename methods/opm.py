"""OPM: on-the-fly prediction modulation. Drop the dominant modality's features in the forward pass.

Reference: Y. Wei, D. Hu, H. Du, J.-R. Wen, "On-the-fly Modulation for Balanced Multimodal Learning",
IEEE TPAMI 2024 (the journal extension of OGM-GE; its other strategy, OGM, is ``ogm_ge``). Official
code: GeWu-Lab/BML_TPAMI2024 @ 8db168f, ``code/models/Classifier.py`` (``calcu_q``, ``Modality_drop``),
``code/main.py::train``, ``code/scripts/train_opm.sh`` (``--q_base 0.5 --lam 0.5 --p_exe 0.7``).

Per training step, after the warm-up epochs::

    s_m   = sum_i softmax(W_m f_m + b / M)[i, y_i]           # share of the concat head, weights detached
    q_m   = clip(q_base (1 + lam tanh(relu(rho_m - 1))), 0, 1) if rho_m > 1 else 0,  rho_m = s_m / s_other
    with probability p_exe:                                  # else the batch is not modulated
        mask[i, m] ~ Bernoulli(1 - q_m)                      # per sample and modality
        f_m  <- f_m * mask[:, m] / (1 - theta),  theta = sum_m d_m q_m / sum_m d_m   (d_m: feature size)
        the loss is the fused task loss over the samples that kept at least one modality

So only the dominant modality is dropped, harder the more it leads, and the fused head must learn
to predict from the others. Evaluation uses every feature. Follows the official code; generalised to
**M modalities** with ``rho_m = s_m / mean_{k != m} s_k`` (the official pairwise ratio for M = 2) and
to **segmentation** (feature maps dropped per sample; scores summed over pixels). As the code, q
carries the scores' gradient (the head detached, ``Classifier.py:114-115``), and the rescaling's
backward returns theta itself as theta's gradient (``custom_autograd``, lines 9-21), so a modulated
step adds ``theta * dtheta/dfeatures`` to the encoders' gradients. A batch whose
samples all lost every modality (the code skips it) is left unmodulated here instead, since the loop
takes one step per batch. **Regression is refused** (the score is the true-class probability).
The model needs late concat fusion and a linear head (the code's single ``fxy`` layer).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Epochs, Float
from mmbalance.models.base import MultimodalModel, Output
from mmbalance.training.data import Batch, StrictModel
from mmbalance.training.method import Method, RunContext
from mmbalance.training.method_parts import LINEAR, require_concat_fusion, true_class_score

__all__ = ["OPMParams", "OPM", "drop_probabilities", "drop_features"]


class OPMParams(StrictModel):
    q_base: float = Field(0.5, ge=0, le=1)  # base drop probability of the dominant modality (train_opm.sh)
    lam: float = Field(0.5, ge=0)  # growth of q with the discrepancy (train_opm.sh)
    p_exe: float = Field(0.7, ge=0, le=1)  # probability that a batch is modulated at all (train_opm.sh)
    warmup_epochs: int = Field(6, ge=0)  # no dropping in epochs 0..5 (main.py: warm_up = epoch <= 5)


def drop_probabilities(scores: Tensor, q_base: float, lam: float) -> Tensor:
    """(M,) drop probabilities q_m from the (M,) scores (``calcu_q``; ratio to the others' mean)."""
    m = scores.numel()
    ratio = scores * (m - 1) / (scores.sum() - scores)
    r = torch.tanh(torch.relu(ratio - 1))
    return torch.where(r > 0, q_base * (1 + lam * r), torch.zeros_like(r)).clamp(0.0, 1.0)


class ReleasedRescale(torch.autograd.Function):
    """``x_m / (1 - theta)`` for every modality, with the released backward (``custom_autograd``,
    Classifier.py:9-21): the features' gradients divided by ``1 - theta``, and as theta's gradient
    theta itself, whatever the loss (applied once per step, as the code's one call)."""

    @staticmethod
    def forward(ctx, theta: Tensor, *xs: Tensor) -> tuple[Tensor, ...]:
        ctx.save_for_backward(theta)
        return tuple(x / (1 - theta.item()) for x in xs)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple[Tensor | None, ...]:
        (theta,) = ctx.saved_tensors
        return (theta, *(None if g is None else g / (1 - theta.item()) for g in grads))


def drop_features(features: dict[str, Tensor], q: Tensor, mask: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """Masked, rescaled features and the (B,) samples that kept a modality (``Modality_drop``).
    ``mask``: (B, M) of 0/1; the rescaling 1 / (1 - theta) uses the feature-size-weighted mean of q."""
    dims = torch.tensor([f.shape[1] for f in features.values()], dtype=q.dtype, device=q.device)
    theta = (dims * q).sum() / dims.sum()
    masked = [
        f * mask[:, i].view(-1, *([1] * (f.dim() - 1))).to(f.dtype) for i, f in enumerate(features.values())
    ]
    return dict(zip(features, ReleasedRescale.apply(theta, *masked), strict=True)), mask.sum(dim=1) > 0


@METHODS.register
class OPM(Method):
    name = "opm"
    Params = OPMParams
    search_space = {
        "q_base": Float(0.1, 0.9, source="around train_opm.sh's 0.5 (no published grid)"),
        "lam": Float(0.1, 2.0, log=True, source="around train_opm.sh's 0.5 (no published grid)"),
        "p_exe": Float(0.3, 1.0, source="around train_opm.sh's 0.7 (no published grid)"),
        "warmup_epochs": Epochs(0.0, 0.25, source="main.py: 6 warm-up epochs of ~100; suite 2 of 12"),
    }
    tasks = frozenset({"classification", "segmentation"})
    reference = "Wei et al., TPAMI 2024 (OPM); GeWu-Lab/BML_TPAMI2024 code/models/Classifier.py"
    unsupported = (
        "opm sets drop probabilities from the softmax probability of the true class; "
        "a regression task has no classes"
    )

    def build(self, ctx: RunContext) -> None:
        require_concat_fusion(ctx.model, "opm", LINEAR)  # the scores come from each modality's share
        self.names = list(ctx.modalities)
        self.q = torch.zeros(len(ctx.modalities))
        self.executed = False
        self.keep: Tensor | None = None

    def forward(self, model: MultimodalModel, batch: Batch, ctx: RunContext) -> Output:
        if not ctx.training or ctx.epoch < self.p.warmup_epochs:
            self.keep = None
            return model(batch.inputs)
        features = model.encode(batch.inputs)
        head = [p for p in model.head.parameters() if p.requires_grad]
        for p in head:  # the scores see the head detached and the features not (Classifier.py:114-143)
            p.requires_grad_(False)
        shares = model.unimodal_logits(features)
        for p in head:
            p.requires_grad_(True)
        scores = torch.stack([true_class_score(shares[m], batch.target) for m in features])
        q = drop_probabilities(scores, self.p.q_base, self.p.lam)  # with the scores' gradient (calcu_q)
        self.q = q.detach()
        with torch.no_grad():
            self.executed = torch.rand(()).item() < self.p.p_exe
            mask = torch.bernoulli((1 - self.q).expand(len(batch), -1)).to(scores.device)
        self.keep = None
        dropped = features
        if self.executed:
            dropped, keep = drop_features(features, q, mask)
            if keep.any():
                self.keep = keep
            else:
                dropped = features
        fused = model.fusion(dropped)
        return Output(model.head(fused), features, fused)

    def loss(self, out: Output, batch: Batch, ctx: RunContext) -> Tensor:
        if self.keep is None:
            return ctx.task_loss(out.pred, batch.target)
        return ctx.task_loss(out.pred[self.keep], batch.target[self.keep])  # samples that kept a modality

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        out = {f"q/{m}": q for m, q in zip(self.names, self.q.tolist(), strict=True)}
        out["dropped"] = float(self.keep is not None)
        return out
