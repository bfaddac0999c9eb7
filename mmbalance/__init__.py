"""mmbalance: one runner, one loop, many multimodal balancing methods and datasets.

``mmbalance.run``, ``mmbalance.sweep`` and ``mmbalance.report`` are the Python API (``mmbalance/api.py``);
``mmbalance.results.load`` / ``curves`` read the records. They load on first use, so ``import mmbalance``
(and the CLI's start) stays free of torch.

``sweep`` and ``report`` are also the names of submodules (``mmbalance/sweep.py``, ``mmbalance/report.py``),
which Python binds on the package when they are imported. So those two modules are made callable: calling
``mmbalance.sweep(...)`` calls ``api.sweep``, and ``mmbalance.sweep.plan`` is still the module's ``plan``.
"""

import importlib
import sys
import types

__version__ = "0.1.0"

__all__ = ["run", "sweep", "report", "run_spec"]


class _CallableModule(types.ModuleType):
    """A submodule whose name is an API function as well: calling the module calls the function."""

    def __call__(self, *args, **kwargs):
        return getattr(importlib.import_module("mmbalance.api"), self.__name__.rpartition(".")[2])(
            *args, **kwargs
        )


def __getattr__(name: str):
    if name in ("sweep", "report"):
        return importlib.import_module(f"mmbalance.{name}")  # bound here (made callable) by _Package
    if name in __all__:
        return getattr(importlib.import_module("mmbalance.api"), name)
    if name == "results":  # ``mmbalance.results.load(...)`` without importing the module first
        return importlib.import_module("mmbalance.results")
    raise AttributeError(f"module 'mmbalance' has no attribute {name!r}")


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: object) -> None:
        if name in __all__ and type(value) is types.ModuleType:  # the import system binding a submodule
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
