"""Grids: a list given where a spec field takes one value is an axis; an entry expands into the product.

```yaml
methods:
  - {method: ogm_ge, method_params: {alpha: [0.1, 0.5]}, optim: {lr: [0.01, 0.05]}}   # 4 runs per seed
```

The same on the command line: ``mmbalance sweep SUITE --set optim.lr=[0.01,0.05]`` and
``mmbalance run -m optim.lr=0.01,0.05`` (Hydra's multirun). Whether a list is an axis is read from the
field's type, never guessed from its name: ``dataset_params.noise: [1.5, 1.5, 1.5]`` is one value of a
list-typed field, ``optim.lr: [0.01, 0.05]`` two values of a float field. A field whose type takes both
(``synthetic``'s ``dim: int | list[int]``) or any value is never an axis: write one entry per value.
The fields' owners are ``RunSpec`` and its sections, the method's ``Params`` and the dataset's
``Params`` / ``ModelParams`` (which ``spec.validate_spec`` applies anyway).
"""

from __future__ import annotations

import collections.abc
import itertools
import types
import typing
from typing import Any

from pydantic import BaseModel

from mmbalance.common.registry import DATASETS, METHODS, UnknownNameError

__all__ = ["Point", "expand", "grid_label", "with_grid", "parse_multirun"]

Point = dict[str, Any]  # {"optim.lr": 0.01, "method_params.alpha": 0.5}: one grid point, dotted paths
SECTIONS = ("optim", "schedule", "method_params", "dataset_params", "model_params")
SEQUENCES = (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Iterable)


def _takes_list(annotation: Any) -> bool:
    """Whether a field of this type accepts a list as one value (``list[float]``, ``int | list[int]``, Any)."""
    if annotation is Any or annotation in SEQUENCES:
        return True
    origin = typing.get_origin(annotation)
    if origin in SEQUENCES:
        return True
    if origin is typing.Annotated:
        return _takes_list(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_takes_list(a) for a in typing.get_args(annotation))
    return False


def _owners(doc: dict[str, Any]) -> dict[str, type[BaseModel]]:
    """The pydantic model that owns each section of a spec document (by the method and dataset it names)."""
    from mmbalance.common.spec import OptimSpec, ScheduleSpec

    owners: dict[str, type[BaseModel]] = {"optim": OptimSpec, "schedule": ScheduleSpec}
    method, dataset = doc.get("method", "joint"), doc.get("dataset", "synthetic")
    try:
        if isinstance(method, str):
            owners["method_params"] = METHODS.get(method).Params
        if isinstance(dataset, str):
            cls = DATASETS.get(dataset)
            owners["dataset_params"], owners["model_params"] = cls.Params, cls.ModelParams
    except UnknownNameError:  # validate_spec names it; nothing in that section is an axis
        pass
    return owners


def axes(fragment: dict[str, Any], names: dict[str, Any]) -> dict[str, list[Any]]:
    """The grid axes of a spec fragment: ``{dotted path: values}`` for each list in a one-value field.
    ``names``: the document the fragment belongs to (its ``method`` and ``dataset`` pick the owners)."""
    from mmbalance.common.spec import RunSpec

    owners = _owners(names)
    out: dict[str, list[Any]] = {}
    for key, value in fragment.items():
        if key in owners and isinstance(value, dict):
            fields = owners[key].model_fields
            for sub, v in value.items():
                if isinstance(v, list) and sub in fields and not _takes_list(fields[sub].annotation):
                    out[f"{key}.{sub}"] = v
        elif isinstance(value, list) and key in RunSpec.model_fields and key not in SECTIONS:
            if not _takes_list(RunSpec.model_fields[key].annotation):
                out[key] = value
    return out


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    head, _, rest = path.partition(".")
    return {**doc, head: _set(doc[head], rest, value) if rest else value}


def expand(
    fragment: dict[str, Any], names: dict[str, Any] | None = None
) -> list[tuple[dict[str, Any], Point]]:
    """Each grid point of ``fragment``: the fragment with one value per axis, and that point. A fragment
    without axes is one point, ``{}``. An axis with no values is an error (an empty grid runs nothing)."""
    from mmbalance.common.spec import SpecError

    found = axes(fragment, {**(names or {}), **fragment})
    if empty := [path for path, values in found.items() if not values]:
        raise SpecError(f"{empty[0]}: an empty list of values (a grid axis needs at least one)")
    points = []
    for values in itertools.product(*found.values()):
        point = dict(zip(found, values, strict=True))
        doc = fragment
        for path, value in point.items():
            doc = _set(doc, path, value)
        points.append((doc, point))
    return points


def grid_label(point: Point) -> str:
    """``optim.lr=0.01``: the grid point in a run's label (method parameters show in the method's own)."""
    return ",".join(f"{k}={v}" for k, v in point.items() if not k.startswith("method_params."))


def with_grid(label: str, grid: str) -> str:
    """``joint`` -> ``joint(optim.lr=0.01)``, ``ogm_ge(alpha=0.5)`` -> ``ogm_ge(alpha=0.5,optim.lr=0.01)``."""
    if not grid:
        return label
    return f"{label[:-1]},{grid})" if label.endswith(")") else f"{label}({grid})"


def parse_multirun(assignments: list[str]) -> list[str]:
    """Hydra's multirun on ``run -m``: ``optim.lr=0.01,0.05`` -> ``optim.lr=[0.01,0.05]`` for ``--set``."""
    from mmbalance.common.spec import SpecError

    out = []
    for a in assignments:
        key, sep, raw = a.partition("=")
        if not sep or not key or not raw:
            raise SpecError(f"-m {a!r}: expected KEY=VALUE,VALUE,... (e.g. optim.lr=0.01,0.05)")
        out.append(f"{key}=[{raw}]")
    return out
