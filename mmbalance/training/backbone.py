"""Backbone imbalance: one modality's encoder starts pretrained, the others from scratch (the spec's
``pretrained``; any dataset, any method).

Zheng et al., "MLLMs are deeply affected by modality bias" (2025) name imbalanced backbone capabilities
(a strong pretrained encoder beside weak ones) as one of three causes of modality bias; the synthetic
scenarios model the first cause, the data. Here the data may be balanced and the asymmetry is where the
encoders start: the encoder of ``pretrained.modality`` is the one of a unimodal run (method ``unimodal``)
on the same dataset, split and seed, trained ``pretrained.epochs`` epochs with ``pretrained.optim``
(and the run's batch size), taken at its best validation epoch; then frozen (``freeze: true``) or
fine-tuned with the rest. That run is an ordinary recorded run (``runs/<id>``, reused when it exists),
and it depends on nothing of the method or the method's tuned settings, so every method of a block
starts from the same backbone. A run whose model lacks the modality (``unimodal`` on another one) takes
nothing from it. Frozen parameters are left out of the optimiser (``Method.param_groups`` keeps
``requires_grad`` ones); a method that selects that encoder's parameters (``model.encoder_parameters``:
OGM-GE, CGGM, MSLR, ...) stops with ``encoder of modality ... has no trainable parameters``, so the frozen
variant serves the methods that leave encoders alone, and fine-tuning is the default.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mmbalance.common.spec import RunSpec, SpecError, validate_spec
from mmbalance.models.base import MultimodalModel
from mmbalance.training.data import TaskInfo

__all__ = ["encoder_state", "load_encoder", "pretrain_spec", "pretrained_encoder"]


def pretrain_spec(spec: RunSpec) -> RunSpec:
    """The unimodal run whose encoder ``spec`` starts from."""
    p = spec.pretrained
    doc: dict[str, Any] = {
        "dataset": spec.dataset, "dataset_params": spec.dataset_params, "model_params": spec.model_params,
        "method": "unimodal", "method_params": {"modality": p.modality}, "optim": p.optim.model_dump(),
        "epochs": p.epochs, "batch_size": spec.batch_size, "seed": spec.seed, "probe_every": 0,
        "evaluate_test": spec.evaluate_test,
    }  # fmt: skip
    return validate_spec(doc)


def pretrained_encoder(
    spec: RunSpec, task: TaskInfo, train: Callable[[RunSpec], Any]
) -> dict[str, torch.Tensor]:
    """The backbone's weights for ``spec``: its unimodal run trained (or reused) through ``train``
    (``runner.train`` with the caller's options), waiting while another worker trains it."""
    m = spec.pretrained.modality
    if m not in task.modalities:
        raise SpecError(
            f"pretrained.modality {m!r}: not a modality of {spec.dataset} ({', '.join(task.modalities)})"
        )
    pre = train(pretrain_spec(spec))
    while pre.status == "running elsewhere":  # another method of the block started the same backbone
        time.sleep(2)
        pre = train(pretrain_spec(spec))
    if pre.status not in ("done", "skipped"):
        raise SpecError(
            f"pretrained.modality {m!r}: its unimodal run {pre.run_id} {pre.status}: {pre.reason}"
        )
    return encoder_state(pre.path, m)


def encoder_state(run_dir: Path, modality: str) -> dict[str, torch.Tensor]:
    """The selected epoch's weights of ``modality``'s encoder in a finished run (its ``best.pt``)."""
    state = torch.load(Path(run_dir) / "best.pt", map_location="cpu", weights_only=False)["model"]
    prefix = f"encoders.{modality}."
    out = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    if not out:
        raise ValueError(f"{run_dir}/best.pt: no weights of the {modality!r} encoder")
    return out


def load_encoder(model: MultimodalModel, modality: str, state: dict[str, torch.Tensor], freeze: bool) -> None:
    """Load ``state`` into ``model``'s encoder of ``modality`` (if it has one); ``freeze``: no gradient."""
    if modality not in model.modalities:
        return
    encoder = model.encoders[modality]
    encoder.load_state_dict(state)
    if freeze:
        encoder.requires_grad_(False)
