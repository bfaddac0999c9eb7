"""Small models for the synthetic data: an MLP encoder per vector modality, a CNN encoder per
image modality, late concat fusion and a linear (or 1x1 conv) head. Small enough for a laptop CPU,
and exactly the late-fusion shape that OGM-GE's and PMR's papers use."""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from mmbalance.models.base import ConcatFusion, MultimodalModel


class MLPEncoder(nn.Module):
    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim), nn.ReLU()
        )

    def forward(self, x):
        return self.net(x)  # (B, out_dim)


class ConvEncoder(nn.Module):
    """Two 3x3 conv blocks at full resolution: (B, C_in, H, W) -> (B, out_dim, H, W)."""

    def __init__(self, in_channels: int, width: int, out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, out_dim, 3, padding=1), nn.BatchNorm2d(out_dim), nn.ReLU(),
        )  # fmt: skip

    def forward(self, x):
        return self.net(x)


def late_fusion_mlp(
    in_dims: Mapping[str, int], hidden: int, feature_dim: int, out_dim: int, dropout: float = 0.0
) -> MultimodalModel:
    encoders = {m: MLPEncoder(d, hidden, feature_dim, dropout) for m, d in in_dims.items()}
    return MultimodalModel(encoders, ConcatFusion(), nn.Linear(feature_dim * len(encoders), out_dim))


def late_fusion_cnn(
    in_channels: Mapping[str, int], width: int, feature_dim: int, num_classes: int
) -> MultimodalModel:
    encoders = {m: ConvEncoder(c, width, feature_dim) for m, c in in_channels.items()}
    return MultimodalModel(encoders, ConcatFusion(), nn.Conv2d(feature_dim * len(encoders), num_classes, 1))
