"""The audio-visual ResNet model's per-modality classifier shape (``unimodal_head``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmbalance.models.base import LinearClassifier, TwoLayerClassifier
from mmbalance.models.resnet_av import ResNetAVParams, build_resnet_av
from mmbalance.training.method_parts import UnimodalHeads


def model(head: str):
    return build_resnet_av(
        {"audio": 1, "visual": 3},
        {"audio": False, "visual": True},
        5,
        ResNetAVParams(width=8, unimodal_head=head),
    )


def test_linear_heads_are_the_released_one_linear_layer():
    torch.manual_seed(0)
    heads = UnimodalHeads(model("linear"))
    for m in ("audio", "visual"):
        h = heads.heads[m]
        assert isinstance(h, LinearClassifier) and [type(c) for c in h.children()] == [nn.Linear]
        assert h.out_layer.weight.shape == (5, 64)
        assert torch.equal(h.out_layer.bias, torch.zeros(5))  # weight_init: zero bias (utils.py:17-18)
        x = torch.randn(2, 64)
        assert torch.equal(h(x), h.out_layer(x))


def test_default_heads_stay_two_layers():
    heads = UnimodalHeads(model("two_layer"))
    assert all(isinstance(h, TwoLayerClassifier) for h in heads.heads.values())
    with pytest.raises(ValueError, match="unimodal_head"):
        ResNetAVParams(unimodal_head="mlp")
