"""AGM: adaptive gradient modulation through Shapley-style unimodal outputs.

Reference: H. Li, X. Li, P. Hu, Y. Lei, C. Li, Y. Zhou, "Boosting Multi-modal Model Performance with
Adaptive Gradient Modulation", ICCV 2023. Official code: lihong2303/AGM_ICCV2023 @ 5a65542
(``model/CREMAD_net.py::GradMod``, ``model/URFunny_net.py`` for 3 modalities, ``run/CREMAD_main.py::train``).

Per training step::

    v(S)   = f(x with every modality outside S zeroed)      # 2^M - 1 forwards; the masked ones in eval mode
    phi_m  = Shapley share of m in v, with v(empty) = 0       # sum_m phi_m = f(x), the fused output
    s_m    = task_loss(phi_m, y)                              # CE of the Shapley logits; lower is better
    r_m    = exp((mean_k s_k - s_m) * M / (M - 1))            # current batch  (M = 2: exp(s_other - s_m))
    r*_m   = same with the running means S_m of s_m over all earlier iterations
    c_m    = exp(alpha * min(r*_m - r_m, clamp))              # in the window modulation_starts..ends
    pred   = sum_m phi_m, with the gradient into phi_m scaled by c_m     # the code's backward hooks
    S_m   <- S_m (it - 1) / it + s_m / it

A modality doing better than its long-run level relative to the others (r_m > r*_m) is slowed
(c_m < 1), one doing worse is boosted. After backward, if the largest gradient entry of the head's
output layer exceeds 1, all gradients are clipped to norm 1 (the code's conditional clipping).

Follows the official code, including: the masked forwards run with the network in eval mode (batch
norm uses running statistics) but with gradients; outside the window the coefficients keep their
last value (1 before the window), as the code never resets them; S starts at 0. Generalisations:
**M modalities** through the general Shapley formula (the code has M = 2 and 3, which it matches;
the ratio's ``M / (M - 1)`` factor is the code's for M = 2 and 3 (``*2``, ``*3/2``), and ``clamp`` is
10 in the 2-modality code and 7 in the 3-modality code); **regression and segmentation** use the
task loss of each Shapley output as its score (the code's CE, generalised). Evaluation uses the plain
forward (numerically equal to the Shapley sum).

Verified against the official repository (issue 13): ``tests/test_equivalence_agm.py`` runs our
step next to a transcription of ``GradMod`` (``model/CREMAD_net.py`` lines 7-72, the hooks) and of
``run/CREMAD_main.py::train`` (lines 48, 63-69, 108-166, 233-244) for 12 steps, across the end of
the window: coefficients, gradients and parameters agree to 1e-15. BalanceBenchmark's
re-implementation (``balancemm/trainer/AGM_trainer.py``) differs from the official code, and we
follow the official code: its ratio is ``exp(M/(M-1) (s_m - mean))`` (the opposite sign, so for two
modalities its coefficients come out swapped), its masked forwards run under ``no_grad``, and it
scales encoder parameter gradients instead of hooking the Shapley outputs. The official score clamps
each true-class probability at 1e-8; we take the plain task loss (they differ only beyond that clamp).
"""

from __future__ import annotations

import itertools

import torch
from pydantic import Field
from torch import Tensor

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Float
from mmbalance.models.base import MultimodalModel, Output
from mmbalance.training.data import Batch
from mmbalance.training.method import Method, ModulationWindow, RunContext
from mmbalance.training.method_parts import masked_inputs, scale_grad, shapley_values

__all__ = ["AGMParams", "AGM", "agm_coefficients"]


class AGMParams(ModulationWindow):
    alpha: float = Field(1.0, gt=0)  # utils/config.py default (README example on AV-MNIST: 2.5)
    clamp: float = Field(10.0, gt=0)  # cap of r* - r: 10 in the 2-modality code, 7 in the 3-modality code
    # The window, on 0-based epochs (the official loop counts from 1: its --modulation_starts s and
    # --modulation_ends e are max(s - 1, 0) and e - 1 here). Default: utils/config.py's 0..20 = epochs 1..20.
    modulation_starts: int = Field(0, ge=0)  # first modulated epoch (0-based, inclusive)
    modulation_ends: int = Field(19, ge=0)  # last modulated epoch (0-based, inclusive)
    clip: bool = True  # the code's conditional clipping (max |grad| of the output layer > 1 -> norm 1)


def agm_coefficients(scores: Tensor, running: Tensor, alpha: float, clamp: float) -> tuple[Tensor, Tensor]:
    """``(ratio, coeff)`` from the (M,) scores of this batch and the (M,) running mean scores."""
    m = scores.numel()
    ratio = torch.exp((scores.mean() - scores) * m / (m - 1))
    target = torch.exp((running.mean() - running) * m / (m - 1))
    return ratio, torch.exp(alpha * torch.clamp(target - ratio, max=clamp))


@METHODS.register
class AGM(Method):
    name = "agm"
    Params = AGMParams
    search_space = {
        "alpha": Float(
            0.1, 5.0, log=True, source="utils/config.py 1.0, README AV-MNIST 2.5, kkontras/MLB AGM.json 1.5"
        ),
    }
    reference = "Li et al., ICCV 2023 (AGM); lihong2303/AGM_ICCV2023 model/CREMAD_net.py, URFunny_net.py"

    state_attrs = ("running", "it", "scale")

    def build(self, ctx: RunContext) -> None:
        m = len(ctx.modalities)
        self.modalities = names = list(ctx.modalities)
        self.coalitions = [frozenset(s) for r in range(1, m + 1) for s in itertools.combinations(names, r)]
        self.running = torch.zeros(m)  # S_m, mean score over all iterations so far
        self.it = 0
        self.scale = torch.ones(m)  # c_m in force (kept outside the window, as the code)
        self.ratio = torch.ones(m)
        self.scores = torch.zeros(m)

    def forward(self, model: MultimodalModel, batch: Batch, ctx: RunContext) -> Output:
        if not ctx.training:
            return model(batch.inputs)
        full = model(batch.inputs)
        values = {frozenset(ctx.modalities): full.pred}
        model.eval()  # the code runs the zero-padded forwards in eval mode, with gradients
        for s in self.coalitions[:-1]:
            values[s] = model(masked_inputs(batch.inputs, s)).pred
        model.train()
        phi = shapley_values(values, ctx.modalities)
        with torch.no_grad():
            scores = torch.stack([ctx.task_loss(phi[m], batch.target) for m in ctx.modalities]).cpu()
            self.ratio, coeff = agm_coefficients(scores, self.running, self.p.alpha, self.p.clamp)
            self.it += 1
            self.running = self.running * (self.it - 1) / self.it + scores / self.it
            self.scores = scores
            if self.p.modulates(ctx.epoch):
                self.scale = coeff
        pred = sum(scale_grad(phi[m], c) for m, c in zip(ctx.modalities, self.scale.tolist(), strict=True))
        return Output(pred, full.features, full.fused, aux={f"shapley/{m}": phi[m] for m in ctx.modalities})

    def after_backward(self, model: MultimodalModel, out: Output, batch: Batch, ctx: RunContext) -> None:
        grad = model.out_layer.weight.grad
        if self.p.clip and grad is not None and grad.abs().max() > 1:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        out = {}
        for i, m in enumerate(self.modalities):
            out[f"coeff/{m}"] = self.scale[i].item()
            out[f"ratio/{m}"] = self.ratio[i].item()
            out[f"score/{m}"] = self.scores[i].item()
        return out
