"""InfoReg: adaptive unimodal regulation during the prime learning window.

Reference: C. Huang, Y. Wei, Z. Yang, D. Hu, "Adaptive Unimodal Regulation for Balanced Multimodal
Information Acquisition", CVPR 2025. Official code: GeWu-Lab/InfoReg_CVPR2025 @ 41d887f, ``main.py``
(``train_epoch``, ``main``), ``models/basic_model.py`` (``head`` on concat + ``head_audio``/``head_video``).

Per epoch, the anchor is the model at the epoch's start and ``k`` tells whether the (dominant)
encoder is still in its prime learning window, from the growth of its Fisher-information trace::

    tr_m(e) = sum over the encoder's Conv2d/Linear layers of mean(sum over the epoch's steps of grad^2)
    trace list starts with 10 zeros; k = (T1 - T2) / T1, T1 = mean(last 10), T2 = mean(the 10 before the last)
    k = 1 in epoch 0

Per step (unimodal heads h_m on the encoder features)::

    loss = task_loss(fused) + sum_m task_loss(h_m(f_m))
    s_m  = sum_i softmax(h_m(f_m))[i, y_i]                      # batch sums
    d    = argmax_m s_m ; gap = s_d - max_{m != d} s_m
    if gap > 0 and k_d > threshold:  grad(theta_d) += beta * exp(tanh(gap)) * (theta_d - theta_d(anchor))

i.e. a proximal pull on the dominant encoder towards where it started the epoch, only while its
information is still growing fast. The Fisher trace accumulates the gradients after this pull, as the code.

Follows the released code (threshold 0.04, beta 0.95, unimodal Linear heads -> the model's
``unimodal_classifier``) with these changes:

- **Which modality.** The code tests ``s_a > s_v`` (audio gets ``0.95 exp(tanh(gap))``) and then
  ``elif s_v < s_a`` (visual, ``0.1 exp(...)``): the second test repeats the first, so visual is never
  regularised and only audio's trace drives k. Here the dominant modality (largest score) is
  regularised with ``beta`` and its own trace's k: the evident intent, and what makes it work for
  any modality order and **M modalities** (the gap is taken to the runner-up).
- **Segmentation:** scores sum the true-class probability over pixels too. **Regression is refused**
  (the score is the true-class probability).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Float
from mmbalance.models.base import MultimodalModel, Output
from mmbalance.training.data import Batch, StrictModel
from mmbalance.training.method import RunContext
from mmbalance.training.method_parts import UnimodalHeadsMethod, true_class_score

__all__ = ["InfoRegParams", "InfoReg", "window_indicator", "proximal_beta"]


class InfoRegParams(StrictModel):
    beta: float = Field(0.95, ge=0)  # coefficient for the dominant modality (audio's 0.95 in main.py)
    threshold: float = Field(0.04, ge=0)  # regulate while k > threshold (main.py; 0.05 in an earlier commit)
    window: int = Field(
        10, ge=1
    )  # moving-average length of the trace (main.py: 10, list starts with 10 zeros)


def window_indicator(trace: list[float], window: int) -> float:
    """k = (T1 - T2) / T1 with T1, T2 the means of the last ``window`` traces and of the ``window``
    before the last one (the list starts with ``window`` zeros; k = 1 while T1 = 0)."""
    t1 = sum(trace[-window:]) / window
    t2 = sum(trace[-window - 1 : -1]) / window
    return (t1 - t2) / t1 if t1 > 0 else 1.0


def proximal_beta(scores: Tensor, k: Tensor, beta: float, threshold: float) -> Tensor:
    """(M,) coefficients of the proximal term: ``beta exp(tanh(gap))`` on the dominant modality if its
    k exceeds the threshold and it leads the runner-up, 0 elsewhere."""
    top2 = scores.topk(2)
    d, gap = top2.indices[0], top2.values[0] - top2.values[1]
    out = torch.zeros_like(scores)
    if gap > 0 and k[d] > threshold:
        out[d] = beta * torch.exp(torch.tanh(gap))
    return out


def fisher_layers(encoder: nn.Module) -> list[nn.Parameter]:
    """The trainable weights of the encoder's Conv2d and Linear layers (the code's Fisher trace)."""
    mods = [mod for mod in encoder.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    return [mod.weight for mod in mods if mod.weight.requires_grad]


@METHODS.register
class InfoReg(UnimodalHeadsMethod):
    name = "inforeg"
    Params = InfoRegParams
    search_space = {
        "beta": Float(0.1, 3.0, log=True, source="main.py 0.95 (audio), 0.1 (visual); no published grid"),
        "threshold": Float(
            0.01, 0.2, log=True, source="main.py 0.04, an earlier commit 0.05; no published grid"
        ),
    }
    tasks = frozenset({"classification", "segmentation"})
    reference = "Huang et al., CVPR 2025 (InfoReg); GeWu-Lab/InfoReg_CVPR2025 main.py"
    unsupported = (
        "inforeg finds the dominant modality by the softmax probability of the true class; "
        "a regression task has no classes"
    )

    state_attrs = ("trace",)

    def build(self, ctx: RunContext) -> None:
        super().build(ctx)
        model = ctx.model
        self.modalities = list(ctx.modalities)
        self.params = {m: model.encoder_parameters(m) for m in self.modalities}
        # The Fisher trace is over weight matrices/kernels of Conv2d and Linear layers, as the code.
        self.layers = {m: fisher_layers(model.encoders[m]) for m in self.modalities}
        self.trace = {m: [0.0] * self.p.window for m in self.modalities}
        self.beta = torch.zeros(len(self.modalities))
        self.k = torch.ones(len(self.modalities))

    def on_epoch_start(self, ctx: RunContext) -> None:
        self.anchor = {m: [p.detach().clone() for p in ps] for m, ps in self.params.items()}
        self.fisher = {m: [torch.zeros_like(w) for w in ws] for m, ws in self.layers.items()}
        first = ctx.epoch == 0
        self.k = torch.tensor(
            [1.0 if first else window_indicator(self.trace[m], self.p.window) for m in self.modalities]
        )

    def loss(self, out: Output, batch: Batch, ctx: RunContext) -> Tensor:
        uni = [ctx.task_loss(out.modality_logits[m], batch.target) for m in self.modalities]
        return ctx.task_loss(out.pred, batch.target) + sum(uni)

    @torch.no_grad()
    def after_backward(self, model: MultimodalModel, out: Output, batch: Batch, ctx: RunContext) -> None:
        scores = torch.stack(
            [true_class_score(out.modality_logits[m], batch.target) for m in self.modalities]
        )
        self.beta = proximal_beta(scores.cpu(), self.k, self.p.beta, self.p.threshold)
        for i, m in enumerate(self.modalities):
            if self.beta[i] > 0:
                for p, a in zip(self.params[m], self.anchor[m], strict=True):
                    if p.grad is not None:
                        p.grad.add_(p - a, alpha=self.beta[i].item())
            for acc, w in zip(self.fisher[m], self.layers[m], strict=True):
                if w.grad is not None:
                    acc.add_(w.grad.square())

    def on_epoch_end(self, ctx: RunContext) -> None:
        for m in self.modalities:
            self.trace[m].append(sum(f.mean().item() for f in self.fisher[m]))

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        out = {}
        for i, m in enumerate(self.modalities):
            out[f"beta/{m}"], out[f"k/{m}"] = self.beta[i].item(), self.k[i].item()
        return out
