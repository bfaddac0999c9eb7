"""AUG: sustained boosting with adaptive classifier assignment.

Reference: Q.-Y. Jiang, L. Huang, Y. Yang, "Rethinking Multimodal Learning from the Perspective of
Mitigating Classification Ability Disproportion", NeurIPS 2025 (arXiv 2502.20120). Official code:
njustkmg/NeurIPS25-AUG @ 841d079, ``train_CREMAD.py`` (``train_audio_video`` lines 33-105, the
assignment 205-228, ``val`` 108-159, defaults 165-166) and ``model/AudioVideo.py`` (``AVGBShareClassifier``
lines 40-104).

Every modality m has a classifier made of its own embedding ``e_m`` and a growing list of learners
``g_m^1 .. g_m^L``, all read out by ONE shared layer ``W`` (``fc_out``)::

    F_m(x) = W relu(e_m(f_m(x))) + sum_{l <= L} W relu(g_m^l(f_m(x)))        # AudioVideo.py:75-104

Per batch the modalities take turns, one optimiser step each (``Turns.turns``); with
``F_m^{<L}`` the classifier without its newest learner and ``F_m^L = W relu(g_m^L(f_m))`` that
learner's share (train_CREMAD.py:52-61)::

    L_m = CE(F_m, y)                                                   if L = 0
    L_m = CE(F_m, y) + CE(F_m^{<L}, y) + CE(F_m^L, y - lambda k)       otherwise (sustained boosting)
          k = y * softmax(F_m^{<L}).detach()                            # the residual the newest learner fits

with ``CE(z, y - lambda k) = CE(z, y) - lambda CE(z, k)`` (soft targets, lambda = 0.5). Each epoch sums
``s_m = sum_i softmax(F_m(x_i))[y_i]`` over the training steps; after epoch 0 and every
``epochs // checks`` epochs (train_CREMAD.py:205-228) the weakest modality w gets a new learner
when the strongest d leads by more than the target ratio::

    s_d / s_w > lam + 0.01   ->   append g_w^{L+1} (Xavier-normal weight, zero bias)

Prediction (train_CREMAD.py:128): ``alpha F_1 + (1 - alpha) F_2`` with alpha = 0.4 (``--merge_alpha``).

Follows the code where it departs from the paper's description:

- **The added learners are not trained.** The SGD optimiser is built once before the first epoch
  (train_CREMAD.py:201) and never told about ``add_layer``'s new ``nn.Linear``; so each learner keeps its
  Xavier-normal initial weights and gradients flow through it into the encoder and into ``W``. Here
  they are frozen likewise (``requires_grad`` off), and kept in the method's state for exact resume.
- ``e_m`` and ``W`` start from Xavier-normal weights and zero biases, as the code's ``weight_init``
  (utils.py:81-84) gives every Linear layer; the encoders keep the model's own initialisation.
- The new learner is added after the epoch's evaluation (train_CREMAD.py:214-228), so the epoch that
  decides it is still evaluated without it: we decide in ``on_epoch_end`` and add at the next epoch's start.

Generalisations:

- **M modalities**: the rule compares the strongest and the weakest modality. For two modalities
  this is the code's ``ratio_a > lam + 0.01 -> video, ratio_a < lam - 0.01 -> audio`` except when
  ``s_v / s_a`` lies in ``(lam + 0.01, 1 / (lam - 0.01)]`` (a band of width 1e-4 at lam = 1), where the
  code waits. The prediction weighs the first modality with ``alpha`` and the others with
  ``(1 - alpha) / (M - 1)`` each. The embeddings map each modality's own feature size to ``hidden``
  (the code's 512 -> 256), so the encoders may differ in size.
- **Classification only**: the residual target is a class distribution.
- The code's ``zero_grad`` under its pinned torch 1.11 kept zeroed (not ``None``) gradients, so in the
  second modality's step the first modality's parameters took a weight-decay-and-momentum step too;
  under torch >= 2.0 (``set_to_none``) they do not, as here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Float
from mmbalance.models.base import MultimodalModel, Output
from mmbalance.training.data import Batch, StrictModel
from mmbalance.training.method import RunContext, Turns
from mmbalance.training.method_parts import num_outputs, true_class_score

__all__ = ["AUGParams", "AUG", "BoostedClassifiers", "boosting_loss", "weakest_to_boost", "merge_weights"]


class AUGParams(StrictModel):
    lam: float = Field(1.0, gt=0)  # target score ratio (--lam)
    margin: float = Field(0.01, ge=0)  # tolerance around it (train_CREMAD.py:222, 225)
    residual_weight: float = Field(
        0.5, ge=0
    )  # lambda of the residual target y - lambda k (train_CREMAD.py:57)
    merge_alpha: float = Field(
        0.4, ge=0, le=1
    )  # the first modality's weight in the prediction (--merge_alpha)
    checks: int = Field(10, ge=1)  # assignment every epochs // checks epochs (train_CREMAD.py:205-208)
    hidden: int = Field(256, ge=1)  # embedding and learner width (AudioVideo.py:48, 68)


class BoostedClassifiers(nn.Module):
    """Per modality the embedding ``e_m`` and the learners ``g_m^l`` (Linear + ReLU each), one shared
    read-out ``W`` (``AVGBShareClassifier.embedding_a/v``, ``additional_layers_a/v``, ``fc_out``)."""

    def __init__(self, dims: dict[str, int], hidden: int, n_out: int) -> None:
        super().__init__()
        self.embedding = nn.ModuleDict({m: nn.Linear(d, hidden) for m, d in dims.items()})
        self.learners = nn.ModuleDict({m: nn.ModuleList() for m in dims})
        self.fc_out = nn.Linear(hidden, n_out)
        for layer in [*self.embedding.values(), self.fc_out]:  # the code's ``weight_init`` (utils.py:81-84)
            nn.init.xavier_normal_(layer.weight)
            nn.init.constant_(layer.bias, 0)

    def add_learner(self, m: str) -> None:
        """``AVGBShareClassifier.add_layer``: a frozen Xavier-normal learner (see the module docstring)."""
        e = self.embedding[m]
        layer = nn.Linear(e.in_features, e.out_features).to(device=e.weight.device, dtype=e.weight.dtype)
        nn.init.xavier_normal_(layer.weight)
        nn.init.constant_(layer.bias, 0)
        layer.requires_grad_(False)
        self.learners[m].append(layer)

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Loads a state with as many learners per modality as it holds: the selected epoch's may have
        fewer than the last, a resumed run's more than a fresh build."""
        with torch.random.fork_rng(devices=[]):  # the loaded weights replace the initial ones: draw nothing
            for m, layers in self.learners.items():
                n = 0
                while f"learners.{m}.{n}.weight" in state:
                    n += 1
                while len(layers) > n:
                    del layers[len(layers) - 1]
                while len(layers) < n:
                    self.add_learner(m)
        return super().load_state_dict(state, strict, assign)

    def forward(self, m: str, f: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``(F_m, F_m^{<L}, F_m^L)``, the last two None without learners (``classfier``)."""
        total = self.fc_out(torch.relu(self.embedding[m](f)))
        previous = last = None
        for g in self.learners[m]:
            previous, last = total, self.fc_out(torch.relu(g(f)))
            total = total + last
        return total, previous, last


def boosting_loss(
    total: Tensor, previous: Tensor | None, last: Tensor | None, y: Tensor, lam: float
) -> Tensor:
    """``L_m`` of the module docstring (train_CREMAD.py:53-57)."""
    loss = F.cross_entropy(total, y)
    if last is None:
        return loss
    k = F.one_hot(y, total.shape[1]).to(total.dtype) * previous.detach().softmax(dim=1)
    return loss + F.cross_entropy(previous, y) + F.cross_entropy(last, y) - lam * F.cross_entropy(last, k)


def weakest_to_boost(scores: dict[str, float], lam: float, margin: float) -> str | None:
    """The modality that gets a new learner: the weakest, if the strongest leads by more than
    ``lam + margin`` (train_CREMAD.py:220-228); None otherwise."""
    strong, weak = max(scores, key=scores.get), min(scores, key=scores.get)
    return weak if scores[strong] / scores[weak] > lam + margin else None


def merge_weights(modalities: Sequence[str], alpha: float) -> dict[str, float]:
    """``alpha`` for the first modality, ``(1 - alpha) / (M - 1)`` for each other (train_CREMAD.py:128)."""
    rest = (1 - alpha) / (len(modalities) - 1)
    return {m: alpha if i == 0 else rest for i, m in enumerate(modalities)}


@METHODS.register
class AUG(Turns):
    name = "aug"
    Params = AUGParams
    search_space = {
        "residual_weight": Float(
            0.1, 1.0, source="train_CREMAD.py:57 0.5, its comment's 0.2 (no published grid)"
        ),
        "merge_alpha": Float(
            0.2, 0.8, source="train_CREMAD.py --merge_alpha 0.4, train_audio_video's 0.5 (no grid)"
        ),
        "lam": Float(1.0, 1.5, source="train_CREMAD.py --lam 1.0 (no published grid)"),
    }
    tasks = frozenset({"classification"})
    reference = "Jiang, Huang & Yang, NeurIPS 2025 (AUG); njustkmg/NeurIPS25-AUG train_CREMAD.py"
    unsupported = "aug boosts classifiers towards a residual class distribution; a {kind} task has none"

    # the learners' count is in ``classifiers``' own state (``BoostedClassifiers.load_state_dict``)
    state_attrs = ("pending", "scores", "ratio")

    def build(self, ctx: RunContext) -> None:
        model = ctx.model
        self.classifiers = BoostedClassifiers(model.feature_dims(), self.p.hidden, num_outputs(model))
        self.merge = merge_weights(ctx.modalities, self.p.merge_alpha)
        self.scores = {m: 0.0 for m in ctx.modalities}
        self.ratio = 1.0
        self.pending: str | None = None  # the modality to boost when the next epoch starts

    def turns(self, ctx: RunContext) -> Sequence[str]:
        return ctx.modalities

    def forward(self, model: MultimodalModel, batch: Batch, ctx: RunContext) -> Output:
        if ctx.training and ctx.turn is not None:  # modality m's step: its encoder and classifier
            m = ctx.turn
            f = model.encoders[m](batch.inputs[m])
            total, previous, last = self.classifiers(m, f)
            aux = {"previous": previous, "last": last} if last is not None else {}
            return Output(total, {m: f}, f, aux=aux)
        features = model.encode(batch.inputs)
        logits = {m: self.classifiers(m, f)[0] for m, f in features.items()}
        pred = sum(self.merge[m] * z for m, z in logits.items())
        return Output(pred, features, torch.cat(list(features.values()), dim=1), modality_logits=logits)

    def loss(self, out: Output, batch: Batch, ctx: RunContext) -> Tensor:
        if not (ctx.training and ctx.turn is not None):
            return ctx.task_loss(out.pred, batch.target)
        self.scores[ctx.turn] += true_class_score(out.pred.detach(), batch.target).item()
        previous, last = out.aux.get("previous"), out.aux.get("last")
        return boosting_loss(out.pred, previous, last, batch.target, self.p.residual_weight)

    def on_epoch_start(self, ctx: RunContext) -> None:
        if self.pending is not None:
            self.classifiers.add_learner(self.pending)
        self.pending = None
        self.scores = {m: 0.0 for m in ctx.modalities}

    def on_epoch_end(self, ctx: RunContext) -> None:
        every = max(1, ctx.epochs // self.p.checks)
        strong, weak = max(self.scores.values()), min(self.scores.values())
        self.ratio = strong / weak if weak > 0 else float("inf")
        if (ctx.epoch + 1) % every == 0 or ctx.epoch == 0:
            self.pending = weakest_to_boost(self.scores, self.p.lam, self.p.margin)

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        counts = {f"learners/{m}": float(len(ls)) for m, ls in self.classifiers.learners.items()}
        return {"score_ratio": self.ratio, **counts}
