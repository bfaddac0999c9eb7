"""The CGGM code's model for CMU-MOSI and IEMOCAP (``MSAModel``), on the suite's model contract.

Reference: zrguo/CGGM @ 21e428c, ``models/msamodel.py`` and ``modules/transformer.py`` (MulT's
fairseq-style encoder, yaohungt/Multimodal-Transformer). Per modality m with input (B, T_m, D_m)::

    h_m = Transformer_m(Conv1d_k1(x_m))                  # (B, T_m, d), d = proj_dim
    z   = FusionTransformer(concat_t(h_1, ..., h_M))[:, 0]  # concat along the sequence, first step
    y   = out_layer(z + proj2(dropout(relu(proj1(z)))))  # residual head

Each transformer scales its input by sqrt(d), adds sinusoidal positions, applies embedding dropout,
runs pre-norm layers (self-attention, ReLU MLP of width 4d) and ends with a LayerNorm. The fusion
transformer has ``layers - 2`` layers. ``Output.features[m]`` is h_m pooled to (B, d) (first step by
default); ``Output.aux[m]`` is the whole sequence h_m, which CGGM's per-modality classifiers read
(``classifier_input``): a transformer over the sequence, first step, ``proj1``, ReLU, ``out_layer``;
given a pooled (B, d) feature instead, the classifier reads it as a one-step sequence.

Where this differs from the released code, and why:
- The 1x1 projection is part of ``encoders[m]`` (the modality's whole path before fusion), so a
  method scaling encoder m's gradients scales it too; in the CGGM code ``proj.{i}`` sits outside
  ``encoders.{i}`` and its rho scaling skips it. The encoder names it ``input_projection``, so CGGM
  can leave it out, as released (``scale_input_projection`` in cggm.py).
- MulT's positional embedding treats a step whose first channel is exactly 0 as padding (position 0,
  zero embedding). After the projection (which has a bias) that practically never happens; here
  every step gets its position 1..T. Attention keeps ``nn.MultiheadAttention``'s weights and init
  (xavier) and is written out as fairseq's (``self_attention``); no attention mask, as in the CGGM code.
- Speed (issue 15; the same maths, other random draws than before): on the CPU a dropout mask is
  ``uniform 31-bit integer < round((1 - p) 2^31)`` (``dropout``), the keep probability within 2^-31 of
  1 - p, ~3x cheaper than torch's ``bernoulli_``, which was 40% of a MOSI step. Training attention is
  written out rather than ``nn.MultiheadAttention``'s, whose CPU path with dropout adds
  ``_safe_softmax`` checks for fully masked rows this model never has (9% of a step). A caller that
  reads only step 0 (the fusion transformer, CGGM's classifiers) lets the last layer compute that step
  alone: the other steps of the last layer reach nothing (attention is the only mixing across steps).
- The released classifier applies the same ``proj1`` twice (``proj1(x)`` then ``relu(proj1(.))``);
  ``cls_shared_proj=True`` keeps that, ``False`` uses a second layer ``proj2`` instead.
- ``fusion: concat`` (not in CGGM) replaces the fusion transformer and residual head by pooled
  features concatenated into one Linear layer: the late-fusion shape OGM-GE and PMR need
  (``unimodal_logits``), so they can run on MOSI and IEMOCAP with the same encoders.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from mmbalance.common.core import StrictModel
from mmbalance.models.base import ConcatFusion, MultimodalModel, Output

__all__ = ["MSAModelParams", "MSAModel", "SequenceEncoder", "SequenceClassifier", "build_msa_model"]


class MSAModelParams(StrictModel):
    """CGGM's MOSI defaults (run/mosi_run.py); IEMOCAP overrides layers and dropouts."""

    fusion: Literal["transformer", "concat"] = "transformer"  # concat: late fusion for OGM-GE / PMR
    proj_dim: int = Field(40, ge=1)  # d, the width of every transformer
    num_heads: int = Field(5, ge=1)
    layers: int = Field(5, ge=2)  # per-modality encoder layers (CGGM's nlevels); fusion gets layers - 2
    cls_layers: int = Field(2, ge=0)  # layers of each CGGM classifier's transformer
    attn_dropout: float = Field(0.15, ge=0, lt=1)
    relu_dropout: float = Field(0.15, ge=0, lt=1)
    embed_dropout: float = Field(0.2, ge=0, lt=1)
    res_dropout: float = Field(0.1, ge=0, lt=1)
    out_dropout: float = Field(0.1, ge=0, lt=1)  # in the residual head
    pool: Literal["first", "last", "mean"] = "first"  # (B, T, d) -> (B, d) for Output.features
    cls_shared_proj: bool = True  # the released classifier's proj1-twice quirk

    @model_validator(mode="after")
    def _heads_divide(self) -> MSAModelParams:
        if self.proj_dim % self.num_heads:
            raise ValueError(f"proj_dim ({self.proj_dim}) must be divisible by num_heads ({self.num_heads})")
        return self


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """fairseq/tensor2tensor embedding of positions 1..length: [sin | cos] halves, (length, dim)."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float) * -(math.log(10000) / max(half - 1, 1)))
    angle = torch.arange(1, length + 1, dtype=torch.float).unsqueeze(1) * freq.unsqueeze(0)
    emb = torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)
    return F.pad(emb, (0, dim - 2 * half))  # odd dim: a zero column, as fairseq


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """``F.dropout``; on the CPU with the mask drawn as 31-bit integers below a threshold (see the
    module docstring), elsewhere torch's own (CUDA's fused kernel is fast already)."""
    if not training or p == 0 or x.device.type != "cpu":
        return F.dropout(x, p, training)
    keep = torch.empty(x.shape, dtype=torch.int32).random_() < round((1 - p) * 2**31)  # random_: [0, 2^31)
    return x * keep.to(x.dtype).mul_(1 / (1 - p))


def self_attention(attn: nn.MultiheadAttention, x: Tensor, first_only: bool = False) -> Tensor:
    """Multi-head self-attention of (B, T, d) ``x`` with ``attn``'s weights, as fairseq's
    ``MultiheadAttention`` (scaled q, softmax, dropout on the weights); (B, 1, d) with ``first_only``
    (the query of step 0 alone). Evaluation takes torch's fused kernel (no dropout there)."""
    (b, t, d), h = x.shape, attn.num_heads
    q, k, v = (
        F.linear(x, attn.in_proj_weight, attn.in_proj_bias).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
    )
    if first_only:
        q = q[:, :, :1]
    if attn.training and attn.dropout > 0:
        weights = torch.softmax((q * (d // h) ** -0.5) @ k.transpose(-2, -1), dim=-1)
        out = dropout(weights, attn.dropout, True) @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v)
    return attn.out_proj(out.transpose(1, 2).reshape(b, q.shape[2], d))


class EncoderLayer(nn.Module):
    """Pre-norm layer: x + Attn(LN(x)), then x + MLP(LN(x)); MulT's three dropouts kept apart."""

    def __init__(
        self, d: int, heads: int, attn_dropout: float, relu_dropout: float, res_dropout: float
    ) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, dropout=attn_dropout, batch_first=True)
        nn.init.xavier_uniform_(self.attn.out_proj.weight)  # as fairseq; q, k, v already are
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.relu_dropout, self.res_dropout = relu_dropout, res_dropout

    def forward(self, x: Tensor, first_only: bool = False) -> Tensor:
        """(B, T, d) -> (B, T, d), or (B, 1, d) for step 0 alone with ``first_only``."""
        h = self_attention(self.attn, self.norm1(x), first_only)
        x = (x[:, :1] if first_only else x) + dropout(h, self.res_dropout, self.training)
        h = dropout(F.relu(self.fc1(self.norm2(x))), self.relu_dropout, self.training)
        return x + dropout(self.fc2(h), self.res_dropout, self.training)


class SequenceTransformer(nn.Module):
    """MulT's ``TransformerEncoder``: (B, T, d) -> (B, T, d)."""

    def __init__(self, d: int, layers: int, p: MSAModelParams) -> None:
        super().__init__()
        self.d, self.embed_dropout = d, p.embed_dropout
        self.layers = nn.ModuleList(
            EncoderLayer(d, p.num_heads, p.attn_dropout, p.relu_dropout, p.res_dropout) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d)

    def forward(self, x: Tensor, first_only: bool = False) -> Tensor:
        """(B, T, d) -> (B, T, d); ``first_only``: (B, d), the output at step 0, computed alone in
        the last layer (the other steps' outputs there reach nothing)."""
        x = math.sqrt(self.d) * x + sinusoidal_positions(x.shape[1], self.d).to(x)
        x = dropout(x, self.embed_dropout, self.training)
        for i, layer in enumerate(self.layers):
            x = layer(x, first_only=first_only and i == len(self.layers) - 1)
        x = self.norm(x)
        return x[:, 0] if first_only else x


class SequenceEncoder(nn.Module):
    """One modality: Conv1d(k=1) projection + transformer. ``forward`` gives the pooled (B, d) feature."""

    def __init__(self, in_dim: int, p: MSAModelParams) -> None:
        super().__init__()
        self.out_dim, self.pool_mode = p.proj_dim, p.pool
        self.proj = nn.Conv1d(in_dim, p.proj_dim, kernel_size=1)
        self.transformer = SequenceTransformer(p.proj_dim, p.layers, p)

    @property
    def input_projection(self) -> nn.Module:
        """The 1x1 projection: ``proj.{i}`` in the CGGM code, outside its ``encoders.{i}`` (see cggm.py)."""
        return self.proj

    def sequence(self, x: Tensor) -> Tensor:
        """(B, T, D_in) -> (B, T, d)."""
        return self.transformer(self.proj(x.transpose(1, 2)).transpose(1, 2))

    def feature_modules(self) -> list[nn.Module]:
        """MSAModel calls ``sequence`` and ``pool``, not ``forward``: the transformer's output is all this
        modality passes on (the pooled feature is a function of it)."""
        return [self.transformer]

    def pool(self, h: Tensor) -> Tensor:
        if self.pool_mode == "first":
            return h[:, 0]
        return h[:, -1] if self.pool_mode == "last" else h.mean(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.sequence(x))  # (B, d)


class SequenceFusion(nn.Module):
    """Concatenate the modality sequences along time, run the fusion transformer, take step 0."""

    def __init__(self, p: MSAModelParams) -> None:
        super().__init__()
        self.transformer = SequenceTransformer(p.proj_dim, p.layers - 2, p)

    def forward(self, sequences: Mapping[str, Tensor]) -> Tensor:
        return self.transformer(torch.cat(list(sequences.values()), dim=1), first_only=True)  # (B, d)


class ResidualHead(nn.Module):
    def __init__(self, d: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.proj1, self.proj2, self.out_layer = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, out_dim)
        self.dropout = dropout

    def forward(self, z: Tensor) -> Tensor:
        return self.out_layer(z + self.proj2(dropout(F.relu(self.proj1(z)), self.dropout, self.training)))


class SequenceClassifier(nn.Module):
    """CGGM's per-modality ``Classifier``: transformer over the encoder sequence, step 0, two layers."""

    def __init__(self, d: int, out_dim: int, p: MSAModelParams) -> None:
        super().__init__()
        self.bone = SequenceTransformer(d, p.cls_layers, p)
        self.proj1 = nn.Linear(d, d)
        self.proj2 = self.proj1 if p.cls_shared_proj else nn.Linear(d, d)
        self.out_layer = nn.Linear(d, out_dim)

    def forward(self, h: Tensor) -> Tensor:
        if h.dim() == 2:  # a pooled (B, d) feature (methods that classify ``features``): a one-step sequence
            h = h.unsqueeze(1)
        x = self.proj1(self.bone(h, first_only=True))
        return self.out_layer(F.relu(self.proj2(x)))


class MSAModel(MultimodalModel):
    """``MultimodalModel`` whose fusion may read the encoder sequences (see the module docstring)."""

    def __init__(self, encoders: Mapping[str, SequenceEncoder], fusion: nn.Module, head: nn.Module,
                 params: MSAModelParams) -> None:  # fmt: skip
        super().__init__(encoders, fusion, head)
        self.params = params

    def forward(self, inputs: Mapping[str, Tensor]) -> Output:
        sequences = {m: enc.sequence(inputs[m]) for m, enc in self.encoders.items()}  # (B, T_m, d)
        features = {m: self.encoders[m].pool(h) for m, h in sequences.items()}  # (B, d)
        fused = self.fusion(sequences if isinstance(self.fusion, SequenceFusion) else features)
        return Output(self.head(fused), features, fused, aux=sequences)

    def classifier_input(self, out: Output, modality: str) -> Tensor:
        """The whole encoder sequence (B, T, d), as CGGM's classifiers read it (the caller detaches)."""
        return out.aux[modality]

    def unimodal_classifier(self, modality: str, num_outputs: int) -> nn.Module:
        return SequenceClassifier(self.encoders[modality].out_dim, num_outputs, self.params)


def build_msa_model(in_dims: Mapping[str, int], output_dim: int, p: MSAModelParams) -> MSAModel:
    """The MOSI/IEMOCAP model for modalities ``in_dims`` ({name: feature size}), in that order."""
    encoders = {m: SequenceEncoder(d, p) for m, d in in_dims.items()}
    if p.fusion == "concat":
        return MSAModel(encoders, ConcatFusion(), nn.Linear(p.proj_dim * len(encoders), output_dim), p)
    return MSAModel(encoders, SequenceFusion(p), ResidualHead(p.proj_dim, output_dim, p.out_dropout), p)
