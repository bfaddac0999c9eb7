"""The Python API: ``mmbalance.run``, ``mmbalance.sweep``, ``mmbalance.report`` (what the CLI's commands do).

```python
import mmbalance
r = mmbalance.run(method="ogm_ge", epochs=3, method_params={"alpha": 0.5}, results="results")
table = mmbalance.sweep({"name": "grid", "seeds": [0], "datasets": [{"dataset": "synthetic"}],
                         "methods": [{"method": "joint", "optim": {"lr": [0.01, 0.05]}}]}, results="results")
mmbalance.report("results", suite="grid")
```

A spec field is a keyword (nested sections as dicts) or a ``set=["optim.lr=0.1"]`` item, with the
command line's precedence (``spec.compose``); a suite is a YAML path, a dict in the suite format
(``sweep.py``; lists are grids, ``grid.py``) or, for ``report``, the name of a suite swept before.
Nothing is printed and no progress bar is drawn unless ``progress=True``; every record lands in
``results/runs/<run_id>`` exactly as the CLI writes it (same spec, same run id, same numbers).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mmbalance.common.spec import compose, default_preset, load_yaml, parse_set, validate_spec

if TYPE_CHECKING:
    import pandas as pd

    from mmbalance.scaleout.sweep import Planned, Suite
    from mmbalance.training.runner import RunResult

__all__ = ["run", "sweep", "report", "run_spec", "plan_suite"]

SUITE_COPY = "sweeps"  # results/sweeps/<name>.yaml: a dict suite as swept (``report(suite=name)`` reads it)


def run_spec(
    method: str | None = None,
    dataset: str | None = None,
    seed: int | None = None,
    *,
    preset: str | None = None,
    spec: str | Path | None = None,
    set: list[str] | None = None,  # noqa: A002 (the CLI's --set)
    **fields: Any,
):
    """The validated ``RunSpec``: code defaults < preset < ``spec`` file < method/dataset/seed < ``fields``
    < ``set`` (without a preset, the dataset's default one, as ``mmbalance run``)."""
    doc = load_yaml(spec) if spec else {}
    named = {k: v for k, v in (("dataset", dataset), ("method", method), ("seed", seed)) if v is not None}
    layers = [doc, {"preset": preset} if preset else {}, named, fields, parse_set(set or [])]
    return validate_spec(compose(default_preset(*layers), *layers))


def run(
    method: str | None = None,
    dataset: str | None = None,
    seed: int | None = None,
    *,
    results: str | Path = "results",
    data_root: str | Path | None = None,
    preset: str | None = None,
    spec: str | Path | None = None,
    set: list[str] | None = None,  # noqa: A002
    device: str = "auto",
    progress: bool = False,
    amp: bool = False,
    restart: bool = False,
    wandb: dict[str, Any] | bool | None = None,
    **fields: Any,
) -> RunResult:
    """Train one run (reused when finished, resumed when interrupted); ``RunResult`` with ``final`` (the
    record of ``final.json``), ``path``, ``status`` and ``run_id``. ``wandb``: True or a settings dict
    (``wandb_log.WandbSettings``) logs it live, offline unless a mode is set."""
    from mmbalance.training.runner import live_train
    from mmbalance.training.wandb_log import settings

    s = run_spec(method, dataset, seed, preset=preset, spec=spec, set=set, **fields)
    cfg = settings(wandb if isinstance(wandb, dict) else None, bool(wandb) if wandb is not None else None)
    return live_train(s, Path(results), _root(data_root), cfg, None, device=device, progress=progress,
                      amp=amp, restart=restart)  # fmt: skip


def load_suite_any(
    suite: str | Path | dict[str, Any], results: Path | None = None
) -> tuple[Suite, Path | None]:
    """A suite from a YAML path, a dict (copied to ``results/sweeps/<name>.yaml`` when ``results`` is given)
    or the name of one swept before into ``results``; with the file it was read from."""
    from mmbalance.scaleout.sweep import load_suite, suite_from_doc

    if isinstance(suite, dict):
        s = suite_from_doc(suite, "suite")
        if results is None:
            return s, None
        path = Path(results) / SUITE_COPY / f"{s.name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(suite, sort_keys=False))
        return s, path
    path = Path(suite)
    if not path.suffix and results is not None and (Path(results) / SUITE_COPY / f"{suite}.yaml").is_file():
        path = Path(results) / SUITE_COPY / f"{suite}.yaml"
    return load_suite(path), path


def plan_suite(
    suite: Suite,
    data_root: Path | None = None,
    overrides: list[str] | None = None,
    only: list[str] | None = None,
) -> tuple[list[Planned], list[Planned]]:
    """``(all planned, selected)``: the suite's runs under ``overrides`` (``--set`` items), and those
    ``only`` keeps (``--only`` items)."""
    from mmbalance.scaleout.planning import parse_only, select
    from mmbalance.scaleout.sweep import plan

    planned = plan(suite, data_root, parse_set(overrides or []))
    return planned, select(planned, parse_only(only or []))


def sweep(
    suite: str | Path | dict[str, Any],
    *,
    results: str | Path = "results",
    data_root: str | Path | None = None,
    set: list[str] | None = None,  # noqa: A002
    only: list[str] | None = None,
    dry_run: bool = False,
    device: str = "auto",
    progress: bool = False,
    restart: bool = False,
    wandb: dict[str, Any] | bool | None = None,
) -> pd.DataFrame:
    """Run a suite here, one run after another (``mmbalance sweep``; the CLI adds worker processes and
    SLURM); ``set`` / ``only``: the CLI's ``--set`` / ``--only`` items. One row per planned run: ``run`` (its
    label), ``status``, ``test`` (the selection metric) and ``id``; under ``dry_run`` (nothing trains, no data
    is built) ``run``, ``id`` and ``state`` (``finished``, ``not started``, ``interrupted``, ...)."""
    import pandas as pd

    from mmbalance.reporting.tables import SWEEPS, write_runs
    from mmbalance.scaleout.planning import dry_run_rows
    from mmbalance.scaleout.sweep import run_ids, run_local, summary_rows
    from mmbalance.training.wandb_log import settings

    results, root = Path(results), _root(data_root)
    s, _ = load_suite_any(suite, None if dry_run else results)
    planned, chosen = plan_suite(s, root, set, only)
    if dry_run:
        return pd.DataFrame(dry_run_rows(run_ids(chosen, root, declared=True), results))
    write_runs(results / SWEEPS, s.name, list(run_ids(planned, root)))
    cfg = settings(wandb if isinstance(wandb, dict) else s.wandb, bool(wandb) if wandb is not None else None)
    from mmbalance.training.runner import RunOptions

    options = RunOptions(device=device, progress=progress, restart=restart)
    outcomes = run_local(chosen, results, root, options, wandb=cfg, group=s.name)
    rows = summary_rows(outcomes, [p for p in chosen if p.spec is None])
    return pd.DataFrame(rows)


def report(
    results: str | Path = "results",
    suite: str | Path | dict[str, Any] | None = None,
    *,
    out: str | Path | None = None,
    protocol: str = "best-valid-test",
    figures: bool = True,
    methods: list[str] | None = None,
    wandb: dict[str, Any] | bool | None = None,
) -> list[Path]:
    """Tables (Markdown, LaTeX, CSV) and figures of the records (``mmbalance report``); the paths written.
    ``wandb``: also log them (tables as W&B tables, figures as images) under the suite's name."""
    from mmbalance.reporting.report import report as write_report
    from mmbalance.training.wandb_log import log_report, settings

    path, name = None, "all-runs"
    if suite is not None:
        s, path = load_suite_any(suite, Path(results))
        name = s.name
    paths = write_report(results, path, out, protocol, figures, methods)
    cfg = settings(wandb if isinstance(wandb, dict) else None, bool(wandb) if wandb else None)
    if cfg is not None:
        log_report(paths, cfg, Path(results), name)
    return paths


def _root(data_root: str | Path | None) -> Path | None:
    return Path(data_root) if data_root is not None else None
