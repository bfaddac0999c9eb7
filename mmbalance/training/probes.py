"""Probes: what every run logs about its modalities, whatever the method.

Every ``every`` training steps the runner records, per modality m with encoder parameters θ_m:

- ``grad_norm/m``: ‖∇_θm L‖₂, the L2 norm of the gradient the optimiser applies to encoder m
  (read after the method's ``after_backward``, so a modulation shows up here).
- ``grad_cos/m``: cos(g_m^uni, g_m^fused), where g_m^fused = ∇_θm ℓ(ŷ, y) is the gradient of the
  *task loss of the fused prediction* (no method terms) and g_m^uni = ∇_θm ℓ(P_m(f_m), y) is the
  gradient of the loss of modality m's linear probe P_m on its own features f_m. Both are
  flattened over all of θ_m. Cosine 1: the fused objective pushes the encoder the way its own
  modality would; near 0 or negative: the encoder is trained for the other modalities' benefit.
- ``probe_acc/m``: the probe's metric on the training batch (before the probe's own update).
- ``diag/<key>``: the method's ``diagnostics()``.

Linear probes P_m (Linear for pooled features, 1x1 Conv for feature maps) are trained with their
own Adam on *detached* features, built under a forked RNG and never touch the global RNG or the
model's gradients, so the trained model is bit-identical with or without probes
(tested in ``tests/test_probes.py``). At the end of each epoch the probes are evaluated on the
validation split: the unimodal accuracy curve.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmbalance.models.base import MultimodalModel, Output, resize_logits
from mmbalance.training.data import TaskInfo
from mmbalance.training.method_parts import flat


class Probes(nn.Module):
    def __init__(self, model: MultimodalModel, task: TaskInfo, seed: int, lr: float = 1e-2) -> None:
        super().__init__()
        self.task = task
        out = task.num_classes
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 7919)
            self.heads = nn.ModuleDict(
                {
                    m: nn.Conv2d(d, out, 1) if task.kind == "segmentation" else nn.Linear(d, out)
                    for m, d in model.feature_dims().items()
                }
            )
        device = next(model.parameters()).device
        self.to(device)
        self.optimizer = torch.optim.Adam(self.heads.parameters(), lr=lr, foreach=True)

    def predict(self, m: str, feature: Tensor, target_shape: torch.Size) -> Tensor:
        if self.task.kind == "segmentation":
            return resize_logits(self.heads[m](feature), target_shape[-2:])
        return self.heads[m](feature.flatten(1))

    def gradient_cosines(
        self,
        model: MultimodalModel,
        out: Output,
        target: Tensor,
        task_loss: Callable[[Tensor, Tensor], Tensor],
    ) -> dict[str, float]:
        """cos(g_m^uni, g_m^fused) per modality (see module docstring). Leaves no ``.grad`` behind."""
        fused_loss = task_loss(out.pred, target)
        # A frozen encoder (a pretrained backbone, ``backbone.py``) has no gradient to compare.
        trainable = [m for m in out.features if any(p.requires_grad for p in model.encoders[m].parameters())]
        if not trainable:
            return {}
        params = {m: model.encoder_parameters(m) for m in trainable}
        flat_params = [p for ps in params.values() for p in ps]
        # One backward pass for the fused gradient of every encoder, one per modality for its probe.
        g_fused_all = torch.autograd.grad(fused_loss, flat_params, retain_graph=True, allow_unused=True)
        result, start = {}, 0
        for m in trainable:
            feature = out.features[m]
            g_fused = g_fused_all[start : start + len(params[m])]
            start += len(params[m])
            uni_loss = task_loss(self.predict(m, feature, target.shape), target)
            g_uni = torch.autograd.grad(uni_loss, params[m], retain_graph=True, allow_unused=True)
            a, b = flat(g_fused, params[m]), flat(g_uni, params[m])
            result[f"grad_cos/{m}"] = F.cosine_similarity(a, b, dim=0, eps=1e-12).item()
        return result

    @staticmethod
    def grad_norms(model: MultimodalModel) -> dict[str, float]:
        out = {}
        for m in model.modalities:
            grads = [
                p.grad.detach().pow(2).sum() for p in model.encoders[m].parameters() if p.grad is not None
            ]
            out[f"grad_norm/{m}"] = torch.stack(grads).sum().sqrt().item() if grads else 0.0
        return out

    def fit_step(
        self,
        features: dict[str, Tensor],
        target: Tensor,
        task_loss: Callable[[Tensor, Tensor], Tensor],
        batch_metric: Callable[[Tensor, Tensor], float] | None = None,
    ) -> dict[str, float]:
        """One Adam step of every probe on detached features; returns each probe's batch metric
        (computed before the update) when ``batch_metric`` is given."""
        self.optimizer.zero_grad(set_to_none=True)
        metrics, total = {}, 0.0
        for m, f in features.items():
            logits = self.predict(m, f.detach(), target.shape)
            if batch_metric is not None:
                metrics[f"probe_acc/{m}"] = batch_metric(logits.detach(), target)
            total = total + task_loss(logits, target)
        total.backward()
        self.optimizer.step()
        return metrics

    def state(self) -> dict[str, Any]:
        return {"heads": self.heads.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load(self, state: dict[str, Any]) -> None:
        self.heads.load_state_dict(state["heads"])
        self.optimizer.load_state_dict(state["optimizer"])
