"""mmbalance: one runner, one loop, many multimodal balancing methods and datasets.

``mmbalance.run``, ``mmbalance.sweep`` and ``mmbalance.report`` are the Python API (``mmbalance/api.py``);
``mmbalance.results.load`` / ``curves`` read the records (``mmbalance/reporting/results.py``). They load on
first use, so ``import mmbalance`` (and the CLI's start) stays free of torch.

The package is grouped by job, each subpackage importing only those before it:

- ``common``: what every job shares, without torch: the spec, the registries, the run records and their
  locks and states, the metric catalogue, the comparison key.
- ``models``: the model families a dataset builds.
- ``training``: the runner and its loop, the method contract and its shared parts, data, evaluation,
  checkpoints and the records a run writes.
- ``leaderboard``: entries, their page and their verification by retraining.
- ``scaleout``: suites and grids, planning, executors, tuning and its settings files.
- ``reporting``: tables, figures, statistics and the paper tables, from run records alone.
- ``fixtures``: tiny data files in the real formats, for the tests.

``cli.py`` (the ``mmbalance`` command) and ``api.py`` use them all.
"""

import importlib

__version__ = "0.1.0"

__all__ = ["run", "sweep", "report", "run_spec"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("mmbalance.api"), name)
    if name == "results":  # ``mmbalance.results.load(...)`` without importing the module first
        return importlib.import_module("mmbalance.reporting.results")
    raise AttributeError(f"module 'mmbalance' has no attribute {name!r}")
