"""Checkpoints: ``checkpoint.pt`` after every epoch (exact resume) and ``best.pt`` of the selected epoch.

``Checkpoints`` is the ``Trainer``'s part that writes and reads them. ``save_checkpoint`` writes the
model, optimiser, scheduler, method, probes, loss-scaler and RNG states with the records so far;
``try_resume`` loads them into a freshly built ``Trainer`` so that the resumed run ends with the numbers
of an uninterrupted one. ``save_selected`` / ``load_selected``: the model and method state that
best-validation selection picked, what ``modality_eval`` measures. A file of another format, or one
torch cannot read, is refused with a one-line message naming it.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmbalance.common.records import DamagedRecordError, RunDir, atomic_write_bytes
from mmbalance.training.epoch_records import write_epoch_records
from mmbalance.training.method import Method
from mmbalance.training.probes import Probes

__all__ = ["CHECKPOINT_FORMAT", "OldCheckpointError", "Checkpoints"]

# Version of checkpoint.pt and best.pt: 2 since methods' own parts are saved by attribute name.
CHECKPOINT_FORMAT = 2
RESTART = "rerun with --restart to discard this run's checkpoint and records and train it from epoch 0"


class OldCheckpointError(DamagedRecordError):
    """A checkpoint written by an earlier format of this suite."""


def check_format(f: Path, state: dict[str, Any], remedy: str) -> None:
    found = state.get("format", 1) if isinstance(state, dict) else None
    if found != CHECKPOINT_FORMAT:
        raise OldCheckpointError(
            f"{f}: checkpoint format {found}, this version reads format {CHECKPOINT_FORMAT}; {remedy}"
        )


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpoints:
    """What the ``Trainer`` holds that a checkpoint saves and restores."""

    rd: RunDir
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    method: Method
    probes: Probes | None
    scaler: torch.amp.GradScaler
    history: list[dict[str, Any]]
    curves: list[dict[str, Any]]
    start_epoch: int
    next_step: int
    steps_per_epoch: int

    def save_checkpoint(self, epoch: int) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "method": self.method.state_dict(),
            "probes": self.probes.state() if self.probes is not None else None,
            "rng": rng_state(),
            "scaler": self.scaler.state_dict(),
            "history": self.history,
            "curves": self.curves,
            "next_step": self.next_step,
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.rd.file("checkpoint.pt"), buf.getvalue())

    def save_selected(self, epoch: int) -> None:
        """``best.pt``: the model and method state of the epoch best-validation selection picks so far,
        what ``modality_eval`` measures at the end and ``mmbalance evaluate`` reloads later."""
        buf = io.BytesIO()
        torch.save(
            {
                "format": CHECKPOINT_FORMAT,
                "epoch": epoch,
                "model": self.model.state_dict(),
                "method": self.method.state_dict(),
            },
            buf,
        )
        atomic_write_bytes(self.rd.file("best.pt"), buf.getvalue())

    def load_selected(self, epoch: int) -> None:
        """Load the selected epoch's state: ``best.pt``, or the last checkpoint when that is the same
        epoch (runs recorded before ``best.pt`` existed)."""
        for name in ("best.pt", "checkpoint.pt"):
            f = self.rd.file(name)
            if f.exists():
                try:
                    state = torch.load(f, map_location=self.device, weights_only=False)
                    if state["epoch"] != epoch:
                        continue
                    check_format(f, state, "the run must be trained again to measure it")
                    self.model.load_state_dict(state["model"])
                    self.method.load_state_dict(state["method"])
                except OldCheckpointError:
                    raise
                except Exception as e:  # truncated, zeros, a foreign file: whatever torch or the dicts raise
                    detail = " ".join(str(e).split())[:160]
                    raise DamagedRecordError(f"{f}: damaged ({type(e).__name__}: {detail}); "
                                             "the run must be trained again to measure it") from None  # fmt: skip
                return
        raise FileNotFoundError(
            f"{self.rd.path}: no best.pt or checkpoint.pt of the selected epoch {epoch}; "
            "the run must be trained again to measure its selected model"
        )

    def try_resume(self) -> None:
        """Load the last epoch checkpoint, if any, and rewrite the records from it: a run killed between
        its checkpoint and its records (or after its last epoch) resumes with records that match."""
        f = self.rd.file("checkpoint.pt")
        if not f.exists():
            return
        try:
            state = torch.load(f, map_location=self.device, weights_only=False)
            check_format(f, state, RESTART)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            self.method.load_state_dict(state["method"])
            if self.probes is not None:
                self.probes.load(state["probes"])
            set_rng_state(state["rng"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.history, self.curves = state["history"], state["curves"]
            self.start_epoch = state["epoch"] + 1
            self.next_step = state.get("next_step", self.start_epoch * self.steps_per_epoch)
        except OldCheckpointError:
            raise
        except Exception as e:  # truncated or foreign file: whatever torch or the state dicts raise
            detail = " ".join(str(e).split())[:160]
            raise DamagedRecordError(
                f"{f}: damaged checkpoint, cannot resume ({type(e).__name__}: {detail}); {RESTART}"
            ) from None
        write_epoch_records(self.rd, self.history, self.curves)
