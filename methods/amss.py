"""AMSS / AMSS+: adaptively masking subnetworks; each encoder updates only a sampled fraction of
its filters, the fraction set by how much that modality already knows.

Reference: "Learning to Rebalance Multi-Modal Optimization by Adaptively Masking Subnetworks",
TPAMI (the repository README). Official code: njustkmg/TPAMI-AMSS
@ 3161ecc, ``AMSS/train_test.py``: ``modal_caculate_MI`` lines 38-97, ``calculate_outputs``
107-127, ``train_epoch`` 129-310; three modalities in ``AMSS_rod/train_nv.py:41-90``.

Per training step (``train_test.py``)::

    o_m   = W_m f_m + b / 2                           # 121-124: modality m's share of the concat head
    HY    = CE(pi, pi), pi = label frequencies in the batch       # 62-70 (pi is read as logits)
    s_m   = -CE(o_m, y)                               # 74-75
    H_m   = CE(f_m, softmax(f_m))                     # 78-82: entropy of the softmaxed features
    if s_m + HY + 0.5 <= 0 for some m:  c_m = 1/2     # 86-87
    else: r_m = (s_m + HY + 0.5) / H_m; t_m = r_m / T;
          c_m = clamp(1 - softmax(t)_m, 0.1, 0.9)     # 89-95 (M = 2: c_a = e^{t_v} / (e^{t_a} + e^{t_v}));
                                                      #   AMSS_rod/train_nv.py:82-88 for M = 3
    loss = CE(fused, y); backward                     # 189-192
    for every 4-D conv kernel of encoder m (243-308):
        mu_k = sum over the kernel of filter k of grad^2  (gn_mode gn; gn_wn: / w^2; sqrt_gn)
        keep p = ceil(n c_m) filters: Adaptive: sampled without replacement with probability
             mu / sum(mu); TopK: the largest; random: uniform; Bernoulli: each with prob. mu / sum(mu)
        mask = 1 on the kept filters, 0 elsewhere; AMSS+ (isbias 1, Adaptive):
             1 / (mu_k / sum(mu) + 1 / n) on the kept filters (an unbiased-estimate weight)
        grad *= mask (per filter)

so the modality that already fits better (larger r_m) keeps fewer filters in its update.

Defaults follow the README's audio-visual runs (CREMA-D, Kinetics-Sounds): ``sample_mode:
adaptive``, ``gn_mode: gn``, ``temperature`` 0.2 (argparse default; the text-image runs use 0.5),
``plus: false`` (AMSS; ``true``: AMSS+, ``--isbias 1``), SGD lr 0.01.

**[CODE BUG, not followed]** the released code also computes a mask for the fused head's weight
(``mask_ffn``, 193-241) but never applies it, so the head is not masked; we do the same (nothing).

Where this file generalises:

- **Which parameters.** The code masks the conv kernels inside the ResNet ``layer`` blocks of each
  encoder (names containing 'layer' and 'conv', 4-D, train_test.py:243, 276): the blocks' own
  convolutions, not the stem (``conv1``, outside the layers) nor the ``downsample`` shortcut (no
  'conv' in its name). The default ``params: residual`` selects exactly those by structure: the
  ``Conv2d`` children of every residual block (torchvision ``BasicBlock`` / ``Bottleneck``; the
  shortcut is a child ``Sequential``). **[generalised]** An encoder without residual blocks (MLP,
  CNN, transformer) masks as ``params: weights``: every weight with dim >= 2 (conv kernels and
  linear weights; row k = output unit k). ``params: conv`` takes every 4-D kernel of the encoder
  (stem and shortcut too). Biases and norm layers are never masked, as in the code.
- **M modalities**: c_m = 1 - softmax(t)_m, the form of the three-modality code (whose other
  constants, +3, /40, were tuned for NVGesture and are not taken).
- **Segmentation**: per-pixel shares, label frequencies over pixels; features (B, D, h, w) give
  the entropy over channels per position. **Regression is refused**: s_m, HY need classes.
- The random draws use torch's generator (the code mixes numpy and torch), so runs resume exactly.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Float
from mmbalance.models.base import MultimodalModel, Output
from mmbalance.training.data import Batch, StrictModel
from mmbalance.training.method import Method, MethodNotApplicable, RunContext
from mmbalance.training.method_parts import LINEAR, require_concat_fusion

__all__ = ["AMSSParams", "AMSS", "amss_coefficients", "filter_mask", "residual_block_kernels"]


class AMSSParams(StrictModel):
    temperature: float = Field(0.2, gt=0)  # T (argparse default; README text-image runs: 0.5)
    sample_mode: Literal["adaptive", "topk", "random", "bernoulli"] = "adaptive"  # README runs
    gn_mode: Literal["gn", "gn_wn", "sqrt_gn"] = "gn"  # filter importance: grad^2, / w^2, or its sqrt
    plus: bool = False  # AMSS+ (--isbias 1): kept filters weighted 1 / (importance + 1/n); adaptive only
    params: Literal["residual", "weights", "conv"] = (
        "residual"  # which encoder tensors are masked (docstring)
    )


def amss_coefficients(
    shares: list[Tensor], features: list[Tensor], target: Tensor, temperature: float
) -> list[float]:
    """The fraction of filters each modality keeps (train_test.py:38-97; M-way as train_nv.py:82)."""
    labels = target.reshape(-1)
    pi = torch.bincount(labels).float() / labels.numel()
    hy = F.cross_entropy(pi, pi)  # the code's CE(label_probs, label_probs): pi read as logits
    scores = [-F.cross_entropy(o, target) for o in shares]
    if any(s + hy + 0.5 <= 0 for s in scores):
        return [0.5] * len(shares)
    entropies = [F.cross_entropy(f, f.softmax(dim=1)) for f in features]
    t = torch.stack([(s + hy + 0.5) / h for s, h in zip(scores, entropies, strict=True)]) / temperature
    coeff = 1 - t.softmax(dim=0)
    return [0.5 if math.isnan(c) else min(max(c, 0.1), 0.9) for c in coeff.tolist()]


def residual_block_kernels(encoder: nn.Module) -> list[nn.Parameter]:
    """The kernels of the convolutions inside the encoder's residual blocks: each block's own ``Conv2d``
    children; the ``downsample`` shortcut (a child ``Sequential``) and the stem (outside the blocks)
    are left out, as the code's name filter leaves them (train_test.py:243)."""
    blocks = [b for b in encoder.modules() if isinstance(b, (BasicBlock, Bottleneck))]
    return [c.weight for b in blocks for c in b.children() if isinstance(c, nn.Conv2d)]


def filter_mask(grad: Tensor, weight: Tensor, keep: float, p: AMSSParams) -> Tensor:
    """(n,) mask over the rows (filters / output units) of one weight's gradient (train_test.py:243-274)."""
    dims = tuple(range(1, grad.dim()))
    mu = grad.square().sum(dims)
    if p.gn_mode == "gn_wn":
        mu = mu / weight.square().sum(dims)
    elif p.gn_mode == "sqrt_gn":
        mu = mu.sqrt()
    n = mu.numel()
    if mu.sum() == 0:  # no gradient at all: nothing to mask (the code would divide by zero)
        return torch.ones_like(mu)
    k = math.ceil(n * keep)
    importance = mu / mu.sum()
    if p.sample_mode == "topk":
        idx = torch.argsort(mu, descending=True)[:k]
    elif p.sample_mode == "random":
        idx = torch.randperm(n, device=mu.device)[:k]
    elif p.sample_mode == "bernoulli":
        idx = torch.nonzero(torch.bernoulli(importance)).squeeze(1)
    else:  # rows with no gradient cannot be drawn without replacement; masking them changes nothing
        idx = torch.multinomial(importance, num_samples=min(k, int((mu > 0).sum())), replacement=False)
    mask = torch.zeros_like(mu)
    mask[idx] = 1 / (importance[idx] + 1 / n) if p.plus and p.sample_mode == "adaptive" else 1.0
    return mask


@METHODS.register
class AMSS(Method):
    name = "amss"
    Params = AMSSParams
    search_space = {
        "temperature": Float(
            0.05, 1.0, log=True, source="argparse 0.2 (README audio-visual), 0.5 (text-image)"
        ),
    }
    tasks = frozenset({"classification", "segmentation"})
    reference = "AMSS / AMSS+, TPAMI; njustkmg/TPAMI-AMSS AMSS/train_test.py"
    unsupported = (
        "amss scores each modality by its cross-entropy against the label entropy; "
        "a regression task has no classes"
    )

    def build(self, ctx: RunContext) -> None:
        model = ctx.model
        require_concat_fusion(model, "amss", LINEAR)
        dim = (lambda p: p.dim() == 4) if self.p.params == "conv" else (lambda p: p.dim() >= 2)
        self.masked: dict[str, list[nn.Parameter]] = {}
        for m in ctx.modalities:
            trainable = model.encoder_parameters(m)
            residual = {id(p) for p in residual_block_kernels(model.encoders[m])}
            if self.p.params == "residual" and residual:
                self.masked[m] = [p for p in trainable if id(p) in residual]
            else:  # `weights` where the encoder has no residual block (see the module docstring)
                self.masked[m] = [p for p in trainable if dim(p)]
            if not self.masked[m]:
                raise MethodNotApplicable(
                    f"amss: params={self.p.params!r} selects no tensor of the {m!r} encoder "
                    f"({type(model.encoders[m]).__name__}); use params: weights"
                )
        self.coeff = [0.5] * len(ctx.modalities)

    @torch.no_grad()
    def after_backward(self, model: MultimodalModel, out: Output, batch: Batch, ctx: RunContext) -> None:
        feats = [out.features[m].detach().to(model.head.weight.dtype) for m in ctx.modalities]  # AMP: fp32
        shares = model.unimodal_logits(dict(zip(ctx.modalities, feats, strict=True)))
        self.coeff = amss_coefficients(list(shares.values()), feats, batch.target, self.p.temperature)
        for m, keep in zip(ctx.modalities, self.coeff, strict=True):
            for w in self.masked[m]:
                if w.grad is not None:
                    mask = filter_mask(w.grad, w, keep, self.p)
                    w.grad.mul_(mask.view(-1, *([1] * (w.grad.dim() - 1))))

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        return {f"keep/{m}": c for m, c in zip(self.masked, self.coeff, strict=True)}
