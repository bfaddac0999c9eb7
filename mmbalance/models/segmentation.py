"""BraTS paper model: one DeepLabV3+ encoder per MRI sequence and one shared DeepLabV3+ decoder.

Follows ``DeepLabMultiInput`` and ``SegClassifier`` of the CGGM code (zrguo/CGGM @ 21e428c,
``models/segmodel.py``), built from torchvision's ResNet and DeepLabV3 ``ASPP`` instead of the
hand-written copies:

- encoder m: ResNet trunk (Bottleneck blocks, atrous layers for output stride 8 or 16) -> ASPP.
  Its feature is the ASPP map (B, D, H/os, W/os); the ResNet ``layer1`` map (B, 256, H/4, W/4) is
  the low-level feature the decoder needs, returned in ``Output.aux["low_level/<m>"]``.
- fusion: both maps concatenated over the sequences (the ASPP maps resized to the low-level size
  first, as the decoder of the CGGM code does before its own concatenation).
- head: DeepLabV3+ decoder (1x1 conv of the low-level map to 48 channels, two 3x3 convs, 1x1
  classifier = ``out_layer``), logits upsampled to the input size (bilinear, align_corners=True).
- ``unimodal_classifier``: the CGGM code's ``SegClassifier`` branch, the same decoder on one
  sequence's (detached, by the method) ASPP and low-level maps.

Differences from the CGGM code, all structural details of the trunk: torchvision's ResNet dilates
layer4 uniformly where the CGGM copy uses multi-grid dilations (1, 2, 4); ``layers`` and ``width``
(torchvision's ``width_per_group``) make a tiny trunk for tests. The CGGM training script builds
``DeepLabMultiInput(output_stride=16)`` (the class default, 8, is not what runs), so 16 is our
default, with the CGGM atrous rates of each stride.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.models.segmentation.deeplabv3 import ASPP

from mmbalance.models.base import MultimodalModel, Output

__all__ = [
    "DeepLabEncoder",
    "DecoderInputFusion",
    "DeepLabDecoder",
    "DeepLabMultiInput",
    "deeplab_multi_input",
]

# Atrous rates of ASPP's three 3x3 branches in the CGGM code (models/segmodel.py, ASPP).
ASPP_RATES = {8: (12, 24, 36), 16: (2, 4, 6)}
# Which of ResNet layer2..4 trade their stride for dilation (torchvision's replace_stride_with_dilation).
DILATE = {8: [False, True, True], 16: [False, False, True]}
LOW_LEVEL_PROJ = 48  # DeepLabV3+ squeezes the low-level map to 48 channels (CGGM Decoder.conv1)


class DeepLabEncoder(nn.Module):
    """One MRI sequence: ResNet trunk + ASPP, ``(B, C, H, W) -> (B, out_dim, H/os, W/os)``;
    ``features`` also returns the ResNet ``layer1`` map the DeepLabV3+ decoder needs."""

    def __init__(
        self,
        in_channels: int = 1,
        layers: Sequence[int] = (3, 4, 23, 3),
        width: int = 64,
        output_stride: int = 16,
        aspp_channels: int = 256,
    ) -> None:
        super().__init__()
        if output_stride not in ASPP_RATES:
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        trunk = ResNet(
            Bottleneck,
            list(layers),
            width_per_group=width,
            replace_stride_with_dilation=DILATE[output_stride],
        )
        trunk.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(trunk.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.stem = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool)
        self.layer1, self.layer2 = trunk.layer1, trunk.layer2
        self.layer3, self.layer4 = trunk.layer3, trunk.layer4
        self.aspp = ASPP(512 * Bottleneck.expansion, ASPP_RATES[output_stride], aspp_channels)
        self.out_dim = aspp_channels
        self.low_dim = 64 * Bottleneck.expansion

    def features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(ASPP map (B, D, H/os, W/os), low-level map (B, 256, H/4, W/4))."""
        if self.training and x.shape[0] == 1:
            # ASPP's image-pooling branch normalises a 1x1 map over the batch.
            raise ValueError(
                "DeepLabEncoder got a training batch of 1: BatchNorm in ASPP's pooling branch "
                "needs at least 2 samples; pick a batch_size that leaves no final batch of 1"
            )
        low = self.layer1(self.stem(x))
        return self.aspp(self.layer4(self.layer3(self.layer2(low)))), low

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)[0]  # the modality's feature: (B, D, H/os, W/os)

    def feature_modules(self) -> list[nn.Module]:
        """The model calls ``features``: the ASPP map and the low-level map both reach the decoder."""
        return [self.aspp, self.layer1]


class DecoderInputFusion(nn.Module):
    """``[ASPP maps resized to the low-level size; low-level maps]`` along channels, in modality order:
    the decoder's input. Resizing before concatenating equals the CGGM decoder's resize-then-concat."""

    def forward(self, high: Mapping[str, Tensor], low: Mapping[str, Tensor]) -> Tensor:
        size = next(iter(low.values())).shape[-2:]
        resized = [F.interpolate(h, size=size, mode="bilinear", align_corners=True) for h in high.values()]
        return torch.cat([*resized, *low.values()], dim=1)  # (B, k * (D + 256), H/4, W/4)


class DeepLabDecoder(nn.Module):
    """DeepLabV3+ decoder (CGGM ``Decoder``) on the ``DecoderInputFusion`` of k encoders' maps.

    Input (B, high_dim + low_dim, h, w): the first ``high_dim`` channels are the resized ASPP maps,
    the rest the low-level maps. Output (B, num_classes, h, w) logits.
    """

    def __init__(self, high_dim: int, low_dim: int, num_classes: int, channels: int = 256) -> None:
        super().__init__()
        self.high_dim = high_dim
        self.low_proj = nn.Sequential(
            nn.Conv2d(low_dim, LOW_LEVEL_PROJ, 1, bias=False), nn.BatchNorm2d(LOW_LEVEL_PROJ), nn.ReLU()
        )
        self.refine = nn.Sequential(
            nn.Conv2d(high_dim + LOW_LEVEL_PROJ, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(), nn.Dropout(0.5),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(), nn.Dropout(0.1),
        )  # fmt: skip
        self.out_layer = nn.Conv2d(channels, num_classes, 1)  # CGGM's 'decoder.last_conv.7'
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        high, low = x[:, : self.high_dim], x[:, self.high_dim :]
        return self.out_layer(self.refine(torch.cat([high, self.low_proj(low)], dim=1)))


class DeepLabMultiInput(MultimodalModel):
    """``encoders`` are ``DeepLabEncoder``s, ``head`` a ``DeepLabDecoder`` over all of them."""

    def forward(self, inputs: Mapping[str, Tensor]) -> Output:
        features, low = {}, {}
        for m, enc in self.encoders.items():
            features[m], low[m] = enc.features(inputs[m])
        fused = self.fusion(features, low)
        logits = self.head(fused)  # (B, C, H/4, W/4)
        size = next(iter(inputs.values())).shape[-2:]
        pred = F.interpolate(logits, size=size, mode="bilinear", align_corners=True)  # (B, C, H, W)
        return Output(pred, features, fused, {f"low_level/{m}": x for m, x in low.items()})

    def classifier_input(self, out: Output, modality: str) -> Tensor:
        return self.fusion({modality: out.features[modality]}, {modality: out.aux[f"low_level/{modality}"]})

    def unimodal_classifier(self, modality: str, num_outputs: int) -> nn.Module:
        """CGGM's ``SegClassifier`` branch for one sequence; its logits are at 1/4 of the input size."""
        enc = self.encoders[modality]
        return DeepLabDecoder(enc.out_dim, enc.low_dim, num_outputs, self.head.refine[0].out_channels)


def deeplab_multi_input(
    modalities: Sequence[str],
    num_classes: int,
    layers: Sequence[int] = (3, 4, 23, 3),
    width: int = 64,
    output_stride: int = 16,
    aspp_channels: int = 256,
    decoder_channels: int = 256,
) -> DeepLabMultiInput:
    """CGGM's BraTS model for ``modalities`` (one single-channel input each); defaults = ResNet-101."""
    encoders = {m: DeepLabEncoder(1, layers, width, output_stride, aspp_channels) for m in modalities}
    k = len(encoders)
    head = DeepLabDecoder(
        aspp_channels * k, encoders[modalities[0]].low_dim * k, num_classes, decoder_channels
    )
    return DeepLabMultiInput(encoders, DecoderInputFusion(), head)
