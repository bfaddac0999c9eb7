"""MSLR: modality-specific learning rates for additive late fusion.

Reference: Y. Yao, R. Mihalcea, "Modality-specific Learning Rates for Effective Multimodal Additive
Late-fusion", Findings of ACL 2022. No official code was found in the stored sources; this file
follows the paper's main idea as stated in its abstract: each modality's encoder is trained with the
learning rate that suits it (the one its unimodal model was tuned with), instead of one global rate
that leaves some modalities with vanishing updates::

    lr(encoder m) = lr * lr_scale[m]        lr(fusion, head) = lr * head_lr_scale

The scales go into the optimiser's parameter groups (``Method.param_groups``), so every scheduler of
the runner scales them together. This is the paper's "keep" strategy; its "smooth" and "dynamic"
strategies (which move the rates during training) are left out because their exact rules could not
be checked against a source. Task-agnostic (it only sets learning rates); any number of modalities.
A modality missing from ``lr_scale`` keeps scale 1; an unknown name is refused.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Float
from mmbalance.models.base import MultimodalModel
from mmbalance.training.data import StrictModel, TaskInfo
from mmbalance.training.method import Method, MethodNotApplicable, RunContext

__all__ = ["MSLRParams", "MSLR"]


class MSLRParams(StrictModel):
    lr_scale: dict[str, float] = {}  # modality -> multiplier of optim.lr for its encoder (1 if absent)
    head_lr_scale: float = Field(1.0, gt=0)  # multiplier for the fusion module and head


@METHODS.register
class MSLR(Method):
    name = "mslr"
    Params = MSLRParams
    # ``lr_scale`` names a dataset's modalities, so no declaration fits every dataset: the paper's "keep"
    # strategy reads each modality's rate off its tuned unimodal model, which a tuned suite can pass in
    # (MLB's CREMA-D re-run, kkontras/MLB MSLR.json, sets 0.9 and 1.1). With optim.lr searched, the head's
    # scale is the one ratio left that fits every dataset.
    search_space = {
        "head_lr_scale": Float(
            0.25, 4.0, log=True, source="around the default 1 (no official code, no grid)"
        ),
    }
    min_modalities = 2
    reference = "Yao & Mihalcea, Findings of ACL 2022 (MSLR, 'keep' strategy); no official code found"

    def check(self, task: TaskInfo) -> None:
        super().check(task)
        unknown = sorted(set(self.p.lr_scale) - set(task.modalities))
        if unknown:
            raise MethodNotApplicable(
                f"mslr: method_params.lr_scale names {unknown}, "
                f"not modalities of this task {list(task.modalities)}"
            )
        bad = {m: s for m, s in self.p.lr_scale.items() if not s > 0}
        if bad:
            raise MethodNotApplicable(f"mslr: lr_scale values must be > 0, got {bad}")

    def param_groups(self, model: MultimodalModel) -> list[dict[str, Any]]:
        scale = self.p.lr_scale
        groups = [{"params": model.encoder_parameters(m), "lr_scale": scale.get(m, 1.0), "modality": m}
                  for m in model.modalities]  # fmt: skip
        in_encoders = {id(p) for g in groups for p in g["params"]}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in in_encoders]
        groups.append({"params": rest, "lr_scale": self.p.head_lr_scale, "modality": "head"})
        return groups

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        return {f"lr/{g['modality']}": g["lr"] for g in ctx.optimizer.param_groups}
