"""CGGM: classifier-guided gradient modulation.

Reference: Z. Guo, T. Jin, J. Chen, Z. Zhao, "Classifier-guided Gradient Modulation for Enhanced
Multimodal Learning", NeurIPS 2024. Official code: zrguo/CGGM, the ``modulation == 'cggm'`` block of
``src/msatrain.py`` (MOSI, IEMOCAP), ``src/foodtrain.py`` and ``src/segtrain.py`` (BraTS).

One classifier per modality reads that modality's *detached* features, so its loss never reaches
an encoder; it has its own optimiser and learning rate and is dropped at inference (it lives in
the method, not in the model). Per training step, as the released code::

    loss  = task_loss + lam * l_gm                      # l_gm from the previous step (none at first)
    loss.backward()
    train every classifier one step on its detached features (sum of the task losses)
    a_m     = batch score of classifier m                # accuracy / sign accuracy / mean Dice
    d_m     = a_m - a_m(previous step)                   # the previous score starts at 0
    coeff_m = (S - d_m) / S,  S = sum_k d_k + 1e-8        # the balancing term B_m, logged as coeff/m
    cos_m   = cos(W_m, W_fusion)                          # output-layer weights (see ``direction``)
    l_gm    = (sum_m |coeff_m| - sum_m coeff_m cos_m) / M # kept for the next step's loss
    grad(encoder m) *= coeff_m * rho
    clip the model's gradient norm once (0.8), then the runner steps the optimiser

The batch score is the one the official code uses per task: argmax accuracy (classification,
IEMOCAP / Food), accuracy of the sign ``pred > 0`` vs ``y > 0`` (regression, MOSI's
``train_eval_senti``), and the mean over the task's regions of the per-sample Dice
``2 (|P n T| + 1e-3) / (|P| + |T| + 2e-3)`` of the argmax labels (segmentation, BraTS).
Accuracies are float64, as the released scikit-learn ``accuracy_score``: when the score changes
cancel, ``S`` is 1e-8 plus rounding noise, and float32 scores give coefficients of another sign
and size (a MOSI batch: released [+1.67e7, 1, -1.67e7], float32 [-3.36e6, 1, +3.36e6]). The Dice
is float32, as the released ``train_eval_seg`` (torch tensors).

**Which parameters** ``grad *= coeff_m * rho`` scales: the released ``msatrain.py`` scales the
parameters named ``encoders.{i}``, the per-modality transformers; the 1x1 input projections
``proj.{i}`` sit outside them and are not scaled (``foodtrain.py`` likewise leaves ``projv`` out).
Our encoders hold their projection (``input_projection``), so ``scale_input_projection: false``
(default) leaves it out, as released; ``true`` scales the modality's whole encoder, the reading of
the paper (the magnitude of each modality's branch), and what this file did before.

**Clipping**, once per step, as the released MOSI / IEMOCAP / Food loops: when the spec clips
(``optim.clip_grad_norm``, which the runner applies right before the step), that is the one clip;
only when the spec does not clip does the method clip at its own ``clip_grad_norm``.

**The direction term** (zrguo/CGGM issue #6 argues that ``l_gm``, taken from the previous
iteration, adds no gradient). In the released code ``l_gm`` keeps its autograd graph (``cal_cos``
clones the parameters, it does not detach them), so the next step's backward does put a gradient
on the fusion ``out_layer.weight``: ``-lam / M sum_m coeff_m d cos(W_m, W) / dW`` at the previous
step's weights. It reaches nothing else in the model (the classifiers' share is zeroed before
their own step). ``tests/test_equivalence_cggm.py::test_direction_term_gradient_on_the_fusion_output_layer``
shows that gradient for ``direction: weights`` (non-zero on the output layer only, equal to the
released autograd result) and for ``direction: gradients`` (non-zero on the encoders through the
double backward; zero on the output layer itself under MOSI's L1 loss, whose output-layer gradient
is piecewise constant in those weights). So the issue is right that the released term is no
gradient-*direction* term and leaves the encoders alone, and wrong that it adds no gradient.

Diagnostics per step: ``coeff/<m>`` (the balancing term of the paper's figure), ``score/<m>``,
``cos/<m>`` and ``l_gm`` (the cosines and direction loss in this step's loss).

``direction``:
- ``weights`` (default, the released code): ``cos_m`` is the cosine of the flattened output-layer
  *weights*. In the released code ``l_gm`` keeps its autograd graph into the fusion ``out_layer``
  until the next step's backward, so that step's gradient of ``l_gm`` is evaluated at the previous
  step's weights; we rebuild exactly that from stored tensors (``W_prev + (W - W.detach())``), so
  that a resumed run needs no graph. The classifiers' share of that gradient is discarded, as the
  released code zeroes the classifier gradients right after.
- ``gradients`` (the paper's wording): ``cos_m`` is the cosine between classifier m's output-layer
  gradient (previous step) and the fusion output layer's gradient of the *current* task loss,
  taken with ``create_graph`` so that ``l_gm`` is differentiable; this costs a double backward
  through the network.

``magnitude: false`` skips ``grad *= coeff_m * rho`` (the paper's "direction only" ablation row;
the released code has no such switch).

Where this file generalises the released code:

- **Any number of modalities** (the released copies hard-code 2, 3 or 4 terms).
- **Output layers of different shapes.** The released models give every classifier an output
  layer of the fusion head's shape. With late concat fusion (the synthetic models) the fusion
  output layer reads ``[f_1; ...; f_M]``; classifier m is then compared with modality m's block of
  columns, the part of the fusion layer that reads the same features. Any other mismatch is refused.
- **BraTS.** The released ``segtrain.py`` scales parameters named ``vision_encoder`` / ``text_encoder``,
  which its segmentation model does not have, so only ``l_gm`` acts there. We scale every encoder
  (parameters chosen by structure), as the MOSI/IEMOCAP code does. ``segtrain.py`` never clips;
  ``clip_grad_norm: null`` gives that, but with the magnitude modulation active it is unsafe.
- **Segmentation classifiers** whose logits are smaller than the target are upsampled (bilinear,
  ``align_corners=True`` as the released ``SegClassifier``, ``models/segmodel.py`` lines 369-372).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Float
from mmbalance.models.base import MultimodalModel, Output, resize_logits
from mmbalance.training.data import Batch, StrictModel
from mmbalance.training.method import Method, MethodNotApplicable, RunContext

__all__ = ["CGGMParams", "CGGM", "cggm_coefficients", "direction_loss", "batch_scores", "scaled_parameters"]

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


class CGGMParams(StrictModel):
    rho: float = Field(1.3, gt=0)  # --rou: MOSI / IEMOCAP / Food 1.3, BraTS 1.0
    lam: float = Field(0.2, ge=0)  # --lamda, weight of l_gm: MOSI / IEMOCAP 0.2, Food 0.05, BraTS 0.1
    cls_lr: float = Field(5e-4, gt=0)  # classifiers' learning rate: 5e-4 (BraTS 6e-3)
    cls_optimizer: Literal["same", "sgd", "adam", "adamw"] = "same"  # same: the model's optimiser type
    cls_weight_decay: float = Field(0.0, ge=0)  # MOSI / IEMOCAP 0, Food 3e-3, BraTS 3e-4
    direction: Literal["weights", "gradients"] = "weights"  # released code / paper (see docstring)
    # False: no gradient magnitude scaling, only the direction term (the paper's "direction only" ablation).
    magnitude: bool = True
    # The released MOSI / IEMOCAP / Food loops clip the model's gradient norm right after the
    # modulation. It is part of the method: when the score changes cancel (S = 1e-8), coeff_m reaches
    # ~1e6 and an unclipped step diverges. Applied only when the spec does not clip (optim.clip_grad_norm
    # is then the one clip); None: no clip of the method's own.
    clip_grad_norm: float | None = Field(0.8, gt=0)
    # False: as released, the 1x1 input projections are not scaled (see the module docstring).
    scale_input_projection: bool = False


def cggm_coefficients(score: Sequence[float], previous: Sequence[float]) -> list[float]:
    """Balancing term per modality from the M batch scores now and at the previous step:
    ``coeff_m = (S - d_m) / S`` with ``d = score - previous``, ``S = sum(d) + 1e-8``."""
    diff = [a - b for a, b in zip(score, previous, strict=True)]
    total = sum(diff) + 1e-8
    return [(total - d) / total for d in diff]


def direction_loss(coeff: Sequence[float], cos: Tensor) -> Tensor:
    """``l_gm = (sum_m |coeff_m| - sum_m coeff_m cos_m) / M`` for M coefficients and (M,) cosines."""
    return (sum(abs(c) for c in coeff) - torch.dot(cos, cos.new_tensor(coeff))) / len(coeff)


def batch_scores(kind: str, logits: Tensor, target: Tensor, region_masks: Tensor | None = None) -> Tensor:
    """The official per-task training signal of M classifiers on one batch, (M,) values in [0, 1].

    ``logits``: (M, B, C), (M, B, 1) or (M, B, C, H, W), stacked over modalities. ``region_masks``:
    (R, C) booleans, region r = the labels where row r is true (segmentation).
    """
    if kind == "classification":  # float64, as scikit-learn's accuracy_score in the released code
        return (logits.argmax(dim=2) == target).double().mean(dim=1)
    if kind == "regression":
        return ((logits.flatten(1) > 0) == (target.reshape(1, -1) > 0)).double().mean(dim=1)
    pred = region_masks[:, logits.argmax(dim=2)].float()  # (R, M, B, H, W)
    true = region_masks[:, target].unsqueeze(1).float()  # (R, 1, B, H, W)
    inter = (pred * true).sum(dim=(3, 4)) + 1e-3
    union = pred.sum(dim=(3, 4)) + true.sum(dim=(3, 4)) + 2e-3
    return (2 * inter / union).mean(dim=(0, 2))


def flat_rows(tensors: Sequence[Tensor]) -> Tensor:
    """Flatten each tensor into one row of an (M, K) matrix, zero-padded to the longest: padding
    both sides of a cosine with zeros leaves it unchanged, so one batched cosine serves all."""
    width = max(t.numel() for t in tensors)
    return torch.stack([F.pad(t.flatten(), (0, width - t.numel())) for t in tensors])


def scaled_parameters(model: MultimodalModel, modality: str, input_projection: bool) -> list[nn.Parameter]:
    """The parameters of encoder ``modality`` that ``grad *= coeff_m * rho`` scales: all of them, or
    (``input_projection`` false, as released) all but the encoder's ``input_projection`` if it has one."""
    params = model.encoder_parameters(modality)
    projection = getattr(model.encoders[modality], "input_projection", None)
    if input_projection or projection is None:
        return params
    skip = {id(p) for p in projection.parameters()}
    return [p for p in params if id(p) not in skip]


def _column_blocks(model: MultimodalModel, classifiers: nn.ModuleDict) -> dict[str, slice]:
    """Which columns of the fusion output layer each classifier's output layer is compared with."""
    fusion = model.out_layer.weight
    dims, blocks, start = model.feature_dims(), {}, 0
    for m, clf in classifiers.items():
        w = clf.out_layer.weight
        if w.shape == fusion.shape:
            blocks[m] = slice(None)
        elif (
            w.shape[0] == fusion.shape[0] and w.shape[1] == dims[m] and fusion.shape[1] == sum(dims.values())
        ):
            blocks[m] = slice(start, start + dims[m])
        else:
            raise MethodNotApplicable(
                f"cggm: classifier {m!r} output layer {tuple(w.shape)} matches neither the fusion output "
                f"layer {tuple(fusion.shape)} nor its block for modality {m!r} (late concat fusion)"
            )
        start += dims[m]
    return blocks


@METHODS.register
class CGGM(Method):
    name = "cggm"
    Params = CGGMParams
    search_space = {
        "rho": Float(
            0.8, 2.0, source="--rou 1.3 (MOSI, IEMOCAP, Food; README), 1.0 (BraTS); no published grid"
        ),
        "lam": Float(0.01, 1.0, log=True, source="--lamda 0.2 (MOSI, IEMOCAP), 0.1 (BraTS), 0.05 (Food)"),
        # How fast the classifiers' accuracies move sets the coefficients; the official rates are Adam's.
        "cls_lr": Float(1e-4, 5e-2, log=True, source="classifiers' lr 5e-4, 6e-3 (BraTS); no published grid"),
    }
    reference = "Guo et al., NeurIPS 2024 (CGGM); zrguo/CGGM src/msatrain.py, foodtrain.py, segtrain.py"

    state_attrs = ("prev_score", "prev")

    def build(self, ctx: RunContext) -> None:
        model, task = ctx.model, ctx.task
        self.kind, self.modalities = task.kind, list(ctx.modalities)
        # Built under a forked RNG: the main model sees the same random stream as joint training.
        with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
            self.classifiers = nn.ModuleDict(
                {m: model.unimodal_classifier(m, task.num_classes) for m in self.modalities}
            )
        self.classifiers.to(ctx.device)  # before its optimiser is built on them
        self.blocks = _column_blocks(model, self.classifiers)
        # Every encoder parameter in one list with its modality's index: one fused op scales them all.
        scaled = {m: scaled_parameters(model, m, self.p.scale_input_projection) for m in self.modalities}
        self.encoder_params = [p for m in self.modalities for p in scaled[m]]
        self.owner = [i for i, m in enumerate(self.modalities) for _ in scaled[m]]
        # The released loop clips once: the runner's clip when the spec sets one, else the method's.
        self.clip = self.p.clip_grad_norm if ctx.clip_grad_norm is None else None
        self.model_parameters = list(model.parameters())  # listed once, not walked every step
        name = self.p.cls_optimizer if self.p.cls_optimizer != "same" else ctx.optim.name
        if name not in OPTIMIZERS:
            raise MethodNotApplicable(
                f"cggm: cls_optimizer 'same' needs sgd/adam/adamw, the model uses {name!r}"
            )
        kwargs = {"lr": self.p.cls_lr, "weight_decay": self.p.cls_weight_decay}
        if name == "sgd":
            kwargs["momentum"] = ctx.optim.momentum if ctx.optim.name == "sgd" else 0.0
        self.cls_optimizer = OPTIMIZERS[name](self.classifiers.parameters(), foreach=True, **kwargs)
        self.region_masks = None
        if task.kind == "segmentation":
            masks = torch.zeros(len(task.regions), task.num_classes, dtype=torch.bool, device=ctx.device)
            for r, labels in enumerate(task.regions.values()):
                masks[r, list(labels)] = True
            self.region_masks = masks
        m = len(self.modalities)
        self.prev_score = [0.0] * m  # acc1 in the released code
        self.prev: dict[str, Any] | None = None  # what the next step's l_gm is built from
        self.coeff, self.cos, self.l_gm = [1.0] * m, [0.0] * m, 0.0

    # --- the direction term ---------------------------------------------------------------------
    def _fusion_views(self, weight: Tensor) -> Tensor:
        return flat_rows([weight[:, self.blocks[m]] for m in self.modalities])

    def loss(self, out: Output, batch: Batch, ctx: RunContext) -> Tensor:
        task_loss = ctx.task_loss(out.pred, batch.target)
        if self.prev is None or self.p.lam == 0:
            return task_loss
        weight = ctx.model.out_layer.weight
        if self.p.direction == "weights":
            fusion = self.prev["fusion"] + (weight - weight.detach())  # previous value, gradient into W
        else:
            (fusion,) = torch.autograd.grad(task_loss, weight, create_graph=True)
        cos = F.cosine_similarity(self.prev["classifiers"], self._fusion_views(fusion), dim=1)  # (M,)
        l_gm = direction_loss(self.prev["coeff"], cos)
        self._logged = torch.cat([cos.detach(), l_gm.detach().view(1)])  # read in diagnostics only
        return task_loss + self.p.lam * l_gm

    # --- classifiers, balancing term, magnitude modulation ---------------------------------------
    def _classify(self, model: MultimodalModel, m: str, out: Output, target: Tensor) -> Tensor:
        logits = self.classifiers[m](model.classifier_input(out, m).detach())
        if self.kind != "segmentation":
            return logits
        return resize_logits(logits, target.shape[-2:], align_corners=True)  # as the released SegClassifier

    def after_backward(self, model: MultimodalModel, out: Output, batch: Batch, ctx: RunContext) -> None:
        self.cls_optimizer.zero_grad(set_to_none=True)
        logits = [self._classify(model, m, out, batch.target) for m in self.modalities]
        sum(ctx.task_loss(x, batch.target) for x in logits).backward()
        with torch.no_grad():
            # One host sync for M numbers (the runner syncs on loss.item() every step anyway).
            score = batch_scores(self.kind, torch.stack(logits), batch.target, self.region_masks).tolist()
            self.coeff, self.prev_score = cggm_coefficients(score, self.prev_score), score
            if self.p.direction == "weights":
                mine = flat_rows([c.out_layer.weight for c in self.classifiers.values()])
                self.prev = {
                    "coeff": self.coeff,
                    "classifiers": mine,
                    "fusion": model.out_layer.weight.clone(),
                }
            else:
                mine = flat_rows([c.out_layer.weight.grad for c in self.classifiers.values()])
                self.prev = {"coeff": self.coeff, "classifiers": mine}
            if self.p.magnitude:
                pairs = [
                    (p.grad, self.coeff[i] * self.p.rho)
                    for p, i in zip(self.encoder_params, self.owner, strict=True)
                    if p.grad is not None
                ]
                torch._foreach_mul_([g for g, _ in pairs], [c for _, c in pairs])
        if self.clip is not None:
            nn.utils.clip_grad_norm_(self.model_parameters, self.clip, foreach=True)
        self.cls_optimizer.step()

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        if hasattr(self, "_logged"):  # cosines inside this step's l_gm (built from the previous step)
            *self.cos, self.l_gm = self._logged.tolist()
        values = {"coeff": self.coeff, "score": self.prev_score, "cos": self.cos}
        out = {f"{k}/{m}": x for k, v in values.items() for m, x in zip(self.modalities, v, strict=True)}
        return out | {"l_gm": self.l_gm}
