"""Evaluation of a split after each epoch: the task's metrics and loss of the model as the method
predicts (``method.forward`` under ``torch.no_grad``, ``ctx.training = False``), and, with probes, the
primary metric of each modality's linear probe on the same features."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from mmbalance.batching import to_device

if TYPE_CHECKING:
    from mmbalance.runner import Trainer

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(tr: Trainer, split: str) -> dict[str, Any]:
    tr.model.eval()
    tr.ctx.training = False
    preds, targets, ids, loss_sum = [], [], [], 0.0
    probe_preds: dict[str, list[torch.Tensor]] = {m: [] for m in tr.modalities}
    for batch in to_device(tr.loader(split, shuffle=False), tr.device):
        with tr.autocast():
            out = tr.method.forward(tr.model, batch, tr.ctx)
        loss_sum += tr.task_loss(out.pred, batch.target).item() * len(batch)
        preds.append(tr.adapter.compact_prediction(out.pred.float()).cpu())  # AMP: metrics read fp32
        targets.append(batch.target.cpu())
        ids += batch.ids
        if tr.probes is not None:
            with tr.autocast():
                for m, f in out.features.items():
                    probe_pred = tr.probes.predict(m, f, batch.target.shape).float()
                    probe_preds[m].append(tr.adapter.compact_prediction(probe_pred).cpu())
    tr.ctx.training = True
    pred, target = torch.cat(preds), torch.cat(targets)
    result: dict[str, Any] = {"loss": loss_sum / len(ids), **tr.adapter.evaluate(pred, target, ids)}
    if tr.probes is not None:
        result["probe"] = {  # the primary metric alone: the same number as evaluate(...)[key]
            m: tr.adapter.primary_value(torch.cat(p), target, ids) for m, p in probe_preds.items()
        }
    return result
