"""MLA: Multimodal Learning with Alternating unimodal adaptation.

Reference: X. Zhang, J. Yoon, M. Bansal, H. Yao, "Multimodal Representation Learning by Alternating
Unimodal Adaptation", CVPR 2024. Official code: Cecile-hi/Multimodal-Learning-with-Alternating-
Unimodal-Adaptation @ ab6c184, ``main.py::train_epoch`` (``gs_flag``), ``main.py::valid``
(``--dynamic``), ``utils/utils.py::GSPlugin``.

Training: on every batch the modalities take turns, each with its own optimiser step, through ONE
head ``h`` shared by all modalities (``fc_out`` on 512-d features, no concatenation)::

    for m in modalities:                       # one runner turn each (``Method.turns``)
        L_m = task_loss(h(f_m(x_m)), y); L_m.backward()
        gradient modification of h's weight W (after the first step of the run):
            lam = step_in_epoch / steps_per_epoch + 1;  a = 0.1 ** lam
            r = mean_i f_m(x_m)_i  (1 x D);   k = P r^T
            P <- P - k k^T / (a + r k);  P <- P / ||P||_F          # P = I_D at start, kept all run
            W.grad <- W.grad P^T
        optimizer.step()

Inference (``fusion: entropy``, the paper's test-time uncertainty fusion, ``--dynamic``):
``H_m = -sum softmax(h(f_m), dim=0) log softmax(h(f_m), dim=0)`` (softmax over the *batch* axis,
summed over the batch, as the released code), ``w_m = exp(max_k H_k - H_m) / sum``,
``pred = sum_m w_m h(f_m)``. ``fusion: average`` is the code's fixed-weight default with equal
weights (0.5/0.5 for two modalities).

Deviations and generalisations:

- **The projection fires.** At HEAD the code looks for the parameter name ``"module.weight"``, which the
  plain ``nn.Linear`` head does not have, so the projection never runs (the previous commit also
  accepted ``"weight"``). We apply it to the shared head's weight, selected as an object, and *replace*
  the gradient as the paper and the earlier commit do (BalanceBenchmark adds it instead). ``gs: false``
  gives the released behaviour. The denominator is OWM's scalar ``a + r k``; the code (``utils.py``
  @ 11ae1ee) writes ``alpha + torch.mm(k, r)``, a (D, D) matrix that divides ``k k^T`` element-wise,
  which we read as a slip for the scalar form.
- **N modalities** follow the code's ``--modal3`` loop. The model's own fusion head is not used; the
  shared head needs every encoder to give the same feature size (else ``MethodNotApplicable``).
- **Regression** runs with ``fusion: average`` (the loss and the projection are generic); the entropy
  fusion needs class scores and is refused there. **Segmentation** is refused (the projection is
  defined for a head on pooled features).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Float
from mmbalance.models.base import MultimodalModel, Output
from mmbalance.training.data import Batch, StrictModel, TaskInfo
from mmbalance.training.method import MethodNotApplicable, RunContext, Turns
from mmbalance.training.method_parts import common_feature_dim, num_outputs

__all__ = ["MLAParams", "MLA", "gs_update", "entropy_weights"]


class MLAParams(StrictModel):
    gs: bool = True  # project the shared head's gradient (the paper; a no-op in the HEAD code, see above)
    fusion: Literal["entropy", "average"] = "entropy"  # test-time fusion of the unimodal outputs
    alpha_base: float = Field(0.1, gt=0, lt=1)  # a = alpha_base ** (step_in_epoch / steps + 1), GSPlugin


def gs_update(P: Tensor, features: Tensor, a: float) -> Tensor:
    """One GSPlugin update of the projector: ``r = mean(features)``, ``k = P r^T``,
    ``P - k k^T / (a + r k)``, normalised to unit Frobenius norm. ``P``: (D, D); features: (B, D)."""
    r = features.detach().mean(dim=0, keepdim=True)  # (1, D)
    k = P @ r.T  # (D, 1)
    P = P - (k @ k.T) / (a + r @ k)
    return P / torch.linalg.norm(P)


def entropy_weights(logits: dict[str, Tensor]) -> dict[str, Tensor]:
    """MLA's uncertainty weights: batch-axis softmax entropy ``H_m``, ``w_m ∝ exp(max_k H_k - H_m)``."""
    H = {m: -(z.softmax(dim=0) * z.log_softmax(dim=0)).sum() for m, z in logits.items()}
    top = torch.stack(list(H.values())).max()
    w = {m: torch.exp(top - h) for m, h in H.items()}
    total = sum(w.values())
    return {m: v / total for m, v in w.items()}


@METHODS.register
class MLA(Turns):
    name = "mla"
    Params = MLAParams
    search_space = {
        "alpha_base": Float(
            0.01, 0.5, log=True, source="around GSPlugin's 0.1 (utils.py; no published grid)"
        ),
    }
    tasks = frozenset({"classification", "regression"})
    reference = (
        "Zhang et al., Multimodal Representation Learning by Alternating Unimodal Adaptation, CVPR 2024"
    )

    def check(self, task: TaskInfo) -> None:
        super().check(task)
        if task.kind == "regression" and self.p.fusion == "entropy":
            raise MethodNotApplicable(
                "mla: fusion 'entropy' needs class scores; use fusion: average for regression"
            )

    # coeff: the fusion weights of the last evaluated batch, logged by the next training steps
    state_attrs = ("P", "steps_taken", "coeff")

    def build(self, ctx: RunContext) -> None:
        d = common_feature_dim(ctx.model, "mla")
        self.head = nn.Linear(d, num_outputs(ctx.model))  # fc_out(input_dim=512): one head for all
        self.P = torch.eye(d, device=ctx.device)
        self.steps_taken = 0
        self.coeff: dict[str, float] = {}

    def turns(self, ctx: RunContext) -> Sequence[str]:
        return ctx.modalities

    def forward(self, model: MultimodalModel, batch: Batch, ctx: RunContext) -> Output:
        if ctx.training and ctx.turn is not None:  # modality m's turn: its encoder and the shared head
            m = ctx.turn
            f = model.encoders[m](batch.inputs[m])
            return Output(self.head(f), {m: f}, f)
        features = model.encode(batch.inputs)
        logits = {m: self.head(f) for m, f in features.items()}
        if self.p.fusion == "entropy":
            w = entropy_weights(logits)
        else:
            w = {m: 1.0 / len(logits) for m in logits}
        self.coeff = {m: float(v) for m, v in w.items()}
        pred = sum(w[m] * z for m, z in logits.items())
        return Output(pred, features, torch.cat(list(features.values()), dim=1), modality_logits=logits)

    def after_backward(self, model: MultimodalModel, out: Output, batch: Batch, ctx: RunContext) -> None:
        if self.p.gs and self.steps_taken > 0 and self.head.weight.grad is not None:
            a = self.p.alpha_base ** (ctx.step_in_epoch / ctx.steps_per_epoch + 1)
            self.P = gs_update(self.P, out.features[ctx.turn], a)
            self.head.weight.grad = self.head.weight.grad @ self.P.T
        self.steps_taken += 1

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        return {f"fusion_weight/{m}": w for m, w in self.coeff.items()}
