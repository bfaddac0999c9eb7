"""mmbalance: one runner, one loop, many multimodal balancing methods and datasets.

``mmbalance.run``, ``mmbalance.sweep`` and ``mmbalance.report`` are the Python API (``mmbalance/api.py``);
``mmbalance.results.load`` / ``curves`` read the records. They load on first use, so ``import mmbalance``
(and the CLI's start) stays free of torch.
"""

import importlib
import sys
import types

__version__ = "0.1.0"

__all__ = ["run", "sweep", "report", "run_spec"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("mmbalance.api"), name)
    if name == "results":  # ``mmbalance.results.load(...)`` without importing the module first
        return importlib.import_module("mmbalance.results")
    raise AttributeError(f"module 'mmbalance' has no attribute {name!r}")


class _Package(types.ModuleType):
    """Importing the submodules ``mmbalance.sweep`` / ``mmbalance.report`` would bind their names on the
    package, hiding the API functions of the same names: the functions keep the names (the modules stay
    importable by their full names, ``from mmbalance.sweep import plan``)."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in __all__ and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
