"""The building blocks of every table: cells, tables, rows of a comparison key, their labels, ranks and files.

``report`` (the suite's tables and rankings), ``modality_report``, ``incomplete_report``, ``tuned_report``,
``paper`` and the figures build on these; none of them imports ``report``, which only orchestrates. Beside
each table's files ``write_runs`` writes ``<name>.runs``: the run ids behind it (``provenance`` says why).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mmbalance.common.comparison import BASELINE, REFERENCES
from mmbalance.common.metric_catalogue import metric_facts
from mmbalance.common.records import atomic_write_text

RUNS_SUFFIX = ".runs"
SWEEPS = "sweeps"  # <results>/sweeps/<suite>.runs: the run ids the last sweep of a suite planned


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
    asked: int = 0  # with show_n: "(n=done/asked)"
    flag: str = ""  # appended, e.g. "*" for a significant difference

    @classmethod
    def of(cls, values: Iterable[float], metric: str = "") -> Cell:
        vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
        if not vals:
            return cls(decimals=metric_facts(metric).decimals)
        s = pd.Series(vals)
        std = float(s.std(ddof=1)) if len(vals) > 1 else None
        return cls(float(s.mean()), std, len(vals), metric_facts(metric).decimals)

    @property
    def empty(self) -> bool:
        return self.mean is None

    def text(self, pm: str = "±") -> str:
        if self.mean is None:
            return "n/a"
        sign = "+" if self.signed else ""
        mean = self.mean if round(self.mean, self.decimals) != 0 else 0.0  # no "-0.000"
        out = f"{mean:{sign}.{self.decimals}f}"
        return out if self.std is None else f"{out} {pm} {self.std:.{self.decimals}f}"

    @property
    def suffix(self) -> str:
        n = f"{self.n}/{self.asked}" if self.asked else str(self.n)
        return self.flag + (f" (n={n})" if self.show_n and self.mean is not None else "")

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
        ("†", "$^\\dagger$"),
        ("χ²", "$\\chi^2$"),
        ("α", "$\\alpha$"),
        ("<", "$<$"),
        (">", "$>$"),
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


def finished(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["status"] == "done"]


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
    """Per dataset entry of ``suite``: its merged spec fields (``spec.compose``: preset < base < entry)
    and its preset's ``method_overrides``."""
    from mmbalance.common.spec import compose, load_preset  # reads YAML only; plans nothing
    from mmbalance.scaleout.sweep import spec_fragment

    docs = []
    for entry in suite.datasets:
        preset = load_preset(entry["preset"]) if "preset" in entry else {}
        docs.append((compose(suite.base, spec_fragment(entry)), preset.get("method_overrides", {})))
    return docs


FIXTURE_NOTE = "tiny files in the real format, written by mmbalance.fixtures"


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: json.dumps(v)})
    return out


def config_labels(runs: pd.DataFrame) -> dict[str, str]:
    """``config -> label``: the method plus the spec fields that differ between rows of the table
    (method parameters only between configurations of the same method)."""
    specs = {c: _label_fields(s) for c, s in zip(runs["config"], runs["spec"], strict=True)}

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


def _label_fields(spec: dict[str, Any]) -> dict[str, Any]:
    """The flattened spec fields a row label may show: not the seed, and under the tuned protocol not
    what tuning chose (its values are in ``benchmarks/tuned/``; the row is the method)."""
    flat = _flatten({k: v for k, v in spec.items() if k not in ("seed", "tuned")})
    chosen = set((spec.get("tuned") or {}).get("chosen", []))
    return {k: v for k, v in flat.items() if k not in chosen}


@dataclass
class Row:
    """One configuration of a table: its label, a ``Cell`` per metric over its finished seeds, and the
    comparison with joint training."""

    config: str
    label: str
    method: str
    multimodal: bool  # uses all the table's modalities
    per_seed: pd.DataFrame  # finished runs: one row per seed, one column per metric
    asked: int  # how many seeds were asked for
    cells: dict[str, Cell]
    unfinished: list[str] = field(default_factory=list)  # "seed 1: failed (reason), run <id>"
    unrecorded: list[int] = field(default_factory=list)  # seeds asked that have no record at all
    best_unimodal: bool = False
    delta: Cell | None = None  # primary metric, row − joint over the seeds both have
    p: float | None = None  # Holm-adjusted paired t-test p-value
    extra: list[int] = field(default_factory=list)  # finished seeds beyond those asked (not in the means)
    fingerprints: dict[int, str | None] = field(default_factory=dict)  # finished seed -> data fingerprint
    fixture: bool = False  # trained on fixture files: never ranked
    unpaired: list[int] = field(default_factory=list)  # seeds whose data differs from joint's (not paired)

    @property
    def seeds(self) -> int:
        return len(self.per_seed)

    @property
    def complete(self) -> bool:
        return self.seeds >= self.asked

    @property
    def reference(self) -> bool:
        return self.method in REFERENCES

    @property
    def ranked(self) -> bool:
        return self.multimodal and not self.reference and self.complete and not self.fixture

    @property
    def shown_label(self) -> str:
        best = " (best unimodal)" if self.best_unimodal else ""
        return f"{self.label}{best} †" if self.reference else self.label

    @property
    def n_text(self) -> str:
        return f"{self.seeds}/{self.asked}" + ("" if self.complete else " incomplete")


def _unfinished(runs: pd.DataFrame) -> list[str]:
    """One line per run that did not finish: its seed, state and reason."""
    return [
        f"seed {r.seed}: {r.status}" + (f" ({r.reason})" if r.reason else "") + f", run {r.run_id}"
        for r in runs[runs["status"] != "done"].sort_values("seed").itertuples()
    ]


def shared_seeds(runs: pd.DataFrame) -> list[int]:
    """The seeds the configurations of one table share: those at least half of them have a record of.
    Not "every row" (one row run at fewer seeds would shrink every other row's n) nor "any row" (one
    stray run at another seed would mark every other row incomplete)."""
    per_config = runs.groupby("config", sort=False)["seed"].agg(lambda s: set(s.tolist()))
    counts = pd.Series([s for seeds in per_config for s in seeds]).value_counts()
    return sorted(int(s) for s, n in counts.items() if n >= len(per_config) / 2)


def aggregate(
    runs: pd.DataFrame, metrics: Sequence[str], seeds: Sequence[int] | None = None, fixture: bool = False
) -> list[Row]:
    """mean, std (ddof=1) and n per configuration and metric over the finished runs of ``runs`` (one
    table, every status) at the seeds asked: ``seeds`` (a suite's) or the seeds the rows share
    (``shared_seeds``). Rows: joint, the unimodal baselines, the unimodal ensemble, then the other
    methods by name (a stable order, whatever order the run folders are read in)."""
    labels = config_labels(runs)
    seeds = shared_seeds(runs) if seeds is None else list(seeds)
    done = finished(runs)
    full = max((len(m) for m in done["modalities"] if isinstance(m, tuple)), default=0)
    rows = []
    for config, group in runs.groupby("config", sort=False):
        fin = finished(group)
        asked = fin[fin["seed"].isin(seeds)]
        per_seed = (
            asked.groupby("seed")[[m for m in metrics if m in fin]].mean().reindex(columns=list(metrics))
        )
        cells = {m: Cell.of(per_seed[m], m) for m in metrics}
        method = str(group["method"].iloc[0])
        mods = [m for m in group["modalities"] if isinstance(m, tuple)]
        multimodal = method != "unimodal" and (not mods or len(mods[0]) == full)
        fingerprints = (
            dict(zip(asked["seed"], asked["data_fingerprint"], strict=True))
            if "data_fingerprint" in asked
            else {}
        )
        rows.append(Row(config, labels[config], method, multimodal, per_seed, len(seeds), cells,
                        unfinished=_unfinished(group), unrecorded=[s for s in seeds if s not in set(group["seed"])],
                        extra=sorted(int(s) for s in set(fin["seed"]) - set(seeds)), fingerprints=fingerprints,
                        fixture=fixture))  # fmt: skip
    order = {BASELINE: 0, "unimodal": 1, "unimodal_ensemble": 2}
    return sorted(rows, key=lambda r: (order.get(r.method, 3), r.label))


def cells_frame(rows: Sequence[Row], dataset: str, task: str, block: str) -> pd.DataFrame:
    """A table's cells as a long frame (one row per method and column): its CSV beside the Markdown."""
    return pd.DataFrame([{"dataset": dataset, "task": task, "block": block, "method": r.label, "metric": c,
                          "mean": cell.mean, "std": cell.std, "n": cell.n, "mark": cell.mark}
                         for r in rows for c, cell in r.cells.items()])  # fmt: skip


def primary_metric(runs: pd.DataFrame, default: str = "") -> str:
    """The metric the runs were selected by (``final.json`` ``selection_metric``): what is compared and ranked."""
    return next((m for m in runs["selection_metric"] if isinstance(m, str)), default)


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


def write_runs(tables_dir: Path, name: str, run_ids: list[str]) -> Path:
    path = tables_dir / f"{name}{RUNS_SUFFIX}"
    atomic_write_text(path, "".join(f"{r}\n" for r in sorted(set(run_ids))))
    return path


def read_runs(path: Path) -> set[str]:
    return set(path.read_text().split())
