"""The model contract every method relies on.

``MultimodalModel(encoders, fusion, head)``: one encoder per modality, a fusion module that
maps ``{modality: feature}`` to one fused tensor, and a head that maps it to the prediction.
``forward`` returns ``Output(pred, features, fused)``.

Methods reach parameters by structure, never by name substrings:
``model.encoders[m]`` is modality m's encoder, ``model.head`` the head, ``model.out_layer`` the
last layer of the head. A late-fusion concat model with a linear head also exposes each
modality's additive share of the logits (``unimodal_logits``), which OGM-GE and others need.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["Output", "ConcatFusion", "MultimodalModel", "LinearClassifier", "resize_logits"]


@dataclass
class Output:
    pred: Tensor  # (B, C) logits, (B, 1) regression, (B, C, H, W) segmentation logits
    features: dict[str, Tensor]  # per modality: (B, D) pooled, or (B, D, h, w) for segmentation
    fused: Tensor  # input of the head
    aux: dict[str, Tensor] = field(default_factory=dict)  # model-specific extras, e.g. full encoder sequences


class ConcatFusion(nn.Module):
    """Concatenate the modality features along the channel axis (dim 1), in modality order."""

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        return torch.cat(list(features.values()), dim=1)


class MultimodalModel(nn.Module):
    def __init__(self, encoders: Mapping[str, nn.Module], fusion: nn.Module, head: nn.Module) -> None:
        super().__init__()
        if not encoders:
            raise ValueError("MultimodalModel needs at least one encoder")
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.head = head

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders.keys())

    def encode(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {m: enc(inputs[m]) for m, enc in self.encoders.items()}

    def forward(self, inputs: Mapping[str, Tensor]) -> Output:
        features = self.encode(inputs)
        fused = self.fusion(features)
        return Output(self.head(fused), features, fused)

    # --- structure, for methods --------------------------------------------------------------
    def encoder_parameters(self, modality: str) -> list[nn.Parameter]:
        params = [p for p in self.encoders[modality].parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"encoder of modality {modality!r} has no trainable parameters")
        return params

    @property
    def out_layer(self) -> nn.Module:
        """The last layer of the head (CGGM's ``out_layer``): ``head.out_layer`` or the head itself."""
        layer = getattr(self.head, "out_layer", self.head)
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"the head's output layer is {type(layer).__name__}, not Linear/Conv2d")
        return layer

    def feature_modules(self, modality: str) -> list[nn.Module]:
        """The modules whose outputs are everything modality m passes on, to the fusion and to any head a
        method adds: the encoder itself, unless the model calls its parts (then the encoder names them
        in its own ``feature_modules()``). ``modality_eval`` replaces these outputs to make m absent."""
        enc = self.encoders[modality]
        return enc.feature_modules() if hasattr(enc, "feature_modules") else [enc]

    def feature_dims(self) -> dict[str, int]:
        """Channel size of each modality's feature: every encoder carries an ``out_dim`` attribute."""
        return {m: enc.out_dim for m, enc in self.encoders.items()}

    def classifier_input(self, out: Output, modality: str) -> Tensor:
        """What a per-modality classifier (CGGM, unimodal heads) reads: modality m's features.
        Paper models may override it (the CGGM code's classifiers read the whole encoder sequence)."""
        return out.features[modality]

    def unimodal_classifier(self, modality: str, num_outputs: int) -> nn.Module:
        """A fresh classifier on ``classifier_input`` of one modality, with an ``out_layer`` attribute.

        Default: two layers (Linear-ReLU-Linear on (B, D) features, 1x1 Conv-ReLU-1x1 Conv on
        (B, D, h, w) maps; a map classifier's logits may be smaller than the target and are
        upsampled by the caller). Paper models override this with the paper's classifier.
        """
        d = self.encoders[modality].out_dim
        return TwoLayerClassifier(d, num_outputs, spatial=isinstance(self.out_layer, nn.Conv2d))

    def unimodal_logits(
        self, features: Mapping[str, Tensor], biases: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """Each modality's additive share of the fused logits (late concat fusion, linear head).

        With ``pred = W [f_1; ...; f_M] + b`` the share of modality m is ``W[:, slice_m] f_m + b / M``
        (OGM-GE's ``out_a = a @ W[:, :512]^T + b/2`` for M = 2). Works for a Linear head on (B, D)
        features and a 1x1 Conv2d head on (B, D, h, w) features. ``biases``: each modality's own bias
        in place of ``b / M`` (LFM's one classifier per modality, each with its bias).
        """
        if not isinstance(self.fusion, ConcatFusion) or not isinstance(self.head, (nn.Linear, nn.Conv2d)):
            raise TypeError(
                "unimodal_logits needs late concat fusion with a linear head; this model has "
                f"{type(self.fusion).__name__} -> {type(self.head).__name__}"
            )
        weight, bias = self.head.weight, self.head.bias
        shares, start = {}, 0
        for m, f in features.items():
            d = f.shape[1]
            w = weight[:, start : start + d]
            start += d
            share = f @ w.T if isinstance(self.head, nn.Linear) else nn.functional.conv2d(f, w)
            b = biases[m] if biases is not None else bias / len(features) if bias is not None else None
            shares[m] = share + b.view(1, -1, *[1] * (share.dim() - 2)) if b is not None else share
        return shares


def resize_logits(logits: Tensor, size: torch.Size | tuple[int, int], align_corners: bool = False) -> Tensor:
    """Segmentation logits (B, C, h, w) coarser than the label map are upsampled (bilinear) to ``size``;
    anything else is returned as it is. Per-modality heads on encoder maps (BraTS) need it."""
    if logits.dim() == 4 and tuple(logits.shape[-2:]) != tuple(size):
        return nn.functional.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)
    return logits


class LinearClassifier(nn.Module):
    """One linear layer (the released audio-visual codes' unimodal classifier), as ``out_layer``."""

    def __init__(self, in_dim: int, num_outputs: int) -> None:
        super().__init__()
        self.out_layer = nn.Linear(in_dim, num_outputs)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(x)


class TwoLayerClassifier(nn.Module):
    def __init__(self, in_dim: int, num_outputs: int, spatial: bool = False) -> None:
        super().__init__()
        layer = (lambda i, o: nn.Conv2d(i, o, 1)) if spatial else nn.Linear
        self.hidden = layer(in_dim, in_dim)
        self.out_layer = layer(in_dim, num_outputs)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(torch.relu(self.hidden(x)))
