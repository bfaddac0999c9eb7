"""MMCosine: modality-wise cosine logits for balanced late fusion.

Reference: R. Xu, R. Feng, S.-X. Zhang, D. Hu, "MMCosine: Multi-Modal Cosine Loss Towards Balanced
Audio-Visual Fine-Grained Learning", ICASSP 2023. Official code: GeWu-Lab/MMCosine_ICASSP23 @ 214797c,
``main_CD.py::train_epoch``.

The concat head ``W = [W_1, ..., W_M]`` is kept, but each modality's logits are the cosine between its
feature and each class row of its slice of W, scaled by ``s``, and the fused logits are their sum::

    logits_m = s * normalize(f_m) @ normalize(W_m, per class)^T     # (B, C), no bias
    logits   = sum_m logits_m

so no modality can win by growing its feature or weight norms. Follows the official code (the
modality-wise normalisation and the ``scaling`` default of 10) except:

- the cosine logits are used at evaluation too; the official ``valid`` scores with the model's plain
  linear output (with its bias), which the training never optimised;
- **M modalities** (the official code splits the weight of 2; BalanceBenchmark hard-codes 2 or 3);
- the optional supervised-contrastive NCE term (``--lam``, default 0, supplementary material) is left out.

Classification only (the logits are class-wise cosines); the model needs late concat fusion and a
Linear head, else ``MethodNotApplicable``.
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Float
from mmbalance.models.base import MultimodalModel, Output
from mmbalance.training.data import Batch, StrictModel
from mmbalance.training.method import Method, RunContext
from mmbalance.training.method_parts import require_concat_fusion

__all__ = ["MMCosineParams", "MMCosine", "cosine_logits"]


class MMCosineParams(StrictModel):
    scaling: float = Field(10.0, gt=0)  # official argparse default (BalanceBenchmark uses 15)


def cosine_logits(features: dict[str, Tensor], weight: Tensor, scaling: float) -> dict[str, Tensor]:
    """``s * cos(f_m, W_m[c])`` per modality, W split along its input axis in modality order."""
    logits, start = {}, 0
    for m, f in features.items():
        w = weight[:, start : start + f.shape[1]]  # (C, D_m)
        start += f.shape[1]
        logits[m] = scaling * F.normalize(f, dim=1) @ F.normalize(w, dim=1).T  # (B, C)
    return logits


@METHODS.register
class MMCosine(Method):
    name = "mmcosine"
    Params = MMCosineParams
    search_space = {
        "scaling": Float(5.0, 30.0, log=True, source="argparse 10 (main_CD.py), BalanceBenchmark 15"),
    }
    tasks = frozenset({"classification"})
    reference = "Xu et al., ICASSP 2023 (MMCosine); GeWu-Lab/MMCosine_ICASSP23 main_CD.py"
    unsupported = "mmcosine's logits are cosines to class weight vectors; a {kind} task has no classes"

    def build(self, ctx: RunContext) -> None:
        require_concat_fusion(ctx.model, "mmcosine", (nn.Linear,))  # splits W over the concat
        self.target_cos: dict[str, Tensor] = {}

    def forward(self, model: MultimodalModel, batch: Batch, ctx: RunContext) -> Output:
        features = model.encode(batch.inputs)
        logits = cosine_logits(features, model.head.weight, self.p.scaling)
        fused = model.fusion(features)
        if ctx.training:  # mean true-class cosine per modality, for the curves
            y = batch.target.unsqueeze(1)
            self.target_cos = {
                m: (z.detach().gather(1, y) / self.p.scaling).mean() for m, z in logits.items()
            }
        return Output(sum(logits.values()), features, fused, modality_logits=logits)

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        return {f"cos_true/{m}": c.item() for m, c in self.target_cos.items()}
