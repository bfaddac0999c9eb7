"""Greedy: balanced multimodal learning by guided cross-modal curation (the "guided" algorithm).

Reference: N. Wu, S. Jastrzębski, K. Cho, K. J. Geras, "Characterizing and Overcoming the Greedy
Nature of Learning in Multi-modal Deep Neural Networks", ICML 2022. Official code:
nyukat/greedy_multimodal_learning @ a190e03, ``src/balanced_mmtm.py::MMTM_mitigate``,
``src/callbacks.py::Bias_Mitigation_Strong``, ``train.py::blend_loss``.

The paper's model has one branch per modality, each with its own head, joined by MMTM blocks
(squeeze-excitation across modalities). Our models fuse late, so the method brings its own MMTM block
at the encoder outputs (the official code puts three inside the branches)::

    s_m = mean over space of f_m                        # squeeze, (B, D_m)
    z   = relu(W_z [s_1; ...; s_M])                     # dim 2 * sum D / ratio, as the code
    e_m = sigmoid(W_m z);   f'_m = f_m * e_m            # excitation per modality
    pred = mean_m h_m(f'_m);  loss = sum_m task_loss(h_m(f'_m), y)       # blend_loss

Conditional-utilisation proxy (after each backward outside a curation window, cumulative)::

    M_bypass_m += ||g(bypass_m)||^2 / ||bypass_m||^2      # bypass_m: W_m and the shared W_z
    M_main_m   += ||g(main_m)||^2 / ||main_m||^2          # main_m: encoder m and head h_m
    BDR_m = log10(M_bypass_m / M_main_m)

From ``starting_epoch`` on, outside a curation window: if ``max_m BDR_m - min_m BDR_m > epsilon``,
start a window of ``window`` steps that cares for ``c = argmax_m BDR_m`` (the modality that leans
most on the cross-modal path): its excitation is replaced by the running mean of its excitations
(a constant), so branch c must learn from its own modality.

Generalisations and deviations: M modalities (for M = 2, ``argmax BDR`` is the code's ``0 if
BDR_0 - BDR_1 > 0 else 1``); the running mean uses each modality's own excitation (the code updates
the skeleton mean from the visual excitation, a bug) and is updated in training forwards only;
one MMTM block at the encoder outputs instead of three inside the branches; parameters are grouped
by object, not by name. ``starting_epoch`` is 0-based (the gin config's 2 counts epochs from 1).
[UNCERTAIN] ``ratio``: the gin value was not checked; 4 is MMTM's usual reduction. Any task kind:
the loss is the task loss; for maps the squeeze pools over space.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Epochs, Float, Int
from mmbalance.models.base import MultimodalModel, Output, resize_logits
from mmbalance.training.data import Batch, StrictModel
from mmbalance.training.method import Method, RunContext
from mmbalance.training.method_parts import num_outputs

__all__ = ["GreedyParams", "Greedy", "MMTM", "bdr"]


class GreedyParams(StrictModel):
    ratio: float = Field(4.0, gt=0)  # MMTM reduction: squeeze size 2 * sum(D) / ratio
    epsilon: float = Field(0.01, ge=0)  # BDR gap that starts a curation window
    window: int = Field(5, ge=1)  # curation_windowsize, in steps
    starting_epoch: int = Field(1, ge=0)  # first epoch (0-based) that may curate


class MMTM(nn.Module):
    """Multimodal transfer module on M feature tensors (pooled (B, D) or maps (B, D, H, W))."""

    def __init__(self, dims: dict[str, int], ratio: float) -> None:
        super().__init__()
        hidden = max(1, int(2 * sum(dims.values()) / ratio))
        self.squeeze = nn.Linear(sum(dims.values()), hidden)
        self.excite = nn.ModuleDict({m: nn.Linear(hidden, d) for m, d in dims.items()})

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """Excitation in (0, 1) per modality, shaped (B, D_m)."""
        s = torch.cat([f.flatten(2).mean(-1) if f.dim() > 2 else f for f in features.values()], dim=1)
        z = torch.relu(self.squeeze(s))
        return {m: torch.sigmoid(layer(z)) for m, layer in self.excite.items()}


def bdr(bypass: dict[str, float], main: dict[str, float]) -> dict[str, float]:
    """``BDR_m = log10(M_bypass_m / M_main_m)`` from the cumulative ratios."""
    return {m: float(torch.log10(torch.tensor(bypass[m] / main[m]))) for m in bypass}


def _sq_ratio(params: list[nn.Parameter]) -> float:
    """``sum ||grad||^2 / sum ||p||^2`` over a parameter group (the code's ``gn / wn``)."""
    gn = sum(float(p.grad.pow(2).sum()) for p in params if p.grad is not None)
    wn = sum(float(p.detach().pow(2).sum()) for p in params)
    return gn / max(wn, 1e-12)


@METHODS.register
class Greedy(Method):
    name = "greedy"
    Params = GreedyParams
    search_space = {
        "epsilon": Float(0.001, 0.1, log=True, source="around the gin config's 0.01 (no published grid)"),
        "window": Int(
            2, 20, log=True, source="around the gin curation_windowsize 5 steps (no published grid)"
        ),
        "starting_epoch": Epochs(0.0, 0.25, source="gin: from epoch 2 (1-based) of up to 300"),
    }
    reference = "Wu et al., Characterizing and Overcoming the Greedy Nature of Learning in Multi-modal DNNs, ICML 2022"  # noqa: E501

    state_attrs = ("running", "n_forward", "m_bypass", "m_main", "caring", "left")

    def build(self, ctx: RunContext) -> None:
        model, device = ctx.model, ctx.device
        self.mmtm = MMTM(model.feature_dims(), self.p.ratio)
        # Each branch ends in its own linear classifier, as the paper's per-modality CNN branches (fc);
        # a 1x1 conv for feature maps.
        linear = nn.Conv2d if isinstance(model.out_layer, nn.Conv2d) else nn.Linear
        n = num_outputs(model)
        self.heads = nn.ModuleDict({m: linear(d, n, 1) if linear is nn.Conv2d else linear(d, n)
                                    for m, d in model.feature_dims().items()})  # fmt: skip
        self.running = {m: torch.zeros(d, device=device) for m, d in model.feature_dims().items()}
        self.n_forward = 0
        self.m_bypass = {m: 0.0 for m in model.modalities}
        self.m_main = {m: 0.0 for m in model.modalities}
        self.caring: str | None = None
        self.left = 0  # steps left in the curation window

    def forward(self, model: MultimodalModel, batch: Batch, ctx: RunContext) -> Output:
        features = model.encode(batch.inputs)
        excitation = self.mmtm(features)
        if ctx.training:
            with torch.no_grad():  # cumulative mean of the batch-mean excitation
                for m, e in excitation.items():
                    self.running[m] = (e.mean(0) + self.running[m] * self.n_forward) / (self.n_forward + 1)
            self.n_forward += 1
            if self.left > 0:  # cut the cross-modal flow into the cared-for branch
                c = self.caring
                excitation[c] = self.running[c].expand_as(excitation[c])
        excited = {
            m: f * excitation[m].view(*excitation[m].shape, *([1] * (f.dim() - 2)))
            for m, f in features.items()
        }
        # maps coarser than the label (BraTS encoders) are upsampled to it
        logits = {m: resize_logits(self.heads[m](x), batch.target.shape[-2:]) for m, x in excited.items()}
        pred = torch.stack(list(logits.values())).mean(0)
        return Output(pred, features, torch.cat(list(excited.values()), dim=1), modality_logits=logits)

    def loss(self, out: Output, batch: Batch, ctx: RunContext) -> Tensor:
        return sum(ctx.task_loss(z, batch.target) for z in out.modality_logits.values())

    def after_backward(self, model: MultimodalModel, out: Output, batch: Batch, ctx: RunContext) -> None:
        if self.left > 0:  # inside a window the code neither measures nor decides (callbacks.py:241-259)
            self.left -= 1
            return
        shared = list(self.mmtm.squeeze.parameters())
        for m in ctx.modalities:
            self.m_bypass[m] += _sq_ratio(list(self.mmtm.excite[m].parameters()) + shared)
            self.m_main[m] += _sq_ratio(model.encoder_parameters(m) + list(self.heads[m].parameters()))
        if ctx.epoch >= self.p.starting_epoch:
            b = bdr(self.m_bypass, self.m_main)
            if max(b.values()) - min(b.values()) > self.p.epsilon:
                self.caring, self.left = max(b, key=b.get), self.p.window

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        b = bdr(self.m_bypass, self.m_main) if all(v > 0 for v in self.m_main.values()) else {}
        curating = {f"curating/{m}": float(self.left > 0 and m == self.caring) for m in self.m_main}
        return {**{f"bdr/{m}": v for m, v in b.items()}, **curating}
