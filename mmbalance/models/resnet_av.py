"""The audio-visual model of OGM-GE, PMR, AGM and MLA: a ResNet-18 per modality, late concat fusion, a
linear head (GeWu-Lab/OGM-GE_CVPR2022 @ 343dc1d ``models/basic_model.py`` AVClassifier with
``fusion_method='concat'``, ``models/fusion_modules.py`` ConcatFusion, ``models/backbone.py``).

- Audio: a (1, F, T) spectrogram is a 1-channel image; ResNet-18 with a 1-channel ``conv1``
  (backbone.py l.78-80), global average pooling of the last map (basic_model.py l.48).
- Visual: frames (3, T, H, W); each frame goes through a 3-channel ResNet-18 (backbone.py l.144-147
  folds T into the batch), the (B, 512, T, h, w) maps are average-pooled over time and space
  (basic_model.py l.43-49).
- Fusion: concat of the 512-d features in modality order, then one ``Linear(1024, classes)``
  (fusion_modules.py ConcatFusion), so ``unimodal_logits`` gives OGM-GE's ``out_a`` / ``out_v``.
- Initialisation: ``model.apply(weight_init)`` (main.py l.240, utils/utils.py l.15-23): Xavier-normal
  Linear weights with zero bias, Kaiming-normal (fan_out) convs, BatchNorm 1 / 0. No pretraining.
- Per-modality classifiers that methods add (``unimodal_classifier``): ``unimodal_head: two_layer``
  (the suite's default, as every other model) or ``linear``, the released models' one ``nn.Linear(512, C)``
  with the same ``weight_init`` (BSS ``CREMA-D/models/basic_model.py:15-16``, DI-MML
  ``models/basic_model.py:22, 51``, Data Remixing ``models/models.py``, MLB ``OGM_Model.py:229``). The
  synthetic models have no such parameter: their classifiers are two layers.

The encoders are torchvision's ``resnet18`` (the released backbone is a copy of it) without ``fc``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from mmbalance.common.core import StrictModel
from mmbalance.models.base import ConcatFusion, LinearClassifier, MultimodalModel

__all__ = ["ResNetAVParams", "ResNet18Encoder", "ResNetAVModel", "build_resnet_av"]


class ResNetAVParams(StrictModel):
    width: int = Field(64, ge=1)  # channels of the first stage (64 = ResNet-18; smaller only for tests)
    unimodal_head: Literal["two_layer", "linear"] = (
        "two_layer"  # methods' per-modality classifiers (docstring)
    )


class ResNet18Encoder(nn.Module):
    """torchvision ResNet-18 trunk for ``in_channels``-channel images, pooled to (B, 512 * width / 64).

    ``frames=True`` takes (B, C, T, H, W) clips and pools over T as well."""

    def __init__(self, in_channels: int, frames: bool, width: int = 64) -> None:
        super().__init__()
        from torchvision.models.resnet import BasicBlock, ResNet

        trunk = ResNet(BasicBlock, [2, 2, 2, 2])
        if width != 64:  # thinner copy for fast tests; the structure stays ResNet-18's
            trunk.inplanes = width
            trunk.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            trunk.bn1 = nn.BatchNorm2d(width)
            trunk.layer1 = trunk._make_layer(BasicBlock, width, 2)
            trunk.layer2 = trunk._make_layer(BasicBlock, width * 2, 2, stride=2)
            trunk.layer3 = trunk._make_layer(BasicBlock, width * 4, 2, stride=2)
            trunk.layer4 = trunk._make_layer(BasicBlock, width * 8, 2, stride=2)
        trunk.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.body = nn.Sequential(
            trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool, trunk.layer1, trunk.layer2, trunk.layer3,
            trunk.layer4,
        )  # fmt: skip
        self.frames = frames
        self.out_dim = width * 8

    def forward(self, x: Tensor) -> Tensor:
        if not self.frames:
            return self.body(x).mean(dim=(2, 3))
        b, c, t, h, w = x.shape
        maps = self.body(x.transpose(1, 2).reshape(b * t, c, h, w))  # (B*T, D, h', w')
        return maps.view(b, t, *maps.shape[1:]).mean(dim=(1, 3, 4))


def weight_init(m: nn.Module) -> None:
    """OGM-GE's ``utils.weight_init``."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_normal_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class ResNetAVModel(MultimodalModel):
    """The late-fusion model, with the per-modality classifier shape ``unimodal_head`` chooses."""

    def __init__(
        self, encoders: Mapping[str, nn.Module], fusion: nn.Module, head: nn.Module, unimodal_head: str
    ) -> None:
        super().__init__(encoders, fusion, head)
        self.unimodal_head = unimodal_head

    def unimodal_classifier(self, modality: str, num_outputs: int) -> nn.Module:
        if self.unimodal_head == "two_layer":
            return super().unimodal_classifier(modality, num_outputs)
        classifier = LinearClassifier(self.encoders[modality].out_dim, num_outputs)
        with torch.no_grad():
            classifier.apply(weight_init)
        return classifier


def build_resnet_av(
    in_channels: Mapping[str, int], clips: Mapping[str, bool], num_classes: int, params: ResNetAVParams
) -> MultimodalModel:
    """One ResNet-18 per modality (``in_channels[m]`` channels; ``clips[m]``: frames with a time axis)."""
    encoders = {m: ResNet18Encoder(c, clips[m], params.width) for m, c in in_channels.items()}
    dim = sum(e.out_dim for e in encoders.values())
    model = ResNetAVModel(encoders, ConcatFusion(), nn.Linear(dim, num_classes), params.unimodal_head)
    with torch.no_grad():
        model.apply(weight_init)
    return model
