"""IGM: interactive multimodal learning via flat gradient modification.

Reference: Q.-Y. Jiang, Z. Chi, Y. Yang, "Interactive Multimodal Learning via Flat Gradient
Modification", IJCAI 2025. Official code: njustkmg/IJCAI25-IGM @ 19aa8e5, ``train_CREMA.py``
(``compute_P_matrix`` lines 31-56, ``train_withP`` 57-183, ``train_withoutP`` 186-293, stages 374-418),
``models/AudioVideo.py`` (``AVClassifier`` lines 45-137: ``cls_a``/``cls_v``, ``compute_cov``,
``get_P_matrix``, ``update_cov``), ``configs/crema.json`` (defaults).

The modalities are trained one at a time, in stages that cycle through them (``epoch_list``
[25, 50, 25, 50, ...]: audio 25 epochs, video 50, ...). Each modality m has its encoder ``f_m`` and
classifier ``h_m``; a stage trains only those. Per step of modality m's stage (train_CREMA.py:63-157)::

    x~ = lam x_m + (1 - lam) x_m[perm],  lam ~ Beta(1, 1)                  # mixup of m's input only
    L_ori  = lam CE(h_m(f_m(x~)), y) + (1 - lam) CE(h_m(f_m(x~)), y[perm])
    theta' = theta + rho g / ||g||,  g = grad L_ori, per tensor, over f_m and h_m     # SAM ascent
    L_flat = CE(h_{m,theta'}(f_{m,theta}(x~)), y)     # the perturbed classifier on the features from before
    loss   = (1 - r) L_ori + r L_flat,  r = flat_ratio = 0.3
    backward; for every Linear layer W of f_m and h_m paired with a layer of the previous stage's
    modality p of the same shape:   grad W <- grad W  P_p(W)           # flat gradient modification
    optimizer step

At the start of each stage after the first, the previous modality p's layers give the modification
matrices from their inputs over the train split (eval mode, no gradient; AudioVideo.py:97-137)::

    C = sum over batches of  xbar^T xbar,  xbar = the batch mean of the layer's input (1 x d)
    C = U diag(s) U^T (SVD);  P = U diag(exp(-T (s - min s) / (max s - min s))) U^T,  T = 0.4

so the gradient is damped (by up to exp(-T)) along the input directions the other modality's layer
relies on most. Prediction (``state == 'test'``): the mean of the classifiers' softmax outputs;
here ``log`` of that mean, so the task loss on it is the mixture's negative log-likelihood.

Follows the code, including where it departs from SAM as usually written: the weights are
perturbed by assigning ``param.data`` a new tensor (train_CREMA.py:104, 115), so the graph built
before (L_ori, and f_m(x~) inside L_flat) is differentiated at the unperturbed weights and only the
classifier's second forward at the perturbed ones (an in-place ``add_`` would change both; the
equivalence test sees the difference); the perturbation is never undone (rho = 1e-10, so it barely
moves the weights) and the optimiser steps from the perturbed weights. A fresh optimiser starts each stage (the code builds a new SGD): the optimiser's state is
cleared at each stage start. Not followed:

- **No reload of the best model.** Each stage of the code starts from ``best_model.pth``, the best
  epoch so far by *test* F1 (train_CREMA.py:382, 412-417); we continue from the current model, since
  the suite selects on validation once, at the end. The code's learning-rate schedule restarts with
  each stage; the run's schedule here runs on.
- **Pairing of layers.** The code multiplies a layer's gradient by the matrix of *every* layer of the
  other modality with the same weight shape (train_CREMA.py:152-156); on the released model each
  shape occurs once per modality, so that is the corresponding layer. We pair the k-th Linear layer of
  ``f_m`` then ``h_m`` with the k-th of the other modality and skip pairs whose shapes differ.
  Convolution matrices, which the code computes but never uses, are not computed.
- The model runs whole (any model's ``classifier_input``: sequences, segmentation maps) with the other
  modalities' encoders in eval mode, so that their batch-norm statistics and dropout stay as the
  code leaves them (it never runs them in another modality's stage); the model's own fusion head
  runs untrained. The covariance pass reads every training batch (the code's loader drops the last
  incomplete one). A layer whose input spectrum is flat (max s = min s) gets P = I instead of a
  division by zero, and a zero gradient no perturbation. Inputs with more axes (sequences) add each
  position's batch mean.

Generalisations: **M modalities** cycle through the stages in order (stage k trains modality
k mod M for ``stage_epochs[k mod len]`` epochs; the matrices come from the previous stage's
modality); **segmentation** (per-pixel losses, the classifiers' maps upsampled) and **regression**
(the task loss; the prediction is the mean of the modalities' outputs).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import Field, PositiveInt
from torch import Tensor, nn

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Float
from mmbalance.models.base import MultimodalModel, Output, resize_logits
from mmbalance.training.data import Batch, StrictModel
from mmbalance.training.method import RunContext
from mmbalance.training.method_parts import UnimodalHeadsMethod

__all__ = ["IGMParams", "IGM", "stage_at", "flat_matrix", "mixup"]


class IGMParams(StrictModel):
    # Epochs of each stage, cycled (crema.json epoch_list: 25, 50, 25, 50, ... for audio, video).
    stage_epochs: list[PositiveInt] = Field([25, 50], min_length=1)
    flat_ratio: float = Field(0.3, ge=0, le=1)  # r (crema.json flat_ratio)
    rho: float = Field(1e-10, ge=0)  # SAM radius of the encoder (crema.json noise_ratio)
    rho_cls: float = Field(1e-10, ge=0)  # ... and of the classifier (noise_ratio_cls)
    temperature: float = Field(0.4, ge=0)  # T of the modification matrix (temperature1)
    mixup_alpha: float = Field(1.0, ge=0)  # Beta(alpha, alpha) of the mixup (mixup_alpha; 0: no mixup)


def stage_at(epoch: int, stage_epochs: list[int]) -> tuple[int, int]:
    """``(stage index, first epoch of that stage)`` of a 0-based epoch."""
    k, start = 0, 0
    while start + stage_epochs[k % len(stage_epochs)] <= epoch:
        start += stage_epochs[k % len(stage_epochs)]
        k += 1
    return k, start


def flat_matrix(cov: Tensor, temperature: float) -> Tensor:
    """``P = U diag(exp(-T (s - min s) / (max s - min s))) U^T`` of ``C = U diag(s) U^T``
    (``get_P_matrix``, AudioVideo.py:122-129; identity when the spectrum is flat)."""
    _, s, vh = torch.linalg.svd(cov)
    v = vh.mT
    spread = s.max() - s.min()
    if spread == 0:
        return torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    return v @ torch.diag(torch.exp(temperature * (-(s - s.min()) / spread))) @ v.T


def mixup(x: Tensor, alpha: float) -> tuple[Tensor, Tensor, float]:
    """``(lam x + (1 - lam) x[perm], perm, lam)``, lam ~ Beta(alpha, alpha) (utils.py ``mixup_data``)."""
    lam = float(np.random.beta(alpha, alpha)) if alpha > 0 else 1.0
    perm = torch.randperm(x.shape[0]).to(x.device)
    return lam * x + (1 - lam) * x[perm], perm, lam


@METHODS.register
class IGM(UnimodalHeadsMethod):
    name = "igm"
    Params = IGMParams
    search_space = {
        "flat_ratio": Float(0.1, 0.7, source="crema.json and every released config 0.3 (no published grid)"),
        "temperature": Float(0.1, 2.0, log=True, source="crema.json temperature1 0.4 (no published grid)"),
        "rho": Float(
            1e-10, 0.1, log=True, source="crema.json noise_ratio 1e-10; SAM's usual 0.05 (Foret et al.)"
        ),
    }
    reference = "Jiang, Chi & Yang, IJCAI 2025 (IGM); njustkmg/IJCAI25-IGM train_CREMA.py"

    state_attrs = ("P",)

    def build(self, ctx: RunContext) -> None:
        super().build(ctx)
        model = ctx.model
        self.regression = ctx.task.kind == "regression"
        self.modalities = list(ctx.modalities)
        self.layers = {
            m: [x for part in (model.encoders[m], self.heads.heads[m]) for x in part.modules()
                if isinstance(x, nn.Linear)]
            for m in self.modalities
        }  # fmt: skip
        self.current = self.modalities[0]
        self.P: list[Tensor | None] = []  # per Linear layer of the current modality (None: unpaired)
        self.flat_loss = 0.0

    def on_epoch_start(self, ctx: RunContext) -> None:
        k, start = stage_at(ctx.epoch, self.p.stage_epochs)
        self.current = self.modalities[k % len(self.modalities)]
        if ctx.epoch == start and k > 0:  # a new stage: the previous modality's matrices, a fresh optimiser
            self.P = self.flat_matrices(self.modalities[(k - 1) % len(self.modalities)], ctx)
            ctx.optimizer.state.clear()

    @torch.no_grad()
    def flat_matrices(self, previous: str, ctx: RunContext) -> list[Tensor | None]:
        """``compute_P_matrix``: input covariances of ``previous``'s layers over the train split, then
        one matrix per layer of the current modality paired with a layer of the same shape."""
        covs = {layer: 0 for layer in self.layers[previous]}

        def accumulate(layer: nn.Linear, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            x = inputs[0].mean(dim=0, keepdim=True).reshape(-1, layer.in_features)
            covs[layer] = covs[layer] + x.T @ x  # update_cov

        handles = [layer.register_forward_hook(accumulate) for layer in covs]
        model = ctx.model
        was_training = model.training
        model.eval()
        for batch in ctx.iterate("train"):
            self.heads.heads[previous](model.classifier_input(model(batch.inputs), previous))
        model.train(was_training)
        for h in handles:
            h.remove()
        pairs = zip(self.layers[self.current], self.layers[previous], strict=False)
        return [
            flat_matrix(covs[q], self.p.temperature) if w.weight.shape == q.weight.shape else None
            for w, q in pairs
        ]

    def forward(self, model: MultimodalModel, batch: Batch, ctx: RunContext) -> Output:
        if ctx.training:  # the current modality's classifier, on its mixed-up input
            m = self.current
            x, self.perm, self.lam = mixup(batch.inputs[m], self.p.mixup_alpha)
            for k, encoder in model.encoders.items():  # the others are not trained in m's stage
                encoder.train(k == m)
            out = model({**batch.inputs, m: x})
            f = model.classifier_input(out, m)
            z = resize_logits(self.heads.heads[m](f), batch.target.shape[-2:])
            return Output(z, {m: out.features[m]}, f)
        out = model(batch.inputs)
        logits = self.heads(model, out)
        if self.regression:
            pred = torch.stack(list(logits.values())).mean(0)
        else:  # log of the mean probability ("test": (soft_a + soft_v) / 2)
            log_p = torch.stack([z.log_softmax(dim=1) for z in logits.values()])
            pred = torch.logsumexp(log_p, dim=0) - math.log(len(logits))
        return Output(pred, out.features, out.fused, modality_logits=logits)

    def loss(self, out: Output, batch: Batch, ctx: RunContext) -> Tensor:
        if not ctx.training:
            return ctx.task_loss(out.pred, batch.target)
        m, y = self.current, batch.target
        loss_ori = self.lam * ctx.task_loss(out.pred, y) + (1 - self.lam) * ctx.task_loss(
            out.pred, y[self.perm]
        )
        # SAM ascent on f_m and h_m (train_CREMA.py:78-116), both gradients taken first; never undone
        parts = [(ctx.model.encoder_parameters(m), self.p.rho),
                 (list(self.heads.heads[m].parameters()), self.p.rho_cls)]  # fmt: skip
        grads = [torch.autograd.grad(loss_ori, ps, retain_graph=True, allow_unused=True) for ps, _ in parts]
        for (params, rho), gs in zip(parts, grads, strict=True):
            for p, g in zip(params, gs, strict=True):
                if g is not None and (norm := torch.linalg.vector_norm(g)) > 0:
                    # a new tensor: the graph built so far keeps the unperturbed weights, as the code's
                    p.data = p.data + rho * g / norm
        z_flat = resize_logits(self.heads.heads[m](out.fused), y.shape[-2:])
        loss_flat = ctx.task_loss(z_flat, y)
        self.flat_loss = loss_flat.item()
        return (1 - self.p.flat_ratio) * loss_ori + self.p.flat_ratio * loss_flat

    @torch.no_grad()
    def after_backward(self, model: MultimodalModel, out: Output, batch: Batch, ctx: RunContext) -> None:
        for layer, P in zip(self.layers[self.current], self.P, strict=False):
            if P is not None and layer.weight.grad is not None:
                layer.weight.grad = layer.weight.grad @ P

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        return {"stage_modality": float(self.modalities.index(self.current)), "flat_loss": self.flat_loss}
