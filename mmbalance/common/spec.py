"""Run specification: one pydantic model, validated before anything runs.

Unknown keys, wrong types and unknown method/dataset names are errors that name the field
(and list the valid choices). ``method_params``, ``dataset_params`` and ``model_params`` are
validated by the method's / adapter's own ``Params`` models and stored with defaults filled in,
so that the canonical form (and hence ``run_id``) does not depend on how a spec was written.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import reprlib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    PositiveInt,
    PrivateAttr,
    StrictInt,
    ValidationError,
    ValidationInfo,
    model_validator,
)

import mmbalance
from mmbalance.common.core import StrictModel
from mmbalance.common.registry import DATASETS, METHODS, UnknownNameError
from mmbalance.common.safe_load import DocumentError, load_yaml_file, parse_yaml


class SpecError(ValueError):
    """An invalid run spec or suite file; the message names the field."""


# Bounds of what the code handles (issue 30): a number past them is refused before anything is written,
# instead of overflowing a progress bar, an optimiser or an allocation hours later.
MAX_EPOCHS = 100_000
MAX_BATCH = 1 << 20
MAX_LR = 10.0
MAX_PARAM_INT = 2**32 - 1  # any integer in method/dataset/model params: numpy seeds; no size is near it


class OptimSpec(StrictModel):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(1e-2, gt=0, le=MAX_LR)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only
    weight_decay: float = Field(1e-4, ge=0, le=1)
    clip_grad_norm: float | None = Field(None, gt=0, le=1e6)  # CGGM clips at 0.8


class ScheduleSpec(StrictModel):
    name: Literal["none", "step", "cosine", "plateau"] = "none"
    step_size: PositiveInt = Field(30, le=MAX_EPOCHS)  # step: decay every step_size epochs
    gamma: float = Field(0.1, gt=0, le=1)  # step decay / plateau factor
    patience: PositiveInt = Field(10, le=MAX_EPOCHS)  # plateau (on the validation loss, as the CGGM code)
    warmup_epochs: int = Field(0, ge=0, le=MAX_EPOCHS)  # cosine: linear warm-up
    min_lr: float = Field(0.0, ge=0, le=MAX_LR)  # cosine: final lr


class TunedSpec(StrictModel):
    """What chose a run's settings under the tuned protocol (``mmbalance tune``, ``benchmarks/tuned/``):
    the same budget of trials per (block, method) over the shared optimiser space and the method's own."""

    budget: PositiveInt  # trials per (block, method)
    tuning_seeds: list[int]  # the seeds the trials were averaged over (disjoint from the reported ones)
    shared_space: str  # search_space.space_hash(OPTIM_SPACE)
    method_space: str  # search_space.space_hash(the method's search_space)
    chosen: list[str] = []  # the spec paths tuning set (optim.lr, method_params.alpha, ...)


# Fields whose default is left out of the canonical spec, so adding them kept every earlier run id.
OMITTED_AT_DEFAULT = {"tuned": None, "evaluate_test": True, "train_missing": False, "pretrained": None}


class PretrainSpec(StrictModel):
    """Backbone imbalance (``mmbalance/training/backbone.py``): ``modality``'s encoder starts from a unimodal run of
    ``epochs`` epochs with ``optim`` on the same data and seed; frozen or fine-tuned with the rest."""

    modality: str
    freeze: bool = False
    epochs: StrictInt = Field(12, ge=1, le=MAX_EPOCHS)
    optim: OptimSpec = OptimSpec(lr=0.05)  # the synthetic preset's SGD


class RunSpec(StrictModel):
    dataset: str = "synthetic"
    dataset_params: dict[str, Any] = {}
    model_params: dict[str, Any] = {}
    method: str = "joint"
    method_params: dict[str, Any] = {}
    optim: OptimSpec = OptimSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    # Integers only (StrictInt): YAML's `true` is not seed 1.
    epochs: StrictInt = Field(10, ge=1, le=MAX_EPOCHS)
    batch_size: StrictInt = Field(64, ge=1, le=MAX_BATCH)
    seed: StrictInt = Field(0, ge=0, lt=2**32)  # numpy's seed range
    probe_every: StrictInt = Field(10, ge=0, le=MAX_PARAM_INT)  # log probes every k steps; 0: no probes
    tuned: TunedSpec | None = None  # None: the default protocol (the method's own defaults)
    # False for tuning trials: the test split is never built, read or fingerprinted, only validation.
    evaluate_test: bool = True
    # LNLN's random missing rates in training (mmbalance/training/incomplete.py), for any method: off by default.
    train_missing: bool = False
    pretrained: PretrainSpec | None = None  # one modality's encoder starts pretrained (backbone imbalance)
    # The three params as their owners' pydantic models, built once here (the factories read them).
    _typed: dict[str, StrictModel] = PrivateAttr(default_factory=dict)

    def typed(self, field: str) -> StrictModel:
        """``method_params``, ``dataset_params`` or ``model_params`` as the method's / dataset's model."""
        return self._typed[field]

    @model_validator(mode="after")
    def _params_valid(self, info: ValidationInfo) -> RunSpec:
        if info.context and info.context.get("light"):  # check_spec_light: names and bounds, no imports
            for registry, name in ((METHODS, self.method), (DATASETS, self.dataset)):
                if name not in registry.names():
                    registry.get(name)  # raises UnknownNameError listing the choices, imports nothing
            fields = ("method_params", "dataset_params", "model_params")
            if too_big := [line for f in fields for line in _too_big(getattr(self, f), f)]:
                raise ValueError("\n".join(too_big))
            return self
        # Normalise nested params through their owners' pydantic models (fills in defaults).
        method_cls = METHODS.get(self.method)
        dataset_cls = DATASETS.get(self.dataset)
        for fld, model in (
            ("method_params", method_cls.Params),
            ("dataset_params", dataset_cls.Params),
            ("model_params", dataset_cls.ModelParams),
        ):
            try:
                typed = model.model_validate(getattr(self, fld))
            except ValidationError as e:
                raise ValueError(_format_validation(e, prefix=fld, model=model)) from None
            normalised = typed.model_dump(mode="json")
            if too_big := _too_big(normalised, fld):
                raise ValueError("\n".join(too_big))
            object.__setattr__(self, fld, normalised)
            self._typed[fld] = typed
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


def _too_big(value: Any, where: str) -> list[str]:
    """One line per integer in ``value`` (nested dicts and lists) beyond ``MAX_PARAM_INT``."""
    if isinstance(value, dict):
        return [line for k, v in value.items() for line in _too_big(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [line for i, v in enumerate(value) for line in _too_big(v, f"{where}[{i}]")]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_PARAM_INT:
        return [f"  {where}: {_short_repr(value)} is beyond {MAX_PARAM_INT}, the largest the code handles"]
    return []


def _format_validation(e: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """One line per error; an unknown field lists the valid ones of ``model`` (where given) and the nearest."""
    lines = []
    for err in e.errors():
        loc = ".".join(str(x) for x in (prefix, *err["loc"]) if x != "")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field" + _valid_fields(model, err["loc"])
        inp = err.get("input")
        shown = (
            ""
            if err["type"] in ("extra_forbidden", "missing") or isinstance(inp, dict)
            else f" (got {_short_repr(inp)})"
        )
        lines.append(f"  {loc or '<spec>'}: {msg}{shown}")
    return "\n".join(lines)


def _valid_fields(model: type[BaseModel] | None, loc: tuple) -> str:
    """``; did you mean 'rho'? valid: lam, rho`` for an unknown field at ``loc`` of ``model`` ("" when unknown)."""
    for part in loc[:-1]:  # down through nested sections (optim.lrr -> OptimSpec)
        field = model.model_fields.get(str(part)) if model is not None else None
        annotation = field.annotation if field is not None else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    if model is None:
        return ""
    valid = list(model.model_fields)
    if not valid:
        return "; this section takes no fields"
    near = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
    return (f"; did you mean {near[0]!r}?" if near else "") + f" valid: {', '.join(valid)}"


# A bounded repr: a value that aliases expanded (or a huge list) is shown by its first items only.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 3, 6, 6, 60, 60


def _short_repr(value: Any, limit: int = 60) -> str:
    text = (
        _REPR.repr(value)
        if not isinstance(value, int) or abs(value) < 10**limit
        else f"a {_digits(value)}-digit number"
    )
    return _clip(text, limit)


def _digits(value: int) -> int:
    """Decimal digits of ``value`` without ``str()``, which refuses more than 4300 of them."""
    n = max(1, int(abs(value).bit_length() * 0.30103))  # log10(2): exact or one short
    return n + (abs(value) >= 10**n)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_spec(data: dict[str, Any]) -> RunSpec:
    """Build a ``RunSpec`` or raise ``SpecError`` with one line per bad field."""
    try:
        return RunSpec.model_validate(data)
    except UnknownNameError as e:
        raise SpecError(f"invalid run spec:\n  {e}") from None
    except ValidationError as e:
        body = _format_validation(e, model=RunSpec)
        for err in e.errors():  # errors raised inside our validator carry their own formatted lines
            if err["type"] == "value_error" and not err["loc"]:
                body = str(err["ctx"]["error"])
        raise SpecError(f"invalid run spec:\n{body}") from None


def check_spec_light(doc: dict[str, Any], where: str = "spec") -> list[str]:
    """Why ``doc`` is not a spec that ``run`` would accept and record as it is: every field's type and
    bound, the method and dataset names, every field present (canonical). The method's and dataset's
    own params models are not applied (they import torch); ``leaderboard verify`` applies them."""
    try:
        spec = RunSpec.model_validate(doc, context={"light": True})
    except UnknownNameError as e:
        return [f"{where}: {e}"]
    except ValidationError as e:
        lines = _format_validation(e, prefix=where, model=RunSpec).splitlines()
        lines = [
            str(err["ctx"]["error"]) for err in e.errors() if err["type"] == "value_error" and not err["loc"]
        ] or lines
        return [line.strip() for text in lines for line in text.splitlines()]
    canonical = spec.canonical()  # the fields at their defaults that it leaves out need not be there
    missing = sorted(set(canonical) - set(doc))
    if missing:
        return [f"{where}: missing field(s) {', '.join(missing)} (not the canonical spec `run` records)"]
    return []


def parse_set(assignments: list[str]) -> dict[str, Any]:
    """``["optim.lr=0.1", "method_params.alpha=0.5"]`` -> nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for a in assignments:
        key, sep, raw = a.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {a!r}: expected KEY=VALUE (e.g. optim.lr=0.01)")
        try:
            value = parse_yaml(raw, f"--set {_short_repr(a)}") if raw else ""
        except DocumentError as e:  # not YAML, an alias bomb, an integer longer than Python converts
            raise SpecError(_clip(str(e), 200)) from None
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(f"--set {a!r}: {part!r} is set both as a value and as a section")
        node[leaf] = value
    return out


PRESETS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "presets"
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
    is_path = name.endswith((".yaml", ".yml"))
    path = Path(name) if is_path else PRESETS_DIR / f"{name}.yaml"
    if not is_path and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):  # no ../ out of presets
        raise SpecError(
            f"preset {_short_repr(name)}: a name is letters, digits, '.', '_' or '-' (or give a .yaml path)"
        )
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
    """A spec, suite or preset file: bounded (``safe_load``: no alias bomb, no deep nesting), a mapping."""
    try:
        data = load_yaml_file(path)
    except DocumentError as e:
        raise SpecError(str(e)) from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data
