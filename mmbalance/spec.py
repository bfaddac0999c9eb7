"""Run specification: one pydantic model, validated before anything runs.

Unknown keys, wrong types and unknown method/dataset names are errors that name the field
(and list the valid choices). ``method_params``, ``dataset_params`` and ``model_params`` are
validated by the method's / adapter's own ``Params`` models and stored with defaults filled in,
so that the canonical form (and hence ``run_id``) does not depend on how a spec was written.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, PositiveInt, ValidationError, model_validator

import mmbalance
from mmbalance.core import StrictModel
from mmbalance.registry import DATASETS, METHODS, UnknownNameError


class SpecError(ValueError):
    """An invalid run spec or suite file; the message names the field."""


class OptimSpec(StrictModel):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(1e-2, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only
    weight_decay: float = Field(1e-4, ge=0)
    clip_grad_norm: float | None = Field(None, gt=0)  # CGGM clips at 0.8


class ScheduleSpec(StrictModel):
    name: Literal["none", "step", "cosine", "plateau"] = "none"
    step_size: PositiveInt = 30  # step: decay every step_size epochs
    gamma: float = Field(0.1, gt=0, le=1)  # step decay / plateau factor
    patience: PositiveInt = 10  # plateau (on the validation loss, as the CGGM code)
    warmup_epochs: int = Field(0, ge=0)  # cosine: linear warm-up
    min_lr: float = Field(0.0, ge=0)  # cosine: final lr


class TunedSpec(StrictModel):
    """What chose a run's settings under the tuned protocol (``mmbalance tune``, ``benchmarks/tuned/``):
    the same budget of trials per (block, method) over the shared optimiser space and the method's own."""

    budget: PositiveInt  # trials per (block, method)
    tuning_seeds: list[int]  # the seeds the trials were averaged over (disjoint from the reported ones)
    shared_space: str  # search_space.space_hash(OPTIM_SPACE)
    method_space: str  # search_space.space_hash(the method's search_space)
    chosen: list[str] = []  # the spec paths tuning set (optim.lr, method_params.alpha, ...)


# Fields whose default is left out of the canonical spec, so adding them kept every earlier run id.
OMITTED_AT_DEFAULT = {"tuned": None, "evaluate_test": True}


class RunSpec(StrictModel):
    dataset: str = "synthetic"
    dataset_params: dict[str, Any] = {}
    model_params: dict[str, Any] = {}
    method: str = "joint"
    method_params: dict[str, Any] = {}
    optim: OptimSpec = OptimSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 64
    seed: int = Field(0, ge=0, lt=2**32)  # numpy's seed range
    probe_every: int = Field(10, ge=0)  # log probes every k training steps; 0 turns probes off
    tuned: TunedSpec | None = None  # None: the default protocol (the method's own defaults)
    # False for tuning trials: the test split is never built, read or fingerprinted, only validation.
    evaluate_test: bool = True

    @model_validator(mode="after")
    def _params_valid(self) -> RunSpec:
        # Normalise nested params through their owners' pydantic models (fills in defaults).
        method_cls = METHODS.get(self.method)
        dataset_cls = DATASETS.get(self.dataset)
        for fld, model in (
            ("method_params", method_cls.Params),
            ("dataset_params", dataset_cls.Params),
            ("model_params", dataset_cls.ModelParams),
        ):
            try:
                normalised = model.model_validate(getattr(self, fld)).model_dump(mode="json")
            except ValidationError as e:
                raise ValueError(_format_validation(e, prefix=fld)) from None
            object.__setattr__(self, fld, normalised)
        return self

    def canonical(self) -> dict[str, Any]:
        doc = self.model_dump(mode="json")
        return {k: v for k, v in doc.items() if k not in OMITTED_AT_DEFAULT or v != OMITTED_AT_DEFAULT[k]}

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits this run builds and reads."""
        return ("train", "valid", "test") if self.evaluate_test else ("train", "valid")

    def run_id(self, data_fingerprint: str = "") -> str:
        """Hash of the canonical spec, the data fingerprint and the suite version."""
        blob = json.dumps(
            {"spec": self.canonical(), "data": data_fingerprint, "version": mmbalance.__version__},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _format_validation(e: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(x) for x in (prefix, *err["loc"]) if x != "")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        inp = err.get("input")
        shown = (
            ""
            if err["type"] in ("extra_forbidden", "missing") or isinstance(inp, dict)
            else f" (got {_short_repr(inp)})"
        )
        lines.append(f"  {loc or '<spec>'}: {msg}{shown}")
    return "\n".join(lines)


def _short_repr(value: Any, limit: int = 60) -> str:
    text = (
        repr(value)
        if not isinstance(value, int) or abs(value) < 10**limit
        else f"a {len(str(value))}-digit number"
    )
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_spec(data: dict[str, Any]) -> RunSpec:
    """Build a ``RunSpec`` or raise ``SpecError`` with one line per bad field."""
    try:
        return RunSpec.model_validate(data)
    except UnknownNameError as e:
        raise SpecError(f"invalid run spec:\n  {e}") from None
    except ValidationError as e:
        body = _format_validation(e)
        for err in e.errors():  # errors raised inside our validator carry their own formatted lines
            if err["type"] == "value_error" and not err["loc"]:
                body = str(err["ctx"]["error"])
        raise SpecError(f"invalid run spec:\n{body}") from None


def parse_set(assignments: list[str]) -> dict[str, Any]:
    """``["optim.lr=0.1", "method_params.alpha=0.5"]`` -> nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for a in assignments:
        key, sep, raw = a.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {a!r}: expected KEY=VALUE (e.g. optim.lr=0.01)")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as e:
            raise SpecError(f"--set {a!r}: value is not valid YAML: {e}") from None
        except ValueError as e:  # e.g. an integer longer than Python converts (4300 digits)
            raise SpecError(f"--set {_short_repr(a)}: {_short_repr(str(e), 120)}") from None
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(f"--set {a!r}: {part!r} is set both as a value and as a section")
        node[leaf] = value
    return out


PRESETS_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "presets"
# The preset a single run of a dataset gets when none is named: the synthetic data's is the default suite's
# settings, so that `mmbalance run --dataset synthetic` learns what the suite's tables show.
DEFAULT_PRESETS = {"synthetic": "synthetic"}


def default_preset(*fragments: dict[str, Any]) -> dict[str, Any]:
    """``{"preset": name}`` for the dataset the fragments name (default: synthetic) when none names a
    preset; ``{}`` otherwise. Place it lowest in ``compose``."""
    if any("preset" in f for f in fragments):
        return {}
    dataset = next((f["dataset"] for f in reversed(fragments) if "dataset" in f), RunSpec().dataset)
    return {"preset": DEFAULT_PRESETS[dataset]} if dataset in DEFAULT_PRESETS else {}


def load_preset(name: str) -> dict[str, Any]:
    """A preset by name (``benchmarks/presets/<name>.yaml``) or by path (a ``.yaml`` file)."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
        raise SpecError(f"unknown preset {name!r} ({path} does not exist); known presets: {', '.join(known)}")
    return load_yaml(path)


def compose(*fragments: dict[str, Any]) -> dict[str, Any]:
    """One spec document from spec fragments given lowest precedence first. The one precedence of
    every source of a setting (README, "Where a setting comes from"):

        code defaults < preset < suite ``base`` < dataset entry < method entry < ``--set``
        one run:      code defaults < preset < ``--spec`` file < --dataset/--method/--seed < ``--set``

    ``preset: NAME`` may appear in any fragment (the last one named wins) and always sits lowest: a
    preset holds a dataset's paper defaults, which a suite or a command line adjusts. A fragment's
    ``method_overrides: {method: {fields}}`` (a preset's CGGM rho and lambda) applies just above that
    fragment, to runs of that method only. Nested sections merge key by key.
    """
    layers = [dict(f) for f in fragments]
    presets = [layer.pop("preset") for layer in layers if "preset" in layer]
    if presets:
        if not isinstance(presets[-1], str):
            raise SpecError(f"preset: expected a name or a .yaml path, got {presets[-1]!r}")
        layers.insert(0, load_preset(presets[-1]))
    method = next((layer["method"] for layer in reversed(layers) if "method" in layer), "joint")
    out: dict[str, Any] = {}
    for layer in layers:
        overrides = layer.pop("method_overrides", None) or {}
        if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
            raise SpecError("method_overrides: expected {method name: {spec fields}}")
        if unknown := sorted(set(overrides) - set(METHODS.names())):
            raise SpecError(f"method_overrides: unknown method(s) {', '.join(unknown)}; valid choices: "
                            f"{', '.join(METHODS.names())}")  # fmt: skip
        out = deep_merge(deep_merge(out, layer), overrides.get(method, {}))
    return out


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise SpecError(
            f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})"
        ) from None
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    except ValueError as e:  # an integer longer than Python converts
        raise SpecError(f"{path}: {_short_repr(str(e), 120)}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data
