"""Evaluation after each epoch and at the end of a run, the ``Trainer``'s part that scores its model.

``evaluate``: a split's task metrics and loss of the model as the method predicts (``method.forward``
under ``torch.no_grad``, ``ctx.training = False``) and, with probes, the primary metric of each
modality's linear probe on the same features. ``modality_eval``: the selected epoch's model (``best.pt``)
with each modality absent, on the test split (``modality_eval.py``).
"""

from __future__ import annotations

from typing import Any

import torch

from mmbalance.common.spec import RunSpec
from mmbalance.models.base import MultimodalModel
from mmbalance.training import modality_eval
from mmbalance.training.batching import to_device
from mmbalance.training.data import Batch, DatasetAdapter, TaskInfo
from mmbalance.training.method import Method, RunContext
from mmbalance.training.probes import Probes

__all__ = ["Evaluation"]


class Evaluation:
    """What the ``Trainer`` holds that evaluation reads (and ``loader``, ``iterate``, ``autocast``,
    ``load_selected`` of its other parts)."""

    spec: RunSpec
    adapter: DatasetAdapter
    task: TaskInfo
    model: MultimodalModel
    method: Method
    ctx: RunContext
    probes: Probes | None
    modalities: list[str]
    device: torch.device

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, Any]:
        self.model.eval()
        self.ctx.training = False
        preds, targets, ids, loss_sum = [], [], [], 0.0
        probe_preds: dict[str, list[torch.Tensor]] = {m: [] for m in self.modalities}
        for batch in to_device(self.loader(split, shuffle=False), self.device):
            with self.autocast():
                out = self.method.forward(self.model, batch, self.ctx)
            loss_sum += self.task_loss(out.pred, batch.target).item() * len(batch)
            preds.append(self.adapter.compact_prediction(out.pred.float()).cpu())  # AMP: metrics read fp32
            targets.append(batch.target.cpu())
            ids += batch.ids
            if self.probes is not None:
                with self.autocast():
                    for m, f in out.features.items():
                        probe_pred = self.probes.predict(m, f, batch.target.shape).float()
                        probe_preds[m].append(self.adapter.compact_prediction(probe_pred).cpu())
        self.ctx.training = True
        pred, target = torch.cat(preds), torch.cat(targets)
        result: dict[str, Any] = {"loss": loss_sum / len(ids), **self.adapter.evaluate(pred, target, ids)}
        if self.probes is not None:
            result["probe"] = {  # the primary metric alone: the same number as evaluate(...)[key]
                m: self.adapter.primary_value(torch.cat(p), target, ids) for m, p in probe_preds.items()
            }
        return result

    def modality_eval(self, epoch: int) -> dict[str, Any]:
        """``modality_eval`` of a run's selected epoch: its ``best.pt`` loaded into the trainer, scored on the
        test split (absent modalities replaced by train-split means)."""
        self.load_selected(epoch)  # Checkpoints.load_selected
        self.model.eval()
        self.ctx.training = False

        def forward(batch: Batch) -> torch.Tensor:
            with self.autocast():
                return self.method.forward(self.model, batch, self.ctx).pred

        record = modality_eval.measure(
            self.model, forward, self.task, self.adapter.primary_value, self.adapter.compact_prediction,
            self.iterate("train"), self.iterate("test"), seed=self.spec.seed, unk=self.adapter.unknown_token(),
        )  # fmt: skip
        if hasattr(self.adapter, "modality_labels"):  # a label per modality (CH-SIMS): the report compares
            record["own_labels"] = self.adapter.modality_labels("test")
        return record
