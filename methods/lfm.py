"""LFM: learning the modality gap dynamically (a classification loss on the averaged unimodal
logits plus a modality-alignment loss, weighted by an epoch-dependent schedule).

Reference: "Facilitating Multimodal Classification via Dynamically Learning Modality Gap",
NeurIPS 2024 (the repository README). Official code: njustkmg/NeurIPS24-LFM @ ad44fa0, ``Crema_epoch.py``
(the README's entry point): ``Alignment`` lines 38-45, ``getAlpha_Learnable_Fitted`` 47-53,
``train_audio_video`` 56-73, ``val`` 88-139; the model ``model/AudioVideo.py:54-67`` (one linear
classifier per modality, each with its own bias, fused logits = o_a + o_v).

Per training step in epoch e (0-based, ``Crema_epoch.py:194-197``)::

    o_m      = W_m f_m + b_m                      # AudioVideo.py:54-55, 62-63: cls_a, cls_v
    (a1, a2) = (P1(e), P2(e))                     # the fitted quintics of lines 47-53, a1 + a2 = 1
    L_cls    = CE(mean_m o_m, y)                  # line 70: CE(0.5 o_v + 0.5 o_a)
    L_align  = mean_m KL(pbar || softmax(o_m))    # lines 38-45: pbar = mean_m softmax(o_m),
                                                  #   F.kl_div(p.log(), pbar, 'batchmean') = KL(pbar || p)
    loss     = 2 (a1 L_cls + a2 L_align)          # line 71

The prediction is ``mean_m o_m`` (``val``, lines 113-114: softmax(0.5 o_v + 0.5 o_a)).

The schedule moves the weight from alignment (0.80 at epoch 0) to classification (0.92 at epoch
199): the curves were fitted to the weights that the bilevel variant (``Crema_epoch_learnable.py``,
not reimplemented) learns over its 200 epochs (``data/crema.json``: ``epoch_dict`` 200).

**[CODE≠PAPER]** the "JS" alignment of the code is 0.5 (KL(m||p) + KL(m||q)) (``F.kl_div`` takes
the target first), not the Jensen-Shannon divergence 0.5 (KL(p||m) + KL(q||m)); we follow the code.

Where this file generalises:

- The classifiers W_m are the modality's columns of a late concat-fusion linear head
  (``model.unimodal_logits``), so the two Linears of the code are one weight matrix here; each
  modality has its own bias b_m (a parameter of this method, started at b / M so that the run
  starts from the model's function; the head's own bias is not used and not trained). One shared
  bias would be the same fused function but not the same alignment loss. Models without such
  shares (fusion transformers) are refused.
- **M modalities**: the mean over M shares and the M-way alignment (for M = 2 the code's).
- **Segmentation**: per-pixel distributions; ``batchmean`` divides the sum over classes and
  pixels by the batch size, as ``F.kl_div`` does. **Regression is refused**: the alignment
  compares class distributions.
- ``stretch: true`` evaluates the schedule at e * 200 / epochs, so that a run of any length
  covers the released 200-epoch curve (the default, false, is the released absolute epoch).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Choice
from mmbalance.models.base import MultimodalModel, Output
from mmbalance.training.data import Batch, StrictModel
from mmbalance.training.method import Method, RunContext
from mmbalance.training.method_parts import LINEAR, require_concat_fusion

__all__ = ["LFMParams", "LFM", "fitted_weights", "alignment"]

# Crema_epoch.py:49-50, coefficients of e^0 .. e^5.
COEF_CLS = (2.04623704e-01, 3.35472727e-03, 1.22989557e-04, -2.92947416e-06, 2.23835486e-08, -5.39717505e-11)
COEF_ALIGN = (
    7.95376296e-01,
    -3.35472727e-03,
    -1.22989557e-04,
    2.92947416e-06,
    -2.23835486e-08,
    5.39717505e-11,
)
RELEASED_EPOCHS = 200  # data/crema.json epoch_dict


class LFMParams(StrictModel):
    stretch: bool = False  # evaluate the fitted schedule at e * 200 / epochs (see module docstring)
    scale: float = Field(2.0, gt=0)  # the code's overall factor (line 71)


def fitted_weights(epoch: float) -> tuple[float, float]:
    """``(alpha_cls, alpha_align)`` of ``getAlpha_Learnable_Fitted`` (Crema_epoch.py:47-53)."""
    return (
        sum(c * epoch**i for i, c in enumerate(COEF_CLS)),
        sum(c * epoch**i for i, c in enumerate(COEF_ALIGN)),
    )


def alignment(logits: list[Tensor]) -> Tensor:
    """``mean_m KL(pbar || softmax(o_m))`` with ``pbar`` the mean distribution, 'batchmean'
    (Crema_epoch.py:38-45 for M = 2); classes on dim 1."""
    probs = [z.softmax(dim=1) for z in logits]
    mix = torch.stack(probs).mean(0)
    return torch.stack([F.kl_div(p.log(), mix, reduction="batchmean") for p in probs]).mean()


@METHODS.register
class LFM(Method):
    name = "lfm"
    Params = LFMParams
    # The weights follow a fitted curve with no coefficient of their own (``scale`` multiplies the whole loss,
    # which the shared learning rate already covers); what a short run can change is how it reads the curve.
    search_space = {
        "stretch": Choice((False, True), source="released absolute-epoch curve / over the run (suite: true)"),
    }
    tasks = frozenset({"classification", "segmentation"})
    reference = "LFM, NeurIPS 2024; njustkmg/NeurIPS24-LFM Crema_epoch.py"
    unsupported = (
        "lfm aligns the modalities' class distributions (softmax of their logits); "
        "a regression output has no classes"
    )

    def build(self, ctx: RunContext) -> None:
        require_concat_fusion(ctx.model, "lfm", LINEAR)
        b = ctx.model.head.bias
        # AudioVideo.py:54-55: cls_a and cls_v each have a bias; started at the head's b / M (the same function)
        self.bias = nn.ParameterDict(
            {m: nn.Parameter(b.detach() / len(ctx.modalities)) for m in ctx.modalities}
        )
        self.weights = fitted_weights(0)

    def param_groups(self, model: MultimodalModel) -> list[dict[str, Any]]:
        # the head's bias is replaced by the per-modality biases (self.bias): not trained
        return [{"params": [p for p in model.parameters() if p.requires_grad and p is not model.head.bias]}]

    def on_epoch_start(self, ctx: RunContext) -> None:
        e = ctx.epoch * RELEASED_EPOCHS / ctx.epochs if self.p.stretch else ctx.epoch
        self.weights = fitted_weights(e)

    def forward(self, model: MultimodalModel, batch: Batch, ctx: RunContext) -> Output:
        out = model(batch.inputs)
        shares = model.unimodal_logits(out.features, self.bias)
        out.modality_logits.update(shares)
        out.pred = torch.stack(list(shares.values())).mean(0)  # val(): 0.5 o_v + 0.5 o_a (lines 113-114)
        return out

    def loss(self, out: Output, batch: Batch, ctx: RunContext) -> Tensor:
        shares = [out.modality_logits[m] for m in ctx.modalities]
        l_cls = ctx.task_loss(out.pred, batch.target)
        a_cls, a_align = self.weights
        return self.p.scale * (a_cls * l_cls + a_align * alignment(shares))

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        return {"alpha/cls": self.weights[0], "alpha/align": self.weights[1]}
