"""OGM / OGM-GE: on-the-fly gradient modulation with generalisation enhancement.

Reference: X. Peng, Y. Wei, A. Deng, D. Wang, D. Hu, "Balanced Multimodal Learning via On-the-fly
Gradient Modulation", CVPR 2022. Official code: GeWu-Lab/OGM-GE_CVPR2022, ``main.py::train_epoch``.

Per training step, after the fused loss has been back-propagated (the released code, HEAD)::

    s_m     = sum_i softmax(W_m f_m + b / M)[i, y_i]        # modality m's share of the concat head
    ratio_m = s_m / mean_{k != m} s_k                        # M = 2: s_v / s_a and s_a / s_v
    coeff_m = 1 - tanh(alpha * relu(ratio_m))  if ratio_m > 1 else 1
    in the modulation window (epochs ``modulation_starts..modulation_ends``, both inclusive):
        g <- g * coeff_m + N(0, std(g))                      # OGM-GE, std of the *unscaled* gradient
        g <- g * coeff_m                                     # OGM (``ge: false``)

for every selected gradient g of encoder m; the noise is added to every modality's encoder,
also where ``coeff_m = 1``, as in the released code. ``coefficient: ratio_minus_one`` is the
original (March 2022) form ``1 - tanh(alpha * relu(ratio_m - 1))``, continuous at ratio 1.
Diagnostics per step: ``ratio/<m>`` and ``coeff/<m>``.

Where this file generalises the released code:

- **M modalities.** The ratio is taken against the mean score of the other modalities; for
  M = 2 it is the official pairwise ratio, so only the dominant modality is damped. One
  difference at an exact tie s_a = s_v: the official ``else`` branch damps audio by
  ``1 - tanh(alpha)``, here nobody is damped.
- **Which gradients.** The official code scales only the 4-D conv kernels of the encoders
  (no biases, no norm layers, no linear layers). Our synthetic encoders are MLPs, which have no
  conv kernel, so the default ``params: weights`` takes every encoder weight tensor with
  ``dim >= 2`` (conv kernels and linear weights, still no biases or norm affines): the
  official rule with "kernel" read as "weight matrix". ``params: conv`` is the official rule
  exactly (and refuses a model whose encoders have no conv kernel); ``params: all`` scales
  every encoder parameter.
- **Segmentation.** With a 1x1-conv head the shares are per-pixel logits; the score sums the
  true-class probability over pixels and samples (only the ratio is used, so the
  normalisation does not matter). **Regression** is refused: the score is the probability of
  the true class and a regression output has no classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Epochs, Float
from mmbalance.models.base import MultimodalModel, Output
from mmbalance.training.data import Batch
from mmbalance.training.method import Method, MethodNotApplicable, ModulationWindow, RunContext

__all__ = ["OGMGEParams", "OGMGE", "true_class_scores", "ogm_coefficients", "selected_parameters"]


class OGMGEParams(ModulationWindow):
    alpha: float = Field(0.1, gt=0)  # README default setting (VGGSound); the README tip uses 0.8 on CREMA-D
    modulation_starts: int = Field(0, ge=0)  # first modulated epoch (0-based, inclusive)
    modulation_ends: int = Field(50, ge=0)  # last modulated epoch (inclusive), official default
    ge: bool = True  # add the Gaussian generalisation-enhancement noise (OGM-GE); False: plain OGM
    coefficient: Literal["ratio", "ratio_minus_one"] = "ratio"  # released tanh(a*relu(r)) / original
    params: Literal["weights", "conv", "all"] = "weights"  # which encoder gradients (see module docstring)


def true_class_scores(logits: Tensor, target: Tensor) -> Tensor:
    """``s_m = sum_i softmax(logits_m)[i, y_i]`` for stacked logits: (M, B, C) with (B,) labels, or
    (M, B, C, H, W) with (B, H, W) label maps (summed over pixels too) -> (M,)."""
    index = target.expand(logits.shape[0], *target.shape).unsqueeze(2)
    return logits.softmax(dim=2).gather(2, index).flatten(1).sum(1)


def ogm_coefficients(
    scores: Sequence[float], alpha: float, minus_one: bool = False
) -> tuple[list[float], list[float]]:
    """Ratio and gradient coefficient per modality from the M scores, as ``(ratio, coeff)``.

    ``ratio_m = s_m / mean_{k != m} s_k``; ``coeff_m = 1 - tanh(alpha * relu(ratio_m [- 1]))`` where
    ``ratio_m > 1``, else 1. M numbers, so plain floats: cheaper than M-element tensor ops.
    """
    total, m = sum(scores), len(scores)
    ratio = [s * (m - 1) / (total - s) for s in scores]
    shift = 1.0 if minus_one else 0.0
    return ratio, [1 - math.tanh(alpha * max(r - shift, 0.0)) if r > 1 else 1.0 for r in ratio]


def selected_parameters(model: MultimodalModel, modality: str, rule: str) -> list[nn.Parameter]:
    """The encoder parameters of ``modality`` whose gradients OGM-GE modulates (``rule``: see Params)."""
    params = model.encoder_parameters(modality)
    if rule == "weights":
        return [p for p in params if p.dim() >= 2]
    if rule == "conv":
        return [p for p in params if p.dim() == 4]
    return params


def _std(g: Tensor) -> Tensor:
    """The GE noise scale, ``p.grad.std().item() + 1e-8`` in the released code."""
    return (g.std() if g.numel() > 1 else g.new_zeros(())) + 1e-8


@METHODS.register
class OGMGE(Method):
    name = "ogm_ge"
    Params = OGMGEParams
    # alpha: the README's values and a CREMA-D re-run's (MLB's release configs, BMVC 2024). The window as
    # fractions of the run: epochs 0-50 of 100 by default, 20-80 in the README's example; the two ranges do
    # not overlap, so a sampled window is never empty.
    search_space = {
        "alpha": Float(
            0.05,
            1.5,
            log=True,
            source="README 0.1 (VGGSound), 0.8 (CREMA-D), 0.3; kkontras/MLB OGM.json 1.25",
        ),
        "modulation_starts": Epochs(0.0, 0.25, source="README: 0 default, 20 of 100 in its example"),
        "modulation_ends": Epochs(0.5, 1.0, source="README: 50 of 100 epochs default, 80 in its example"),
    }
    tasks = frozenset({"classification", "segmentation"})
    reference = "Peng et al., CVPR 2022 (OGM-GE); GeWu-Lab/OGM-GE_CVPR2022 main.py"
    unsupported = (
        "ogm_ge scores each modality by the softmax probability of the true class; "
        "a regression task has no classes (use cggm, which handles regression)"
    )

    def build(self, ctx: RunContext) -> None:
        model = ctx.model
        self.selected: dict[str, list[nn.Parameter]] = {}
        for m in ctx.modalities:
            self.selected[m] = selected_parameters(model, m, self.p.params)
            if not self.selected[m]:
                raise MethodNotApplicable(
                    f"ogm_ge: params={self.p.params!r} selects no parameter of the {m!r} encoder "
                    f"({type(model.encoders[m]).__name__}); use params: weights or all"
                )
        self.ratio = self.coeff = [1.0] * len(ctx.modalities)
        # One flat list over all modalities and each one's modality index: one fused op scales
        # every selected gradient by its modality's coefficient.
        self.flat = [p for m in ctx.modalities for p in self.selected[m]]
        self.owner = [i for i, m in enumerate(ctx.modalities) for _ in self.selected[m]]

    def after_backward(self, model: MultimodalModel, out: Output, batch: Batch, ctx: RunContext) -> None:
        with torch.no_grad():
            try:
                shares = model.unimodal_logits({m: f.detach() for m, f in out.features.items()})
            except TypeError as e:
                raise MethodNotApplicable(
                    f"ogm_ge needs each modality's additive share of the logits: {e}"
                ) from None
            # One host sync for M numbers (the runner syncs on loss.item() every step anyway).
            scores = true_class_scores(
                torch.stack([shares[m] for m in ctx.modalities]), batch.target
            ).tolist()
            self.ratio, self.coeff = ogm_coefficients(
                scores, self.p.alpha, self.p.coefficient == "ratio_minus_one"
            )
            if not self.p.modulates(ctx.epoch):
                return
            pairs = [
                (p.grad, self.coeff[i])
                for p, i in zip(self.flat, self.owner, strict=True)
                if p.grad is not None
            ]
            grads, scales = [g for g, _ in pairs], [c for _, c in pairs]
            stds = [_std(g) for g in grads] if self.p.ge else []  # of the unscaled gradient, as released
            torch._foreach_mul_(grads, scales)
            if self.p.ge:
                noise = [torch.randn_like(g) for g in grads]
                torch._foreach_mul_(noise, stds)
                torch._foreach_add_(grads, noise)

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        out = {f"ratio/{m}": r for m, r in zip(self.selected, self.ratio, strict=True)}
        return out | {f"coeff/{m}": c for m, c in zip(self.selected, self.coeff, strict=True)}
