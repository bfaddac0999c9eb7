"""Tables from run records: mean ± std over seeds per dataset, method and metric.

Reads ``results/runs/*`` through ``records.py`` alone, never the runner, a method or a dataset adapter,
so a table is rebuilt without running any training code (``tests/test_report.py`` checks that).

Two protocols pick the value of a run (both are stored in ``final.json``):

- ``best-valid-test`` (default): test metrics at the epoch with the best validation score.
- ``best-valid``: the best validation score of each metric over the epochs, no test split: what the
  CGGM code reports, so that our numbers can be set beside the published ones like for like.

A row is one *configuration*: the canonical run spec without its seed. Its label is the method plus the
spec fields that tell it apart from the other rows of its table (``unimodal(modality=m2)``,
``cggm(rho=1.0)``, ``joint(epochs=5)``). A cell is ``mean ± std`` over the configuration's seeds, the
sample standard deviation (ddof=1; none with one seed); ``n`` counts the seeds. Best and second best
are marked per column among the multimodal rows, in the metric's direction (MAE and loss: lower is better).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mmbalance.records import atomic_write_text, iter_runs

__all__ = [
    "PROTOCOLS",
    "RecordError",
    "Cell",
    "Table",
    "load_runs",
    "aggregate",
    "rank_marks",
    "run_tables",
    "write_tables",
    "report",
    "suite_filter",
]

PROTOCOLS = {
    "best-valid-test": "test metrics at the best validation epoch",
    "best-valid": "best validation score of each metric over epochs, no test split (CGGM code's protocol)",
}
LOWER_IS_BETTER = frozenset({"mae", "loss"})
DECIMALS = {"mae": 3, "corr": 3, "loss": 3}  # everything else is a percentage: 2 decimals
# Columns per task kind, in the papers' order; segmentation shows every Dice region the record has.
TASK_METRICS = {
    "classification": ["accuracy", "f1_macro"],
    "regression": ["acc2_non0", "acc7", "f1_non0", "mae", "corr"],
}
METRIC_LABELS = {
    "accuracy": "Acc",
    "f1_macro": "F1 (macro)",
    "f1_weighted": "F1 (weighted)",
    "acc2_non0": "Acc-2",
    "acc7": "Acc-7",
    "f1_non0": "F1",
    "mae": "MAE",
    "corr": "Corr",
    "dice_mean": "Dice avg",
}


def higher_is_better(metric: str) -> bool:
    return metric.split("/")[-1] not in LOWER_IS_BETTER and metric not in LOWER_IS_BETTER


def metric_label(metric: str) -> str:
    if metric.startswith("dice_") and metric not in METRIC_LABELS:
        return f"Dice {metric.removeprefix('dice_')}"
    return METRIC_LABELS.get(metric, metric)


# --- cells and tables -----------------------------------------------------------------------------
@dataclass
class Cell:
    """One number of a table: a mean over ``n`` seeds with its std, or a single published value."""

    mean: float | None = None
    std: float | None = None
    n: int = 0
    decimals: int = 2
    mark: int = 0  # 1 best, 2 second best
    signed: bool = False  # a difference: always show the sign
    show_n: bool = False  # append "(n=...)": fewer seeds than the rest of the table

    @classmethod
    def of(cls, values: Iterable[float], metric: str = "") -> Cell:
        vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
        if not vals:
            return cls(decimals=DECIMALS.get(metric, 2))
        s = pd.Series(vals)
        std = float(s.std(ddof=1)) if len(vals) > 1 else None
        return cls(float(s.mean()), std, len(vals), DECIMALS.get(metric, 2))

    @property
    def empty(self) -> bool:
        return self.mean is None

    def text(self, pm: str = "±") -> str:
        if self.mean is None:
            return "n/a"
        sign = "+" if self.signed else ""
        out = f"{self.mean:{sign}.{self.decimals}f}"
        return out if self.std is None else f"{out} {pm} {self.std:.{self.decimals}f}"

    @property
    def suffix(self) -> str:
        return f" (n={self.n})" if self.show_n and self.mean is not None else ""

    def rounded(self) -> float | None:
        return None if self.mean is None else round(self.mean, self.decimals)


@dataclass
class Table:
    """A rendered table: a title, column headers, rows of strings or cells, and notes under it."""

    title: str
    columns: list[str]
    rows: list[list[str | Cell]]
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        def fmt(c: str | Cell) -> str:
            if isinstance(c, str):
                return c
            t = c.text()
            return (f"**{t}**" if c.mark == 1 else f"_{t}_" if c.mark == 2 else t) + c.suffix

        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |"]
        lines.append("|" + "|".join([":---"] + ["---:"] * (len(self.columns) - 1)) + "|")
        lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in self.rows]
        lines += [""] + [f"{n}  " for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def latex(self) -> str:
        def fmt(c: str | Cell) -> str:
            if isinstance(c, str):
                return latex_escape(c)
            t = c.text(pm="$\\pm$")
            return (
                f"\\textbf{{{t}}}" if c.mark == 1 else f"\\underline{{{t}}}" if c.mark == 2 else t
            ) + c.suffix

        spec = "l" + "r" * (len(self.columns) - 1)
        lines = [
            "\\begin{table}[t]",
            "\\centering",
            f"\\caption{{{latex_escape(self.title)}}}",
            f"\\begin{{tabular}}{{{spec}}}",
            "\\toprule",
            " & ".join(latex_escape(c) for c in self.columns) + " \\\\",
            "\\midrule",
        ]
        lines += [" & ".join(fmt(c) for c in row) + " \\\\" for row in self.rows]
        lines += ["\\bottomrule", "\\end{tabular}"]
        lines += [f"\\par\\footnotesize {latex_escape(n)}" for n in self.notes]
        lines += ["\\end{table}", ""]
        return "\n".join(lines)


def latex_escape(s: str) -> str:
    for a, b in (
        ("\\", "\\textbackslash{}"),
        ("&", "\\&"),
        ("%", "\\%"),
        ("#", "\\#"),
        ("_", "\\_"),
        ("{", "\\{"),
        ("}", "\\}"),
        ("±", "$\\pm$"),
        ("Δ", "$\\Delta$"),
        ("−", "$-$"),
    ):
        s = s.replace(a, b)
    return s


def rank_marks(cells: Sequence[Cell], higher: bool, eligible: Sequence[bool] | None = None) -> None:
    """Set ``mark`` 1 on the best and 2 on the second best cells, comparing values as displayed
    (ties share a mark). Cells that are not ``eligible`` (unimodal rows) are never marked."""
    eligible = eligible if eligible is not None else [True] * len(cells)
    values = sorted(
        {c.rounded() for c, ok in zip(cells, eligible, strict=True) if ok and not c.empty}, reverse=higher
    )
    for c, ok in zip(cells, eligible, strict=True):
        c.mark = values.index(c.rounded()) + 1 if ok and not c.empty and c.rounded() in values[:2] else 0


# --- loading records --------------------------------------------------------------------------------
def run_values(final: dict[str, Any], protocol: str) -> dict[str, float]:
    """Metric values of one run under ``protocol``, plus ``probe/<m>`` (the unimodal probe metric)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if protocol == "best-valid-test":
        source, probe = final["test"], final["test"].get("probe", {})
    else:  # best_valid_over_epochs has no probe: take the probe at the best validation epoch
        source, probe = final["best_valid_over_epochs"], final["valid"].get("probe", {})
    values = {k: float(v) for k, v in source.items() if isinstance(v, int | float)}
    values.update({f"probe/{m}": float(v) for m, v in probe.items()})
    return values


def config_key(spec: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in spec.items() if k != "seed"}, sort_keys=True)


class RecordError(ValueError):
    """A run record that cannot be read; the message names the file."""


def load_runs(results: Path | str, protocol: str = "best-valid-test") -> pd.DataFrame:
    """One row per finished run: identity columns, ``spec`` (dict), and one column per metric."""
    rows = []
    for rd in iter_runs(results, status="done"):
        try:
            final = rd.final()
            spec, values = final["spec"], run_values(final, protocol)
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise RecordError(
                f"{rd.file('final.json')}: unreadable run record ({type(e).__name__}: {e})"
            ) from None
        rows.append(
            {
                "run_id": rd.run_id,
                "path": str(rd.path),
                "dataset": spec["dataset"],
                "task": final["task"],
                "method": spec["method"],
                "seed": spec["seed"],
                "modalities": tuple(final["modalities"]),
                "selection_metric": final["selection_metric"],
                "config": config_key(spec),
                "spec": spec,
                **values,
            }
        )
    return pd.DataFrame(rows)


# --- suites: which runs belong to one --------------------------------------------------------------------
def _same(a: Any, b: Any) -> bool:
    # YAML reads 1e-3 as a string and pydantic coerces it, so compare numbers as numbers.
    if isinstance(a, str) != isinstance(b, str):
        try:
            return float(a) == float(b)
        except (TypeError, ValueError):
            return False
    return a == b


def is_subset(part: Any, whole: Any) -> bool:
    """Every field of ``part`` is in ``whole`` with the same value (dicts compared recursively)."""
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(k in whole and is_subset(v, whole[k]) for k, v in part.items())
    if isinstance(part, list | tuple):
        return (
            isinstance(whole, list | tuple) and len(part) == len(whole) and all(map(is_subset, part, whole))
        )
    return _same(part, whole)


def dataset_docs(suite: Any) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Per dataset entry of ``suite``: its merged spec fields and its preset's ``method_overrides``,
    merged in the sweep's order (base < preset < dataset entry)."""
    from mmbalance.spec import deep_merge
    from mmbalance.sweep import load_preset  # reads YAML only; plans nothing

    docs = []
    for entry in suite.datasets:
        entry = dict(entry)
        preset = load_preset(entry.pop("preset")) if "preset" in entry else {}
        overrides = preset.pop("method_overrides", {})
        docs.append((deep_merge(deep_merge(suite.base, preset), entry), overrides))
    return docs


def suite_filter(suite: Any) -> list[dict[str, Any]]:
    """The spec fragments a run of ``suite`` must contain (one per dataset x method entry); a run
    belongs to the suite when one fragment is a subset of its spec."""
    from mmbalance.spec import deep_merge

    fragments = []
    for dataset_doc, overrides in dataset_docs(suite):
        for m in suite.methods:
            doc = deep_merge(deep_merge(dataset_doc, overrides.get(m.get("method", "joint"), {})), m)
            fragments.append({"method": "joint", **doc})
    return fragments


def select_suite(runs: pd.DataFrame, suite: Any) -> pd.DataFrame:
    if runs.empty:
        return runs
    fragments = suite_filter(suite)
    keep = runs["spec"].map(lambda s: s["seed"] in suite.seeds and any(is_subset(f, s) for f in fragments))
    return runs[keep]


# --- aggregation ---------------------------------------------------------------------------------------
def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: json.dumps(v)})
    return out


def config_labels(runs: pd.DataFrame) -> dict[str, str]:
    """``config -> label``: the method plus the spec fields that differ between rows of the table
    (method parameters only between configurations of the same method)."""
    specs = {
        c: _flatten({k: v for k, v in s.items() if k != "seed"})
        for c, s in zip(runs["config"], runs["spec"], strict=True)
    }

    def varying(configs: list[str], keep) -> list[str]:
        keys = sorted({k for c in configs for k in specs[c] if keep(k)})
        return [k for k in keys if len({specs[c].get(k) for c in configs}) > 1]

    shared = varying(list(specs), lambda k: k != "method" and not k.startswith("method_params."))
    labels = {}
    for method, group in runs.groupby("method", sort=False):
        configs = list(dict.fromkeys(group["config"]))
        own = varying(configs, lambda k: k.startswith("method_params."))
        for c in configs:
            parts = [
                f"{k.split('.')[-1] if k.startswith('method_params.') else k}={json.loads(specs[c][k])}"
                for k in own + shared
                if k in specs[c]
            ]
            labels[c] = f"{method}({', '.join(parts)})" if parts else str(method)
    return labels


@dataclass
class Row:
    """One configuration of a table: its label and a ``Cell`` per metric."""

    config: str
    label: str
    method: str
    multimodal: bool  # uses all the table's modalities (unimodal rows are not ranked)
    seeds: int
    cells: dict[str, Cell]


def aggregate(runs: pd.DataFrame, metrics: Sequence[str]) -> list[Row]:
    """mean, std (ddof=1) and n per configuration and metric; rows: joint, the unimodal baselines, then
    the other methods by name (a stable order, whatever order the run folders are read in)."""
    labels = config_labels(runs)
    full = max(len(m) for m in runs["modalities"])
    rows = []
    for config, group in runs.groupby("config", sort=False):
        cells = {m: Cell.of(group[m] if m in group else [], m) for m in metrics}
        multimodal = len(group["modalities"].iloc[0]) == full
        rows.append(Row(config, labels[config], group["method"].iloc[0], multimodal, len(group), cells))
    baselines = {"joint": 0, "unimodal": 1}
    return sorted(rows, key=lambda r: (baselines.get(r.method, 2), r.label))


def default_metrics(runs: pd.DataFrame, task: str) -> list[str]:
    present = [c for c in runs.columns if runs[c].notna().any()]
    if task in TASK_METRICS:
        return [m for m in TASK_METRICS[task] if m in present]
    skip = {
        "loss",
        "run_id",
        "path",
        "dataset",
        "task",
        "method",
        "seed",
        "modalities",
        "selection_metric",
        "config",
        "spec",
    }
    return [c for c in present if c not in skip and not c.startswith("probe/")]


def weak_modality(runs: pd.DataFrame) -> str | None:
    """The modality whose unimodal probe scores worst inside the multimodal models of this table."""
    full = max(len(m) for m in runs["modalities"])
    multi = runs[runs["modalities"].map(len) == full]
    probes = {c: multi[c].mean() for c in multi.columns if c.startswith("probe/") and multi[c].notna().any()}
    if not probes:
        return None
    higher = higher_is_better(multi["selection_metric"].iloc[0])
    pick = min if higher else max
    return pick(probes, key=probes.get).removeprefix("probe/")


def run_tables(
    runs: pd.DataFrame, protocol: str, metrics: Sequence[str] | None = None
) -> list[tuple[Table, pd.DataFrame]]:
    """One table per dataset and task kind, with its long-form CSV rows."""
    out = []
    for (dataset, task), runs_t in runs.groupby(["dataset", "task"], sort=True):
        cols = list(metrics) if metrics else default_metrics(runs_t, task)
        weak = weak_modality(runs_t)
        probe_cols = [f"probe/{weak}"] if weak else []
        agg = aggregate(runs_t, cols + probe_cols)
        primary = runs_t["selection_metric"].iloc[0]  # the probes report the task's primary metric
        for r in agg:
            for m in probe_cols:
                r.cells[m].decimals = DECIMALS.get(primary, 2)
        for m in cols:
            rank_marks([r.cells[m] for r in agg], higher_is_better(m), [r.multimodal for r in agg])
        header = (
            ["Method"]
            + [metric_label(m) for m in cols]
            + [f"{weak} probe {metric_label(primary)} (weak)" for _ in probe_cols]
            + ["n"]
        )
        rows = [[r.label, *(r.cells[m] for m in cols + probe_cols), str(r.seeds)] for r in agg]
        notes = [
            f"Protocol: {PROTOCOLS[protocol]}. Mean ± std (sample std, ddof=1) over n seeds.",
            "Best in bold, second best in italics (underlined in LaTeX), among multimodal rows"
            + ("; MAE: lower is better." if any(not higher_is_better(m) for m in cols) else "."),
        ]
        if weak:
            notes.append(
                f"'{weak} probe': {'test' if protocol == 'best-valid-test' else 'validation'} "
                f"{metric_label(primary)} of a linear probe on the weakest modality's encoder features "
                f"({weak}: worst probe score inside the multimodal models)."
            )
        title = f"{dataset} ({task})"
        csv = pd.DataFrame(
            [
                {
                    "dataset": dataset,
                    "task": task,
                    "method": r.label,
                    "metric": m,
                    "mean": c.mean,
                    "std": c.std,
                    "n": c.n,
                    "mark": c.mark,
                    "protocol": protocol,
                }
                for r in agg
                for m, c in r.cells.items()
            ]
        )
        out.append((Table(title, header, rows, notes), csv))
    return out


def write_tables(
    tables: Sequence[tuple[Table, pd.DataFrame]], out_dir: Path, name: str, heading: str
) -> list[Path]:
    """``<name>.md``, ``<name>.tex`` (booktabs) and ``<name>.csv`` under ``out_dir``."""
    md = f"# {heading}\n\n" + "\n".join(t.markdown() for t, _ in tables)
    tex = "% needs \\usepackage{booktabs}\n" + "\n".join(t.latex() for t, _ in tables)
    csv = pd.concat([c for _, c in tables], ignore_index=True) if tables else pd.DataFrame()
    paths = [out_dir / f"{name}.md", out_dir / f"{name}.tex", out_dir / f"{name}.csv"]
    for path, text in zip(paths, (md, tex, csv.to_csv(index=False)), strict=True):
        atomic_write_text(path, text)
    return paths


def report(
    results: Path | str,
    suite: Path | str | None = None,
    out: Path | str | None = None,
    protocol: str = "best-valid-test",
    figures: bool = True,
    methods: Sequence[str] | None = None,
) -> list[Path]:
    """Tables (and figures) of the finished runs under ``results``: only the suite's runs if given, and
    only the given ``methods`` (e.g. ``["joint", "cggm"]`` for a with / without figure)."""
    out = Path(out) if out is not None else Path(results)
    runs = load_runs(results, protocol)
    name, heading = "all-runs", f"All finished runs in {results}"
    if suite is not None:
        from mmbalance.sweep import load_suite

        s = load_suite(suite)
        runs, name, heading = select_suite(runs, s), s.name, f"Suite {s.name}"
    if methods and not runs.empty:
        runs = runs[runs["method"].isin(methods)]
        name += "-" + "-".join(methods)
    if runs.empty:
        raise FileNotFoundError(
            f"no finished runs{' of suite ' + name if suite else ''} under {Path(results) / 'runs'}"
        )
    paths = write_tables(run_tables(runs, protocol), out / "tables", name, heading)
    from mmbalance.modality_report import write_modality_outputs  # its own table file and figures

    paths += write_modality_outputs(runs, out, name, heading, figures)
    if figures:
        from mmbalance.figures import suite_figures

        paths += suite_figures(runs, out / "figures", name)
    return paths
