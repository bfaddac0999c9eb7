"""Unimodal baseline: train one modality alone (its encoder and a head on its features only).

It gives the accuracy each modality reaches by itself, against which the unimodal probe
accuracy inside a multimodal model shows how under-trained that modality's encoder is.
A sweep entry without ``modality`` expands into one run per modality of the dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmbalance.common.registry import METHODS
from mmbalance.training.data import StrictModel, TaskInfo
from mmbalance.training.method import Method, MethodNotApplicable


class UnimodalParams(StrictModel):
    modality: str | None = None  # required for a run; a sweep fills it in per modality


@METHODS.register
class Unimodal(Method):
    name = "unimodal"
    Params = UnimodalParams
    min_modalities = 1
    reference = "Unimodal training of one modality (the upper bound of its encoder alone)"

    @classmethod
    def variants(cls, params: dict[str, Any], task: TaskInfo) -> list[dict[str, Any]]:
        if params.get("modality") is not None:
            return [params]
        return [{**params, "modality": m} for m in task.modalities]

    def check(self, task: TaskInfo) -> None:
        super().check(task)
        if self.p.modality not in task.modalities:
            raise MethodNotApplicable(
                f"unimodal: method_params.modality must be one of {list(task.modalities)}, got {self.p.modality!r}"
            )

    def model_modalities(self, modalities: Sequence[str]) -> list[str]:
        return [self.p.modality]
