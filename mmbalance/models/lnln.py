"""LNLN (Zhang, Wang, Yu, "Towards Robust Multimodal Sentiment Analysis with Incomplete Data", NeurIPS 2024),
the model, on the suite's model contract. Its losses and its training on randomly incomplete inputs are the
``lnln`` method (``methods/lnln.py``); this module is the network.

Reference: Haoyu-ha/LNLN @ 80a052c, ``models/lnln.py`` (``LNLN``, l.8-172) and ``models/basic_layers.py``
(``Transformer``, ``CrossTransformer``, ``HhyperLearningEncoder``, ``GradientReversalLayer``); defaults of
``configs/train_{mosi,mosei,sims}.yaml``. With d = 128, k = 8 learned tokens, dominant modality l (language)
and the others a, v::

    h_m   = E_m(x_m)[:, :k]                         # Linear + Transformer with k prepended tokens   (l.130-132)
    w     = sigmoid-MLP(C(h_l)[:, 0])               # completeness check, C with one prepended token (l.134-135)
    h_p   = GRL(G([h_p0; h_a; h_v])[:, :k])         # proxy dominant feature generator, h_p0 learned (l.137-139)
    h_d   = (1 - w) h_p + w h_l                     # corrected dominant feature                     (l.140)
    H     = L(h_d)                                  # language encoder, every layer's output H_0..H_n (l.143)
    h_hyp = Hyper(H, h_a, h_v, h_hyp0)              # layer i: q from H_i, keys/values from a and v  (l.144)
    y     = W mean(Cross(h_hyp, H_n)[:, 1:]) + b    # fusion transformer (source h_hyp, target H_n)  (l.145-148)

and, given the complete inputs as well (training), the reconstruction of every h_m (``R_m(h_m)``) with the
complete features as its target, and the effectiveness discriminator ``D`` on ``[h_d; h_l^complete]``
(l.150-167). Every transformer is the ViT-style pre-norm block of ``basic_layers.py`` (separate LayerNorms on
q, k and v, GELU MLP, no dropout: every dropout there is 0) with a learned ``randn`` positional embedding.

Where this follows the code and not the paper, or generalises:
- The GRL sits on h_p before the mixing, so the reversed gradient reaches the proxy generator from every
  loss that reads h_d, the sentiment loss included (l.139-140), as released.
- ``HhyperLearningLayer`` adds its update to the *normalised* hyper tokens (``PreNorm_hyper`` normalises
  ``h_hyper`` and the layer adds ``h_hyper += shift`` to that): kept (``HyperLayer.forward``).
- The hyper-modality layer has one key/value projection per non-dominant modality (the code's ``to_k_ta`` /
  ``to_k_tv`` for audio and vision), and the proxy generator reads the tokens of all of them, so any
  dominant modality and any number (>= 1) of others work; with text dominant and (audio, vision) it is the
  released network. ``feat_tmp.squeeze()`` (l.134) becomes ``[:, 0]``, the same except for a batch of one.
- The text path is BERT (``transformers``) on MMSA's word ids when the data serves them
  (``text: text_bert``, BERT from a local folder, trained with the rest as the code's ``use_finetune=True``
  unless ``finetune`` is false), or MMSA's BERT features as they are (``text: text``).
- Sequence lengths (the positional embeddings' sizes) come from the data, as MMSA's loader overwrites
  ``seq_lens`` with the real shapes.
- Contract: ``encoders[m]`` is E_m (BERT included), so methods and ``modality_eval`` reach each modality's
  path by name; ``encoders[m](x)`` and ``Output.features[m]`` are h_m averaged over its k tokens, ``Output.fused`` the pooled fusion
  output, ``Output.aux`` holds w, h_d and the training-only terms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from mmbalance.common.core import MethodNotApplicable, StrictModel
from mmbalance.models.base import MultimodalModel, Output

__all__ = ["LNLNModelParams", "LNLNModel", "LNLNEncoder", "build_lnln_model"]


class LNLNModelParams(StrictModel):
    """``configs/train_mosi.yaml`` (MOSEI and SIMS: ``fusion_depth: 4``)."""

    dominant: str = "text"  # the dominant modality (language in the paper)
    dim: int = Field(128, ge=1)  # hidden_dims, input_dim of every module
    mlp_dim: int = Field(128, ge=1)  # hidden_dim of every transformer's MLP
    tokens: int = Field(8, ge=1)  # token_length: learned tokens prepended by each encoder; h_m is theirs
    heads: int = Field(8, ge=1)
    dim_head: int = Field(64, ge=1)  # basic_layers.Transformer's default (the hyper layer uses dim / heads)
    depth: int = Field(2, ge=1)  # feature_extractor.depth (the modality encoders)
    proxy_depth: int = Field(2, ge=1)  # dmc.proxy_dominant_feature_generator.depth
    check_depth: int = Field(2, ge=1)  # dmc.completeness_check.depth
    reconstructor_depth: int = Field(2, ge=1)
    language_depth: int = Field(2, ge=1)  # dmml.language_encoder.depth; the hyper layers use its outputs
    fusion_depth: int = Field(2, ge=1)  # dmml.fuison_transformer.depth: MOSI 2, MOSEI and SIMS 4
    discriminator_hidden: int = Field(64, ge=1)  # dmc.effectiveness_discriminator.hidden_dim

    @model_validator(mode="after")
    def _hyper_heads(self) -> LNLNModelParams:
        if self.dim % self.heads:
            raise ValueError(
                f"dim ({self.dim}) must be divisible by heads ({self.heads}) (the hyper layer's heads)"
            )
        return self

    @property
    def hyper_depth(self) -> int:
        """The hyper-modality layers: one per output of the language encoder (the configs' 3 = 2 + 1)."""
        return self.language_depth + 1


# --- basic_layers.py ---------------------------------------------------------------------------------
class GradientReversal(torch.autograd.Function):
    """Identity forward, gradient times -alpha backward (``GradientReversalFn``)."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha: float) -> Tensor:
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad.neg() * ctx.alpha, None


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, n, h*e) -> (B, h, n, e)."""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, h, n, e) -> (B, n, h*e)."""
    b, h, n, e = x.shape
    return x.transpose(1, 2).reshape(b, n, h * e)


class Attention(nn.Module):
    """``PreNorm_qkv(Attention)``: LayerNorm on q, k and v apart, multi-head softmax attention, output Linear
    (none when one head spans the width, as the code's ``project_out``)."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads, self.scale = heads, dim_head**-0.5
        self.norm_q, self.norm_k, self.norm_v = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, inner, bias=False) for _ in range(3))
        self.to_out = nn.Identity() if heads == 1 and dim_head == dim else nn.Linear(inner, dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q = split_heads(self.to_q(self.norm_q(q)), self.heads)
        k = split_heads(self.to_k(self.norm_k(k)), self.heads)
        v = split_heads(self.to_v(self.norm_v(v)), self.heads)
        attn = torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1)
        return self.to_out(merge_heads(attn @ v))


class FeedForward(nn.Module):
    """``PreNorm(FeedForward)``: LayerNorm, Linear, GELU, Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class Block(nn.Module):
    """One encoder layer: ``x = Attn(x, src, src) + x; x = FF(x) + x`` (self-attention when src is x)."""

    def __init__(self, p: LNLNModelParams) -> None:
        super().__init__()
        self.attn, self.ff = Attention(p.dim, p.heads, p.dim_head), FeedForward(p.dim, p.mlp_dim)

    def forward(self, x: Tensor, source: Tensor | None = None) -> Tensor:
        src = x if source is None else source
        x = self.attn(x, src, src) + x
        return self.ff(x) + x


class Transformer(nn.Module):
    """``basic_layers.Transformer``: ``tokens`` learned tokens (zeros at init) prepended, a learned positional
    embedding (randn) added, ``depth`` blocks; ``forward`` returns every block's output when asked
    (``save_hidden``: the input first, then one per block)."""

    def __init__(self, length: int, tokens: int, depth: int, p: LNLNModelParams) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.zeros(1, tokens, p.dim)) if tokens else None
        self.pos = nn.Parameter(torch.randn(1, length + tokens, p.dim))
        self.blocks = nn.ModuleList(Block(p) for _ in range(depth))

    def forward(self, x: Tensor, hidden: bool = False) -> Tensor | list[Tensor]:
        if self.tokens is not None:
            x = torch.cat([self.tokens.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos[:, : x.shape[1]]
        outputs = [x]
        for block in self.blocks:
            outputs.append(block(outputs[-1]))
        return outputs if hidden else outputs[-1]


class CrossTransformer(nn.Module):
    """``basic_layers.CrossTransformer``: one shared learned token prepended to source and target, their own
    positional embeddings, then blocks in which the target attends to the source."""

    def __init__(self, source_length: int, target_length: int, depth: int, p: LNLNModelParams) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, p.dim))
        self.pos_source = nn.Parameter(torch.randn(1, source_length + 1, p.dim))
        self.pos_target = nn.Parameter(torch.randn(1, target_length + 1, p.dim))
        self.blocks = nn.ModuleList(Block(p) for _ in range(depth))

    def forward(self, source: Tensor, target: Tensor) -> Tensor:
        token = self.token.expand(source.shape[0], -1, -1)
        source = torch.cat([token, source], dim=1)
        source = source + self.pos_source[:, : source.shape[1]]
        target = torch.cat([token, target], dim=1)
        target = target + self.pos_target[:, : target.shape[1]]
        for block in self.blocks:
            target = block(target, source)
        return target


class HyperLayer(nn.Module):
    """``PreNorm_hyper(HhyperLearningLayer)``: queries from the dominant tokens, keys and values from each other
    modality; the attended sum, projected, is added to the normalised hyper tokens."""

    def __init__(self, others: int, p: LNLNModelParams) -> None:
        super().__init__()
        dim_head = p.dim // p.heads
        inner = p.heads * dim_head
        self.heads, self.scale = p.heads, dim_head**-0.5
        self.norm_dominant, self.norm_hyper = nn.LayerNorm(p.dim), nn.LayerNorm(p.dim)
        self.norm_others = nn.ModuleList(nn.LayerNorm(p.dim) for _ in range(others))
        self.to_q = nn.Linear(p.dim, inner, bias=False)
        self.to_k = nn.ModuleList(nn.Linear(p.dim, inner, bias=False) for _ in range(others))
        self.to_v = nn.ModuleList(nn.Linear(p.dim, inner, bias=False) for _ in range(others))
        self.to_out = nn.Identity() if p.heads == 1 and dim_head == p.dim else nn.Linear(inner, p.dim)

    def forward(self, dominant: Tensor, others: Sequence[Tensor], hyper: Tensor) -> Tensor:
        q = split_heads(self.to_q(self.norm_dominant(dominant)), self.heads)
        shift = 0
        for h, norm, to_k, to_v in zip(others, self.norm_others, self.to_k, self.to_v, strict=True):
            h = norm(h)
            k, v = split_heads(to_k(h), self.heads), split_heads(to_v(h), self.heads)
            shift = shift + merge_heads(torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1) @ v)
        return self.norm_hyper(hyper) + self.to_out(shift)


# --- the network -------------------------------------------------------------------------------------
class LNLNEncoder(nn.Module):
    """E_m: (BERT on word ids, for text) Linear to d, Transformer with k prepended tokens. ``tokens`` gives
    the k token outputs (B, k, d), which LNLN reads; ``forward`` their mean (B, d), the contract's feature."""

    def __init__(self, in_dim: int, length: int, p: LNLNModelParams, bert: nn.Module | None = None,
                 finetune: bool = True) -> None:  # fmt: skip
        super().__init__()
        self.bert, self.finetune = bert, finetune
        if bert is not None:
            bert.requires_grad_(finetune)
        self.proj = nn.Linear(in_dim, p.dim)
        self.transformer = Transformer(length, p.tokens, p.depth, p)
        self.out_dim, self.k = p.dim, p.tokens

    def train(self, mode: bool = True) -> LNLNEncoder:
        super().train(mode)
        if self.bert is not None and not self.finetune:  # a frozen BERT is a feature extractor: no dropout
            self.bert.eval()
        return self

    def tokens(self, x: Tensor) -> Tensor:
        if self.bert is not None:  # (B, 3, L): word ids, attention mask, segment ids (BertTextEncoder)
            with torch.set_grad_enabled(self.finetune and torch.is_grad_enabled()):
                x = self.bert(input_ids=x[:, 0], attention_mask=x[:, 1], token_type_ids=x[:, 2])[0]
        return self.transformer(self.proj(x))[:, : self.k]

    def feature_modules(self) -> list[nn.Module]:
        """LNLNModel calls ``tokens``, not ``forward``: the transformer's output is all this modality passes on."""
        return [self.transformer]

    def forward(self, x: Tensor) -> Tensor:
        return self.tokens(x).mean(dim=1)  # (B, d)


class DominantFusion(nn.Module):
    """Dominant modality correction (completeness check, proxy generator, GRL, mixing) and dominant-modality
    based multimodal learning (language encoder, hyper-modality layers, fusion transformer): the encoders'
    tokens -> (pooled fusion output (B, d), w (B, 1), h_d (B, k, d))."""

    def __init__(self, dominant: str, others: Sequence[str], p: LNLNModelParams) -> None:
        super().__init__()
        self.dominant, self.others, k = dominant, list(others), p.tokens
        self.check = Transformer(k, 1, p.check_depth, p)
        self.check_head = nn.Sequential(
            nn.Linear(p.dim, p.dim // 2), nn.LeakyReLU(0.1), nn.Linear(p.dim // 2, 1), nn.Sigmoid()
        )
        self.proxy_tokens = nn.Parameter(torch.ones(1, k, p.dim))  # h_p in the code
        self.proxy = Transformer(k * (1 + len(others)), k, p.proxy_depth, p)
        self.hyper_tokens = nn.Parameter(torch.ones(1, k, p.dim))  # h_hyper in the code
        self.language = Transformer(k, 0, p.language_depth, p)
        self.hyper = nn.ModuleList(HyperLayer(len(others), p) for _ in range(p.hyper_depth))
        self.cross = CrossTransformer(k, k, p.fusion_depth, p)

    def forward(self, h: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        h_l, others, k = h[self.dominant], [h[m] for m in self.others], h[self.dominant].shape[1]
        b = h_l.shape[0]
        w = self.check_head(self.check(h_l)[:, 0])  # (B, 1) completeness of the dominant modality
        h_p = self.proxy(torch.cat([self.proxy_tokens.expand(b, -1, -1), *others], dim=1))[:, :k]
        h_p = GradientReversal.apply(h_p, 1.0)
        h_d = h_p * (1 - w.unsqueeze(-1)) + h_l * w.unsqueeze(-1)
        states = self.language(h_d, hidden=True)
        hyper = self.hyper_tokens.expand(b, -1, -1)
        for layer, state in zip(self.hyper, states, strict=True):
            hyper = layer(state, others, hyper)
        feat = self.cross(hyper, states[-1])
        return feat[:, 1:].mean(dim=1), w, h_d


class LNLNModel(MultimodalModel):
    """``forward(inputs)``: LNLN's prediction from (possibly incomplete) inputs, as the code evaluates;
    ``forward(inputs, complete)``: its training pass, which also reconstructs every modality's tokens and
    runs the effectiveness discriminator against the complete inputs' tokens (``Output.aux``)."""

    def __init__(self, encoders: Mapping[str, LNLNEncoder], fusion: DominantFusion, head: nn.Linear,
                 p: LNLNModelParams) -> None:  # fmt: skip
        super().__init__(encoders, fusion, head)
        self.reconstructors = nn.ModuleDict(
            {m: Transformer(p.tokens, 0, p.reconstructor_depth, p) for m in encoders}
        )
        self.discriminator = nn.Sequential(
            nn.Linear(p.dim, p.discriminator_hidden), nn.LeakyReLU(0.1), nn.Linear(p.discriminator_hidden, 2)
        )

    def forward(self, inputs: Mapping[str, Tensor], complete: Mapping[str, Tensor] | None = None) -> Output:
        h = {m: enc.tokens(inputs[m]) for m, enc in self.encoders.items()}  # (B, k, d) each
        fused, w, h_d = self.fusion(h)
        aux = {"w": w, "dominant": h_d}
        if complete is not None:
            target = {m: enc.tokens(complete[m]) for m, enc in self.encoders.items()}
            aux["reconstructed"] = torch.cat([self.reconstructors[m](h[m]) for m in h], dim=1)
            aux["complete"] = torch.cat(list(target.values()), dim=1)
            pair = torch.cat([h_d, target[self.fusion.dominant]])  # (2B, k, d): corrected, then complete
            aux["effectiveness"] = self.discriminator(pair.flatten(0, 1))  # (2Bk, 2)
        return Output(self.head(fused), {m: x.mean(dim=1) for m, x in h.items()}, fused, aux)


def build_lnln_model(
    in_dims: Mapping[str, int], lengths: Mapping[str, int], output_dim: int, p: LNLNModelParams,
    bert: nn.Module | None = None, finetune: bool = True,
) -> LNLNModel:  # fmt: skip
    """LNLN over the modalities of ``in_dims`` ({name: feature size}, in order) with sequence ``lengths``;
    ``bert`` (for the dominant text) reads word ids instead of features."""
    if p.dominant not in in_dims or len(in_dims) < 2:  # e.g. the unimodal baseline's one modality
        raise MethodNotApplicable(
            f"LNLN needs its dominant modality {p.dominant!r} and at least one other; got {list(in_dims)}"
        )
    encoders = {
        m: LNLNEncoder(bert.config.hidden_size if bert is not None and m == p.dominant else d, lengths[m], p,
                       bert if m == p.dominant else None, finetune)
        for m, d in in_dims.items()
    }  # fmt: skip
    fusion = DominantFusion(p.dominant, [m for m in in_dims if m != p.dominant], p)
    return LNLNModel(encoders, fusion, nn.Linear(p.dim, output_dim), p)
