"""ARM: asymmetric reinforcing against multimodal representation bias.

Reference: X. Gao, B. Cao, P. Zhu, N. Wang, Q. Hu, "Asymmetric Reinforcing against Multi-modal
Representation Bias", AAAI 2025, 39(16):16754-16762 (the citation in the repository's README; the paper
itself was not read). Official code:
Gao-xiyuan/ARM @ a96d0ad (MMPretrain), ``mmpretrain/models/heads/linear_head.py``
(``LinearClsHead.forward`` lines 61-93), ``mmpretrain/models/heads/cls_head.py``
(``_get_train_predictions`` lines 152-167), ``mmpretrain/models/necks/gap.py`` (lines 35-72),
``mmpretrain/models/necks/MI_tool.py`` (the estimators), ``mmpretrain/models/classifiers/image.py``
(``extract_feat`` lines 208-212), ``configs/arm/resnet18_ks.py`` (SGD 0.01, 30 epochs, batch 128).

Per batch, with the modalities' pooled features f_m (all of size d) and one shared classifier ``fc``::

    z    = W_n [f_1; f_2]                          # the neck's fusion (gap.py:60-61), untrained
    s_0  = mean_i softmax(fc(z))[i, y_i],  s_m = mean_i softmax(fc(f_m))[i, y_i]
    I_m  = NMI(f_m, z)                     # 30-bin histograms of all B*d values (MI_tool.py:59-70)
    C_m  = NCMI(f_m, z | f_other)          # 2-bin histograms (MI_tool.py:93-107)
    pcmi_m = s_0 I_m + s_other (I_m - C_m)               # linear_head.py:72-79
    pred = fc(W_h [ (pcmi_2 / pcmi_1) f_1 ; (pcmi_1 / pcmi_2) f_2 ])   # linear_head.py:82-91
    loss = CE(pred, y)

so the modality that carries less of the fused representation's information is scaled up, the other
down. The coefficients are numbers (detached, NumPy); the loss trains the encoders, ``W_h`` and ``fc``.

Follows the code, including its estimators as released: ``conditional_entropy`` divides the joint
histogram along its *first* axis by p(z) (``joint / z_prob[:, None, None]``, which for the 2-D
marginals broadcasts to a 3-D array), and the score paired with a modality's interaction
information is the *other* modality's (``prediction[1] * ii_a``). ``W_h`` and ``fc`` start from
N(0, 0.01) weights and zero biases (``LinearClsHead``'s ``init_cfg``; ``init_std: null`` gives PyTorch's
default, which the suite's small models need); ``W_n`` is never trained (no
loss reaches it; the config sets ``find_unused_parameters``), so here it is frozen.

Not followed: **evaluation without labels.** The code computes the coefficients of a *test* batch
from that batch's labels (``train_predict`` in ``forward``, also at test time). By default
(``eval_coefficients: train``) evaluation uses the mean coefficients of the last training epoch;
``labels`` reproduces the released evaluation. A normalised MI whose entropies are both zero
(constant features) is taken as 0 instead of the code's NaN.

Generalisations: **M modalities**: ``C_m`` is the mean of NCMI(f_m, z | f_k) over the other
modalities k, ``s_other`` the mean of their scores, and f_m is scaled by the mean of the others'
pcmi over its own (the code's ratios for M = 2). Encoders must give equal feature sizes (one ``fc``
reads them all). **Classification only** (the scores are true-class probabilities).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Int
from mmbalance.models.base import MultimodalModel, Output
from mmbalance.training.data import Batch, StrictModel
from mmbalance.training.method import Method, RunContext
from mmbalance.training.method_parts import common_feature_dim, num_outputs

__all__ = ["ARMParams", "ARM", "nmi", "ncmi", "pcmi", "feature_scales"]


class ARMParams(StrictModel):
    mi_bins: int = Field(30, ge=2)  # NMI histogram bins (MI_tool.py:59, the default linear_head.py uses)
    cmi_bins: int = Field(2, ge=2)  # NCMI histogram bins (linear_head.py:74-75)
    # train: the last training epoch's mean coefficients; labels: the code's, from each test batch's labels
    eval_coefficients: Literal["train", "labels"] = "train"
    # W_h and fc start from N(0, init_std) weights and zero biases (LinearClsHead's init_cfg); None: PyTorch's
    # default, which small feature sizes need (two stacked 0.01-scale layers barely move from zero).
    init_std: float | None = Field(0.01, gt=0)


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)))


def nmi(x: np.ndarray, y: np.ndarray, bins: int) -> float:
    """``2 I(x; y) / (H(x) + H(y))`` from a ``bins`` x ``bins`` histogram (MI_tool.py:24-70)."""
    joint = np.histogram2d(x, y, bins=bins)[0]
    joint = joint / joint.sum()
    px, py = joint.sum(axis=1), joint.sum(axis=0)
    nz = joint > 0
    mi = float(np.sum(joint[nz] * np.log(joint[nz] / np.outer(px, py)[nz])))
    h = _entropy(px) + _entropy(py)
    return 2 * mi / h if h != 0 else 0.0


def _conditional_entropy(joint: np.ndarray, z_prob: np.ndarray) -> float:
    """As released (MI_tool.py:35-41): divides along the first axis (see the module docstring)."""
    z_prob = np.where(z_prob > 0, z_prob, 1e-10)
    c = joint / z_prob[:, None, None]
    return _entropy(c)


def ncmi(x: np.ndarray, y: np.ndarray, z: np.ndarray, bins: int) -> float:
    """``I(x; y | z) / (H(x | z) + H(y | z))`` with the released estimators (MI_tool.py:72-107)."""
    joint = np.histogramdd(np.vstack([x, y, z]).T, bins=[bins, bins, bins])[0]
    joint = joint / joint.sum()
    z_prob = joint.sum(axis=(0, 1))
    hx_z = _conditional_entropy(joint.sum(axis=1), z_prob)
    hy_z = _conditional_entropy(joint.sum(axis=0), z_prob)
    hxy_z = _conditional_entropy(joint, z_prob)
    denominator = hx_z + hy_z
    return (hx_z + hy_z - hxy_z) / denominator if denominator != 0 else 0.0


def pcmi(s_fused: float, s_other: float, nmi_m: float, ncmi_m: float) -> float:
    """A modality's contribution ``s_0 I_m + s_other (I_m - C_m)`` (linear_head.py:76-79)."""
    return s_fused * nmi_m + s_other * (nmi_m - ncmi_m)


def feature_scales(contribution: dict[str, float]) -> dict[str, float]:
    """Scale of f_m: the mean of the other modalities' contributions over its own (linear_head.py:82)."""
    return {
        m: float(np.mean([c for k, c in contribution.items() if k != m]) / own)
        for m, own in contribution.items()
    }


def _numpy(t: Tensor) -> np.ndarray:
    """All values of a feature batch, flattened (``.view(-1)``), float32 unless float64."""
    return (
        t.detach().to(torch.float64 if t.dtype == torch.float64 else torch.float32).reshape(-1).cpu().numpy()
    )


@METHODS.register
class ARM(Method):
    name = "arm"
    Params = ARMParams
    search_space = {
        "mi_bins": Int(
            10, 50, source="MI_tool.py nmi default 30 (used by linear_head.py); no published grid"
        ),
        "cmi_bins": Int(2, 10, source="linear_head.py:74-75 2, MI_tool.py ncmi default 30 (no grid)"),
    }
    tasks = frozenset({"classification"})
    reference = "Gao et al., AAAI 2025 (ARM); Gao-xiyuan/ARM mmpretrain/models/heads/linear_head.py"
    unsupported = "arm weighs modalities by true-class probabilities; a {kind} task has no classes"

    state_attrs = ("eval_scale",)

    def build(self, ctx: RunContext) -> None:
        model = ctx.model
        d, n = common_feature_dim(model, "arm"), len(model.modalities)
        self.neck = nn.Linear(n * d, d).requires_grad_(False)  # gap.py:31 fc_out
        self.fuse = nn.Linear(n * d, d)  # linear_head.py:48 fc_out
        self.fc = nn.Linear(d, num_outputs(model))  # linear_head.py:47 fc, shared
        for layer in (self.fuse, self.fc) if self.p.init_std is not None else ():
            nn.init.normal_(layer.weight, std=self.p.init_std)
            nn.init.zeros_(layer.bias)
        self.modalities = list(ctx.modalities)
        self.scale = {m: 1.0 for m in self.modalities}
        self.eval_scale = dict(self.scale)
        self.sums, self.steps = {m: 0.0 for m in self.modalities}, 0

    def coefficients(self, features: dict[str, Tensor], y: Tensor) -> dict[str, float]:
        """The feature scales of one batch (linear_head.py:63-82)."""
        with torch.no_grad():
            z = self.neck(torch.cat([features[m] for m in self.modalities], dim=1))

            def score(f: Tensor) -> float:  # cls_head.py:157-167: mean true-class probability
                return self.fc(f).softmax(dim=1).gather(1, y.unsqueeze(1)).mean().item()

            s_fused, s = score(z), {m: score(f) for m, f in features.items()}
        values = {m: _numpy(f) for m, f in features.items()}
        zs = _numpy(z)
        contribution = {}
        for m in self.modalities:
            others = [k for k in self.modalities if k != m]
            c_m = np.mean([ncmi(values[m], zs, values[k], self.p.cmi_bins) for k in others])
            s_other = np.mean([s[k] for k in others])
            contribution[m] = pcmi(s_fused, s_other, nmi(values[m], zs, self.p.mi_bins), c_m)
        return feature_scales(contribution)

    def forward(self, model: MultimodalModel, batch: Batch, ctx: RunContext) -> Output:
        features = model.encode(batch.inputs)
        if ctx.training or self.p.eval_coefficients == "labels":
            self.scale = self.coefficients(features, batch.target)
        else:
            self.scale = self.eval_scale
        fused = torch.cat([self.scale[m] * features[m] for m in self.modalities], dim=1)
        return Output(self.fc(self.fuse(fused)), features, fused)

    def loss(self, out: Output, batch: Batch, ctx: RunContext) -> Tensor:
        if ctx.training:
            for m in self.modalities:
                self.sums[m] += self.scale[m]
            self.steps += 1
        return ctx.task_loss(out.pred, batch.target)

    def on_epoch_start(self, ctx: RunContext) -> None:
        self.sums, self.steps = {m: 0.0 for m in self.modalities}, 0

    def on_epoch_end(self, ctx: RunContext) -> None:
        self.eval_scale = {m: v / self.steps for m, v in self.sums.items()}

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        return {f"scale/{m}": float(v) for m, v in self.scale.items()}
