"""Registries by name, in the spirit of timm's ``register_model`` / ``create_model``.

A method or dataset is a class decorated with ``@METHODS.register`` / ``@DATASETS.register``;
its ``name`` class attribute is its public name. Importing ``mmbalance.methods`` /
``mmbalance.datasets`` imports every file in those folders, which fills the registries.
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings
from typing import Generic, TypeVar

T = TypeVar("T", bound=type)


class UnknownNameError(KeyError):
    """An unknown method or dataset name; the message lists the valid choices."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str) -> None:
        self.kind = kind  # "method" or "dataset", used in messages
        self.package = package  # the package whose modules register into this registry
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, cls: T) -> T:
        name = cls.name
        if name in self._entries and self._entries[name] is not cls:
            warnings.warn(
                f"Overwriting {self.kind} {name!r} with {cls.__module__}.{cls.__qualname__}", stacklevel=2
            )
        self._entries[name] = cls
        return cls

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.package}.{info.name}")

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def get(self, name: str) -> T:
        self._load()
        if name not in self._entries:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid choices: {', '.join(self.names())}")
        return self._entries[name]

    def items(self) -> list[tuple[str, T]]:
        return [(n, self.get(n)) for n in self.names()]


METHODS: Registry = Registry("method", "mmbalance.methods")
DATASETS: Registry = Registry("dataset", "mmbalance.datasets")
