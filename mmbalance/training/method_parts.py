"""Parts several balancing methods share, one function or class each.

- ``true_class_score``: s_m = sum_i softmax(logits_m)[i, y_i] (OGM-GE, InfoReg, OPM, PMR, ...).
- ``UnimodalHeads``: one classifier per modality, trained with the model (MMPareto, G-Blending, UME, UMT).
- ``UnimodalHeadsMethod``: base of the methods that train those heads (built, forward).
- ``require_concat_fusion``: refuse a model that does not concatenate its modality features (and, with
  ``linear_head``, whose logits are not a sum of per-modality shares).
- ``masked_inputs`` / ``shapley_values``: forwards with modalities zeroed and their Shapley split (AGM).
- ``logits_with_features_zeroed``: the prediction with some modalities' features zeroed per sample
  before a concat fusion (Modality valuation, Data Remixing).
- ``scale_grad``: identity forward, gradient times a coefficient (AGM's backward hooks).
- ``min_norm_2``: the min-norm point of the segment between two gradients (MGDA, MMPareto).
- ``flat``: one flat vector from a list of per-tensor gradients.
- ``num_outputs`` / ``common_feature_dim``: sizes for a method's own heads (MLA's and ReconBoost's
  one head shared by all modalities).
- ``accuracy``: fraction of correct arg-max predictions (per sample, or per pixel).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from mmbalance.models.base import ConcatFusion, MultimodalModel, Output, resize_logits
from mmbalance.training.data import Batch
from mmbalance.training.method import Method, MethodNotApplicable, RunContext

__all__ = [
    "true_class_score",
    "UnimodalHeads",
    "UnimodalHeadsMethod",
    "masked_inputs",
    "require_concat_fusion",
    "logits_with_features_zeroed",
    "shapley_values",
    "scale_grad",
    "min_norm_2",
    "flat",
    "num_outputs",
    "common_feature_dim",
    "accuracy",
]


def true_class_score(logits: Tensor, target: Tensor) -> Tensor:
    """``sum_i softmax(logits)[i, y_i]``: (B, C) logits and (B,) labels, or (B, C, H, W) and (B, H, W)
    (then summed over pixels too). A *sum* over the batch, as the official codes; only ratios and
    differences of scores of the same batch are compared."""
    return logits.softmax(dim=1).gather(1, target.unsqueeze(1)).sum()


class UnimodalHeads(nn.Module):
    """One classifier per modality on ``model.classifier_input(out, m)``, e.g. MMPareto's
    ``head_audio``/``head_video``. Built with the model's own ``unimodal_classifier`` (so a paper
    model picks its paper classifier); as a method's attribute, the runner trains, moves and saves them."""

    def __init__(self, model: MultimodalModel, modalities: Sequence[str] | None = None) -> None:
        super().__init__()
        layer = model.out_layer
        n_out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        names = list(modalities) if modalities is not None else model.modalities
        self.heads = nn.ModuleDict({m: model.unimodal_classifier(m, n_out) for m in names})

    def forward(self, model: MultimodalModel, out: Output) -> dict[str, Tensor]:
        """Logits per modality, shaped like ``out.pred`` (segmentation maps upsampled to it)."""
        logits = {}
        for m, head in self.heads.items():
            logits[m] = resize_logits(head(model.classifier_input(out, m)), out.pred.shape[-2:])
        return logits


def masked_inputs(inputs: Mapping[str, Tensor], keep: frozenset[str]) -> dict[str, Tensor]:
    """The inputs with every modality outside ``keep`` replaced by zeros (AGM's padding)."""
    return {m: x if m in keep else torch.zeros_like(x) for m, x in inputs.items()}


def shapley_values(value: Mapping[frozenset[str], Tensor], modalities: Sequence[str]) -> dict[str, Tensor]:
    """Shapley share of each modality in the coalition game ``value`` (output with only S present).

    ``phi_m = sum_{S not containing m} |S|! (M - |S| - 1)! / M! * (v(S + m) - v(S))``, with
    ``v(empty) = 0`` as in AGM's code (it drops the all-zero forward), so the shares sum to
    ``v(all)``: the fused output. ``value`` needs every non-empty subset.
    """
    n = len(modalities)
    out = {}
    for m in modalities:
        others = [k for k in modalities if k != m]
        phi = 0
        for size in range(n):
            w = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for s in itertools.combinations(others, size):
                s = frozenset(s)
                phi = phi + w * (value[s | {m}] - (value[s] if s else 0))
        out[m] = phi
    return out


def concat_linear(model: MultimodalModel, heads: tuple[type, ...] = (nn.Linear, nn.Conv2d)) -> bool:
    """Whether the logits are a sum of per-modality shares: late concat fusion into one linear layer."""
    return isinstance(model.fusion, ConcatFusion) and isinstance(model.head, heads)


def require_concat_fusion(
    model: MultimodalModel, method: str, linear_head: tuple[type, ...] | None = None, why: str | None = None
) -> None:
    """Raise ``MethodNotApplicable`` unless the model concatenates its modality features
    (``ConcatFusion``: zeroing a modality's rows of the concatenation is what the codes do) and, with
    ``linear_head``, maps them to the logits with one layer of those types (then
    ``model.unimodal_logits`` gives each modality's additive share: OPM, CML, MMCosine). ``why``: what
    the method does that needs it, for the message."""
    if linear_head is None and not isinstance(model.fusion, ConcatFusion):
        why = why or "zeroes a modality's features before they are concatenated"
        raise MethodNotApplicable(
            f"{method} {why}; this model fuses with {type(model.fusion).__name__} "
            "(use model_params: {fusion: concat} where the dataset offers it)"
        )
    if linear_head is not None and not concat_linear(model, linear_head):
        raise MethodNotApplicable(
            f"{method} needs each modality's additive share of the logits (late concat fusion into one "
            f"{'/'.join(h.__name__ for h in linear_head)} layer); this model has "
            f"{type(model.fusion).__name__} -> {type(model.head).__name__}"
        )


LINEAR = (nn.Linear, nn.Conv2d)  # the heads whose logits split into per-modality shares


def logits_with_features_zeroed(
    model: MultimodalModel, features: Mapping[str, Tensor], keep: Mapping[str, Tensor]
) -> tuple[Tensor, Tensor]:
    """``(head(fused), fused)`` with modality m's feature rows zeroed where the (B,) bool ``keep[m]``
    is False; the zeroed rows pass no gradient to the encoder, as an in-place ``a[i, :] = 0``."""
    masked = {m: f * keep[m].view(-1, *([1] * (f.dim() - 1))).to(f.dtype) for m, f in features.items()}
    fused = model.fusion(masked)
    return model.head(fused), fused


def scale_grad(x: Tensor, coeff: float | Tensor) -> Tensor:
    """``x`` in the forward pass; ``coeff * grad`` in the backward pass."""
    return x * coeff + x.detach() * (1 - coeff)


def min_norm_2(g1: Tensor, g2: Tensor) -> tuple[float, float]:
    """Weights ``(k1, k2)``, ``k1 + k2 = 1``, of the min-norm point of the segment between flat
    gradients g1 and g2: Sener & Koltun's ``MinNormSolver._min_norm_element_from2``, with its
    0.999 / 0.001 clamps at the ends (what ``find_min_norm_element`` returns for two vectors)."""
    v11, v12, v22 = g1.dot(g1).item(), g1.dot(g2).item(), g2.dot(g2).item()
    if v12 >= v11:
        gamma = 0.999
    elif v12 >= v22:
        gamma = 0.001
    else:
        gamma = -1.0 * (v12 - v22) / (v11 + v22 - 2 * v12)
    return gamma, 1 - gamma


def flat(grads: Sequence[Tensor | None], params: Sequence[nn.Parameter]) -> Tensor:
    """One flat vector from per-tensor gradients (``None``: zeros of the parameter's shape)."""
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, params, strict=True)
        ]
    )


def num_outputs(model: MultimodalModel) -> int:
    """Output size of the model's last layer (classes, or regression outputs)."""
    layer = model.out_layer
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def common_feature_dim(model: MultimodalModel, method: str) -> int:
    """The one feature size of all encoders, for a head shared across modalities (MLA, ReconBoost);
    raises ``MethodNotApplicable`` naming the sizes when they differ."""
    from mmbalance.training.method import MethodNotApplicable  # method.py imports nothing from here; no cycle

    dims = model.feature_dims()
    if len(set(dims.values())) != 1:
        raise MethodNotApplicable(
            f"{method} applies one head to every modality's features, which needs "
            f"equal feature sizes; this model's encoders give {dims}"
        )
    return next(iter(dims.values()))


def accuracy(logits: Tensor, target: Tensor) -> float:
    """Fraction of arg-max predictions equal to the target: (B, C) and (B,), or (B, C, H, W) and (B, H, W)."""
    return (logits.argmax(dim=1) == target).float().mean().item()


class UnimodalHeadsMethod(Method):
    """Base of the methods that train one head per modality with the model (MMPareto, G-Blending,
    InfoReg, UME): the heads are built first in ``build`` (subclasses call ``super().build(ctx)``
    before their own state) and their logits go to ``out.modality_logits``."""

    def build(self, ctx: RunContext) -> None:
        self.heads = UnimodalHeads(ctx.model)

    def forward(self, model: MultimodalModel, batch: Batch, ctx: RunContext) -> Output:
        out = model(batch.inputs)
        out.modality_logits.update(self.heads(model, out))
        return out
