"""Search spaces for ``mmbalance tune``: what a method lets the tuner change, declared next to its Params.

A method declares ``search_space: ClassVar[dict[str, Dim]]``, keyed by ``method_params`` field names,
each dimension citing the paper's or the official code's range or grid where one exists (``source``).
Every method is also tuned over the one shared optimiser space ``OPTIM_SPACE`` (keys are spec paths),
so joint training and the unimodal references get the same budget as the balancing methods.

Dimensions: ``Float`` and ``Int`` ranges (``log`` for scale parameters), ``Choice`` for grids and
switches, and ``Epochs`` for schedule parameters (warm-ups, stage lengths, re-initialisation epochs)
given as fractions of the run's epochs, so one declaration fits a 12-epoch suite and a 100-epoch paper
run alike.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Protocol

__all__ = ["Float", "Int", "Choice", "Epochs", "Dim", "OPTIM_SPACE", "space_hash", "sample", "describe"]


@dataclass(frozen=True)
class Float:
    low: float
    high: float
    log: bool = False
    source: str = ""  # the paper's / official code's range or grid this is read from


@dataclass(frozen=True)
class Int:
    low: int
    high: int
    log: bool = False
    source: str = ""


@dataclass(frozen=True)
class Choice:
    choices: tuple[Any, ...]
    source: str = ""


@dataclass(frozen=True)
class Epochs:
    """An epoch count between ``low`` and ``high`` times the run's epochs (rounded; at least ``minimum``)."""

    low: float
    high: float
    minimum: int = 0
    source: str = ""

    def bounds(self, epochs: int) -> tuple[int, int]:
        lo = max(self.minimum, math.floor(self.low * epochs + 0.5))
        hi = max(lo, min(epochs - 1, math.floor(self.high * epochs + 0.5)))
        return lo, hi


Dim = Float | Int | Choice | Epochs

# The shared optimiser space. Learning rate: the suite's SGD default (0.05) sits in the middle of a
# log range of 40x; the official codes train their (larger) models with SGD at 1e-3 (OGM-GE, PMR:
# ``--learning_rate 0.001``) to 1e-2, which small MLPs on standardised features outgrow. Weight decay:
# the official 1e-4 (OGM-GE, PMR, AGM ``main.py``) in a log range of 100x, as DomainBed's random search
# (Gulrajani and Lopez-Paz, ICLR 2021, Table 6: 10^U(-6, -2)) narrowed to our runs' length.
OPTIM_SPACE: dict[str, Dim] = {
    "optim.lr": Float(0.005, 0.2, log=True, source="suite default 0.05; official SGD 1e-3 (OGM-GE, PMR)"),
    "optim.weight_decay": Float(1e-5, 1e-3, log=True, source="official 1e-4 (OGM-GE, PMR, AGM); DomainBed"),
}


class _Trial(Protocol):  # the part of ``optuna.Trial`` used here
    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...
    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int: ...
    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


def sample(trial: _Trial, name: str, dim: Dim, epochs: int) -> Any:
    """One value of ``dim`` from an Optuna trial (``epochs``: the run's, for ``Epochs``)."""
    if isinstance(dim, Float):
        return trial.suggest_float(name, dim.low, dim.high, log=dim.log)
    if isinstance(dim, Int):
        return trial.suggest_int(name, dim.low, dim.high, log=dim.log)
    if isinstance(dim, Epochs):
        return trial.suggest_int(name, *dim.bounds(epochs))
    # Optuna stores categorical choices as JSON scalars: lists and dicts go through their JSON text.
    encoded = [json.dumps(c, sort_keys=True) if isinstance(c, list | dict) else c for c in dim.choices]
    value = trial.suggest_categorical(name, encoded)
    return json.loads(value) if isinstance(value, str) and value[:1] in "[{" else value


def describe(dim: Dim) -> dict[str, Any]:
    """A dimension as plain data (for the tuned file, ``space_hash`` and ``mmbalance methods``)."""
    return {"kind": type(dim).__name__.lower(), **asdict(dim)}


def space_hash(space: dict[str, Dim]) -> str:
    """16-hex hash of a space's dimensions (sources excluded: a citation fix is not a new space)."""
    blob = {k: {f: v for f, v in describe(d).items() if f != "source"} for k, d in sorted(space.items())}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=list).encode()).hexdigest()[:16]
