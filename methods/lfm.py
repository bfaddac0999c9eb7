"""LFM: learning the modality gap dynamically (a classification loss on the averaged unimodal
logits plus a modality-alignment loss, weighted by an epoch-dependent schedule).

Reference: "Facilitating Multimodal Classification via Dynamically Learning Modality Gap",
NeurIPS 2024 (the repository README). Official code: njustkmg/NeurIPS24-LFM @ ad44fa0, ``Crema_epoch.py``
(the README's entry point): ``Alignment`` lines 38-45, ``getAlpha_Learnable_Fitted`` 47-53,
``train_audio_video`` 56-73; the model ``model/AudioVideo.py:58-67`` (one linear classifier per
modality, fused logits = o_a + o_v).

Per training step in epoch e (0-based, ``Crema_epoch.py:194-197``)::

    (a1, a2) = (P1(e), P2(e))                     # the fitted quintics of lines 47-53, a1 + a2 = 1
    L_cls    = CE(mean_m o_m, y)                  # line 70: CE(0.5 o_v + 0.5 o_a)
    L_align  = mean_m KL(pbar || softmax(o_m))    # lines 38-45: pbar = mean_m softmax(o_m),
                                                  #   F.kl_div(p.log(), pbar, 'batchmean') = KL(pbar || p)
    loss     = 2 (a1 L_cls + a2 L_align)          # line 71

The schedule moves the weight from alignment (0.80 at epoch 0) to classification (0.92 at epoch
199): the curves were fitted to the weights that the bilevel variant (``Crema_epoch_learnable.py``,
not reimplemented) learns over its 200 epochs (``data/crema.json``: ``epoch_dict`` 200).

**[CODE≠PAPER]** the "JS" alignment of the code is 0.5 (KL(m||p) + KL(m||q)) (``F.kl_div`` takes
the target first), not the Jensen-Shannon divergence 0.5 (KL(p||m) + KL(q||m)); we follow the code.

Where this file generalises:

- The unimodal logits o_m are each modality's additive share of a late concat-fusion linear head
  (``model.unimodal_logits``: W_m f_m + b / M), so the fused logits are their sum exactly as in
  the code (there each share has its own bias; one bias split in M is the same function), and
  the model's prediction is the code's ``argmax(0.5 o_v + 0.5 o_a)``. Models without such
  shares (fusion transformers) are refused.
- **M modalities**: the mean over M shares and the M-way alignment (for M = 2 the code's).
- **Segmentation**: per-pixel distributions; ``batchmean`` divides the sum over classes and
  pixels by the batch size, as ``F.kl_div`` does. **Regression is refused**: the alignment
  compares class distributions.
- ``stretch: true`` evaluates the schedule at e * 200 / epochs, so that a run of any length
  covers the released 200-epoch curve (the default, false, is the released absolute epoch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from mmbalance.data import Batch, StrictModel
from mmbalance.method import Method, RunContext
from mmbalance.method_parts import LINEAR, require_concat_fusion
from mmbalance.models.base import MultimodalModel, Output
from mmbalance.registry import METHODS
from mmbalance.search_space import Choice

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
        self.weights = fitted_weights(0)

    def on_epoch_start(self, ctx: RunContext) -> None:
        e = ctx.epoch * RELEASED_EPOCHS / ctx.epochs if self.p.stretch else ctx.epoch
        self.weights = fitted_weights(e)

    def forward(self, model: MultimodalModel, batch: Batch, ctx: RunContext) -> Output:
        out = model(batch.inputs)
        if ctx.training:
            out.modality_logits.update(model.unimodal_logits(out.features))
        return out

    def loss(self, out: Output, batch: Batch, ctx: RunContext) -> Tensor:
        shares = [out.modality_logits[m] for m in ctx.modalities]
        l_cls = ctx.task_loss(torch.stack(shares).mean(0), batch.target)
        a_cls, a_align = self.weights
        return self.p.scale * (a_cls * l_cls + a_align * alignment(shares))

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        return {"alpha/cls": self.weights[0], "alpha/align": self.weights[1]}
