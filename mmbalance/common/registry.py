"""Registries by name, in the spirit of timm's ``register_model`` / ``create_model``, loaded lazily.

A method or dataset is a class in its own file under ``methods/`` / ``datasets/``, decorated with
``@METHODS.register`` / ``@DATASETS.register``; its ``name`` class attribute is its public name.
Adding one is adding that file: nothing else lists it.

Lazy: the registry finds the names without importing the files (which import torch). It reads each
file's source (``ast``, as ``transformers`` finds its import structure) for the decorated classes and
the literal class attributes the listings show (``name``; ``tasks``, ``min_modalities``, ``reference``
of a method; ``description``, ``needs_files``, ``access`` of a dataset), following base classes defined in the
same package and falling back to the base class defaults. So ``mmbalance methods`` lists without
torch, and ``get(name)`` imports one file, whose decorator registers the class. Keep those attributes
literals (a string, a number, ``frozenset({...})``): a computed one is refused with its file and line.
``tests/test_cli_fast.py`` checks that the listing equals the imported classes' attributes.

Plug-ins: another distribution adds a method or dataset without a fork by declaring an entry point in
the group ``mmbalance.methods`` / ``mmbalance.datasets`` (as pytest's ``pytest11`` or timm's models)::

    [project.entry-points."mmbalance.methods"]
    halfgrad = "my_package.halfgrad:HalfGrad"      # NAME = "module:Class", a Method / DatasetAdapter

Its file is read the same way (nothing imported to list it); ``get(NAME)`` imports the module and
registers the class (the ``@METHODS.register`` decorator is optional there). A plug-in may not take a
built-in name. ``tests/test_plugins.py`` installs a tiny package and sweeps and reports its method.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Generic, TypeVar

from mmbalance.common.core import ALL_TASKS

T = TypeVar("T", bound=type)


class UnknownNameError(KeyError):
    """An unknown method or dataset name; the message lists the valid choices."""

    def __str__(self) -> str:
        return str(self.args[0])


class RegistryError(RuntimeError):
    """A registered class whose listing attributes cannot be read from its source."""


@dataclass(frozen=True)
class Entry:
    """A registered class as its source declares it (nothing imported)."""

    name: str
    module: str  # e.g. mmbalance.methods.cggm
    path: Path
    attrs: dict[str, Any]  # the listed attributes, resolved through the bases
    qualname: str = ""  # a plug-in's class (entry point ``module:Class``), registered on import


@dataclass
class _ClassSource:
    path: Path
    module: str
    node: ast.ClassDef
    registered: bool
    bases: list[str]
    literals: dict[str, Any]


def _literal(node: ast.expr) -> Any:
    """A literal, or ``frozenset({...})`` / ``set(...)`` / ``tuple(...)`` of one."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) == 1:
        kinds = {"frozenset": frozenset, "set": set, "tuple": tuple}
        if node.func.id in kinds and not node.keywords:
            return kinds[node.func.id](ast.literal_eval(node.args[0]))
    return ast.literal_eval(node)


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str, variable: str, listed: dict[str, Any]) -> None:
        self.kind = kind  # "method" or "dataset", used in messages
        self.package = package  # the package whose modules register into this registry; also the
        # entry-point group of plug-ins from other distributions
        self.variable = variable  # the name the files decorate with: @METHODS.register
        self.listed = listed  # attributes a listing shows, with the base class defaults
        self._entries: dict[str, T] = {}

    def register(self, cls: T) -> T:
        name = cls.name
        if name in self._entries and self._entries[name] is not cls:
            warnings.warn(
                f"Overwriting {self.kind} {name!r} with {cls.__module__}.{cls.__qualname__}", stacklevel=2
            )
        self._entries[name] = cls
        return cls

    # --- the index, from the sources ------------------------------------------------------------
    def _sources(self) -> dict[str, _ClassSource]:
        """Every top-level class in the package's files (``_helpers.py`` too, for base classes)."""
        spec = importlib.util.find_spec(self.package)
        folders = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
        classes: dict[str, _ClassSource] = {}
        for path in sorted(p for folder in folders for p in folder.glob("*.py")):
            if path.stem == "__init__":
                continue
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in tree.body:
                if isinstance(node, ast.ClassDef):
                    classes[node.name] = self._class_source(path, node)
        return classes

    def _class_source(self, path: Path, node: ast.ClassDef, module: str | None = None) -> _ClassSource:
        registered = not path.stem.startswith("_") and any(
            isinstance(d, ast.Attribute)
            and d.attr == "register"
            and getattr(d.value, "id", None) == self.variable
            for d in node.decorator_list
        )
        literals: dict[str, Any] = {}
        for stmt in node.body:
            target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else None
            if isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                target = stmt.target
            if not isinstance(target, ast.Name) or target.id not in {"name", *self.listed}:
                continue
            try:
                literals[target.id] = _literal(stmt.value)
            except (ValueError, TypeError, SyntaxError):
                if registered:
                    raise RegistryError(
                        f"{path}:{stmt.lineno}: {node.name}.{target.id} must be a literal (a string, number "
                        "or frozenset({...})): the registry reads it without importing the file"
                    ) from None
        bases = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases]
        module = module or f"{self.package}.{path.stem}"
        return _ClassSource(path, module, node, registered, bases, literals)

    def _attr(self, classes: dict[str, _ClassSource], cls: _ClassSource, key: str) -> Any:
        """A listed attribute of ``cls``: its own literal, else its first base's in ``classes``, else the
        base class default."""
        if key in cls.literals:
            return cls.literals[key]
        for base in cls.bases:
            if base in classes:
                return self._attr(classes, classes[base], key)
        return self.listed[key]

    def _plugins(self, builtin: set[str]) -> dict[str, Entry]:
        """The entry points of the group ``self.package`` in installed distributions, read from source."""
        out: dict[str, Entry] = {}
        for ep in importlib.metadata.entry_points(group=self.package):
            module, _, qualname = ep.value.partition(":")
            spec = importlib.util.find_spec(module)
            if not qualname or spec is None or not spec.origin or not spec.origin.endswith(".py"):
                raise RegistryError(f"entry point {ep.name} = {ep.value!r} ({self.package}): expected "
                                    "'module:Class' naming a class in an importable .py file")  # fmt: skip
            if ep.name in builtin:
                raise RegistryError(
                    f"entry point {ep.name} = {ep.value!r}: {ep.name!r} is a built-in {self.kind}"
                )
            path = Path(spec.origin)
            tree = ast.parse(path.read_text(), filename=str(path))
            classes = {
                n.name: self._class_source(path, n, module) for n in tree.body if isinstance(n, ast.ClassDef)
            }
            if qualname not in classes:
                raise RegistryError(
                    f"entry point {ep.name} = {ep.value!r}: {path} defines no class {qualname}"
                )
            attrs = {key: self._attr(classes, classes[qualname], key) for key in self.listed}
            out[ep.name] = Entry(ep.name, module, path, attrs, qualname)
        return out

    @cached_property
    def _index(self) -> dict[str, Entry]:
        classes = self._sources()

        def attr(cls: _ClassSource, key: str) -> Any:
            return self._attr(classes, cls, key)

        index: dict[str, Entry] = {}
        for qualname, cls in classes.items():
            if not cls.registered:
                continue
            if "name" not in cls.literals:
                raise RegistryError(
                    f"{cls.path}:{cls.node.lineno}: {qualname} needs a literal `name = '...'`"
                )
            name = cls.literals["name"]
            attrs = {key: attr(cls, key) for key in self.listed}
            index[name] = Entry(name, cls.module, cls.path, attrs)
        return {**index, **self._plugins(set(index))}

    # --- lookups ------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(set(self._index) | set(self._entries))

    def get(self, name: str) -> T:
        """The class registered as ``name``; imports its file (only that one) on first use."""
        if name not in self._entries and name in self._index:
            entry = self._index[name]
            module = importlib.import_module(entry.module)
            if entry.qualname and name not in self._entries:  # a plug-in without the decorator
                cls = getattr(module, entry.qualname)
                if getattr(cls, "name", None) != name:
                    raise RegistryError(
                        f"{entry.path}: {entry.qualname}.name must be {name!r}, its entry point"
                    )
                self.register(cls)
            if name not in self._entries:
                raise RegistryError(f"{self._index[name].path}: importing it did not register {name!r}")
        if name not in self._entries:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid choices: {', '.join(self.names())}")
        return self._entries[name]

    def items(self) -> list[tuple[str, T]]:
        """Every registered class (imports every file)."""
        return [(n, self.get(n)) for n in self.names()]

    def listing(self) -> list[dict[str, Any]]:
        """``{"name": ..., <listed attributes>}`` per name, read from the sources (nothing imported)."""
        rows = []
        for n in self.names():
            entry = self._index.get(n)
            attrs = (
                entry.attrs if entry is not None else {k: getattr(self._entries[n], k) for k in self.listed}
            )
            rows.append({"name": n, **attrs})
        return rows


# The listed attributes' defaults are those of the base classes mmbalance.training.method.Method and
# mmbalance.training.data.DatasetAdapter (which import torch, so they are repeated here; a test compares them).
METHODS: Registry = Registry(
    "method", "mmbalance.methods", "METHODS", {"tasks": ALL_TASKS, "min_modalities": 2, "reference": ""}
)
DATASETS: Registry = Registry(
    "dataset", "mmbalance.datasets", "DATASETS", {"description": "", "needs_files": True, "access": ""}
)
