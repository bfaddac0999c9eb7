"""Paper tables: a YAML spec of one published table, rendered from run records beside its numbers.

A spec (``benchmarks/paper/<name>.yaml``) names the runs that make up the table (an embedded suite,
or a path to one), its columns (a record metric plus the spec fields of the runs it reads, e.g. the
dataset) and its rows (the spec fields of a method, and the published numbers we have, each with its
source). A cell's runs are the finished runs whose spec contains the row's and the column's ``match``
fields; a missing published number stays empty and is shown as "n/a", never estimated::

    name: food101-table
    title: "UPMC-Food 101: accuracy and F1"
    source: "Guo et al., NeurIPS 2024 (arXiv 2411.01409)"
    suite: {name: paper-food101, seeds: [0, 1, 2], datasets: [{preset: food101}], methods: [...]}
    columns:
      - {key: acc, label: Acc, metric: accuracy}
      - {key: f1, label: F1, metric: f1_macro}
    rows:
      - {label: Joint, match: {method: joint}}
      - {label: CGGM, match: {method: cggm}, published: {acc: 92.94}, source: "[secondary] wizwand.com"}

``render`` works from records alone; ``reproduce`` (the ``mmbalance reproduce`` command) first runs the
table's missing runs through the sweep, which reuses finished runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from mmbalance.common.core import FileName
from mmbalance.common.metric_catalogue import metric_facts
from mmbalance.common.safe_load import DocumentError, load_yaml_file
from mmbalance.reporting.results import PROTOCOLS, load
from mmbalance.reporting.tables import (
    Cell,
    Table,
    dataset_docs,
    finished,
    is_subset,
    rank_marks,
    write_runs,
    write_tables,
)

__all__ = ["PaperTable", "load_table", "resolve_table", "render", "reproduce", "PAPER_DIR"]

PAPER_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "paper"


class StrictModel(BaseModel):
    # As mmbalance.training.data.StrictModel (unknown keys are errors), without importing the data stack:
    # rendering a table from records stays light.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _spec_error(message: str) -> Exception:
    from mmbalance.common.spec import SpecError  # the CLI's user-error type; imported only when raising

    return SpecError(message)


class CellSource(StrictModel):
    match: dict[str, Any] = {}  # spec fields added to the row's for this column
    metric: str | None = None  # replaces the column's metric


class ColumnSpec(StrictModel):
    key: str  # what ``published`` and per-row overrides refer to
    label: str
    metric: str  # a key of final.json's metrics (``accuracy``, ``mae``, ``dice_WT``) or ``probe/<modality>``
    match: dict[str, Any] = {}  # spec fields of this column's runs (e.g. ``{dataset: mosi}``)
    decimals: int = 2


class RowSpec(StrictModel):
    label: str
    match: dict[
        str, Any
    ] = {}  # spec fields of this row's runs (``{method: cggm, method_params: {rho: 1.0}}``)
    columns: dict[str, CellSource] = {}  # per-column overrides (e.g. unimodal rows: one modality per column)
    published: dict[str, float | None] = {}  # column key -> the paper's number; absent or null: "n/a"
    source: str = ""  # where the published numbers come from (required when there are any)
    ranked: bool = True  # take part in best / second-best marks
    note: str = ""  # e.g. why this row cannot be run


class PaperTable(StrictModel):
    name: FileName  # the tables' file names
    title: str
    source: str  # the paper (and table) this reproduces
    protocol: str = "best-valid-test"  # the protocol our numbers are shown under by default
    suite: dict[str, Any] | str | None = None  # embedded suite, or a path relative to this file
    columns: list[ColumnSpec]
    rows: list[RowSpec]
    notes: list[str] = []

    @model_validator(mode="after")
    def _consistent(self) -> PaperTable:
        keys = [c.key for c in self.columns]
        if len(set(keys)) != len(keys):
            raise ValueError(f"columns: duplicate keys in {keys}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol: {self.protocol!r} is not one of {list(PROTOCOLS)}")
        for r in self.rows:
            unknown = sorted((set(r.published) | set(r.columns)) - set(keys))
            if unknown:
                raise ValueError(f"row {r.label!r}: unknown column key(s) {unknown}; columns are {keys}")
            if any(v is not None for v in r.published.values()) and not r.source:
                raise ValueError(f"row {r.label!r}: published numbers need a `source`")
        return self


def resolve_table(name_or_path: str | Path) -> Path:
    """A table spec path, or the name of one in ``benchmarks/paper/``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = PAPER_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in PAPER_DIR.glob("*.yaml"))
    raise _spec_error(f"unknown table {str(name_or_path)!r}: not a file, and not one of {', '.join(known)}")


def load_table(name_or_path: str | Path) -> tuple[PaperTable, Path]:
    path = resolve_table(name_or_path)
    try:
        return PaperTable.model_validate(load_yaml_file(path)), path
    except DocumentError as e:
        raise _spec_error(str(e)) from None
    except ValidationError as e:
        from mmbalance.common.spec import _format_validation

        raise _spec_error(f"{path}: invalid table spec:\n{_format_validation(e)}") from None


def table_suite(table: PaperTable, path: Path):
    """The table's suite (validated), embedded or referenced."""
    from mmbalance.common.spec import SpecError, _format_validation
    from mmbalance.scaleout.sweep import Suite, load_suite

    if table.suite is None:
        raise SpecError(f"{path}: the table has no `suite`, so there is nothing to run")
    if isinstance(table.suite, str):
        return load_suite(path.parent / table.suite)
    try:
        return Suite.model_validate(table.suite)
    except ValidationError as e:
        raise SpecError(f"{path}: invalid suite:\n{_format_validation(e, prefix='suite')}") from None


# --- cells -----------------------------------------------------------------------------------------------
@dataclass
class Ours:
    cell: Cell
    note: str = ""  # ambiguity or why it is empty
    unfinished: list[str] = field(default_factory=list)  # runs of the cell that did not finish


def cell_source(row: RowSpec, col: ColumnSpec) -> tuple[dict[str, Any] | None, str]:
    """The spec fields a cell's runs contain and the metric it shows; ``None`` for a row without runs
    of its own (one that cannot be run)."""
    override = row.columns.get(col.key, CellSource())
    if not (row.match or override.match):
        return None, col.metric
    return {**col.match, **row.match, **override.match}, override.metric or col.metric


def our_cell(runs: pd.DataFrame, match: dict[str, Any], metric: str, decimals: int) -> Ours:
    """Mean ± std of ``metric`` over the finished seeds of the runs whose spec contains ``match``
    (``runs``: a ``results.load`` frame, every status)."""
    empty = Cell(decimals=decimals)
    if runs.empty:
        return Ours(empty)
    hit = runs[runs["spec"].map(lambda s: is_subset(match, s))]
    unfinished = [
        f"{r.method} seed {r.seed}: {r.status}" + (f" ({r.reason})" if r.reason else "") + f", run {r.run_id}"
        for r in hit[hit["status"] != "done"].itertuples()
    ]
    done = finished(hit)
    if done.empty or metric not in done or done[metric].isna().all():
        return Ours(empty, unfinished=unfinished)
    sizes = done.groupby("config", sort=False).size()
    note = ""
    if len(sizes) > 1:  # several configurations match: never average across them
        note = f"{len(sizes)} configurations match {match}; shown: the one with most seeds ({sizes.max()})"
    cell = Cell.of(done[done["config"] == sizes.idxmax()][metric], metric)
    cell.decimals = decimals
    return Ours(cell, note, unfinished)


def render(
    table: PaperTable,
    runs: pd.DataFrame,
    protocol: str | None = None,
    missing: list[str] | None = None,
    asked: int | None = None,
) -> tuple[Table, pd.DataFrame]:
    """The side-by-side table (published | ours mean ± std | Δ per column) and its CSV rows. A cell
    with fewer finished seeds than ``asked`` (default: the most any cell has) shows its n and is never
    ranked; the runs that did not finish are listed under the table."""
    protocol = protocol or table.protocol
    ours: dict[tuple[int, str], Ours] = {}
    for i, row in enumerate(table.rows):
        for col in table.columns:
            match, metric = cell_source(row, col)
            empty = Ours(Cell(decimals=col.decimals))
            ours[i, col.key] = empty if match is None else our_cell(runs, match, metric, col.decimals)
    asked = asked or max((o.cell.n for o in ours.values()), default=0)
    for o in ours.values():
        o.cell.show_n, o.cell.asked = 0 < o.cell.n < asked, asked
    for col in table.columns:
        cells = [ours[i, col.key].cell for i in range(len(table.rows))]
        rank_marks(
            cells,
            metric_facts(col.metric).higher_is_better,
            [r.ranked and not c.show_n for r, c in zip(table.rows, cells, strict=True)],
        )

    header, body, csv = ["Method"], [], []
    for col in table.columns:
        header += [f"{col.label} paper", f"{col.label} ours", f"{col.label} Δ"]
    for i, row in enumerate(table.rows):
        cells: list[str | Cell] = [row.label]
        for col in table.columns:
            value = row.published.get(col.key)
            pub = Cell(value, decimals=col.decimals) if value is not None else Cell(decimals=col.decimals)
            o = ours[i, col.key].cell
            delta = Cell(
                None if o.empty or pub.empty else o.mean - pub.mean, decimals=col.decimals, signed=True
            )
            cells += [pub, o, delta]
            csv.append(
                {
                    "table": table.name,
                    "row": row.label,
                    "column": col.label,
                    "metric": col.metric,
                    "published": pub.mean,
                    "ours_mean": o.mean,
                    "ours_std": o.std,
                    "n": o.n,
                    "n_asked": asked,
                    "delta": delta.mean,
                    "mark": o.mark,
                    "protocol": protocol,
                    "source": row.source,
                }
            )
        body.append(cells)

    notes = [
        f"Paper: {table.source}.",
        f"Ours: {PROTOCOLS[protocol]}; mean ± std (ddof=1) over the finished seeds; "
        "Δ = ours − paper. Best ours in bold, second best in italics (underlined in LaTeX).",
        "n/a: the paper's number is not on file (never estimated), or we have no finished run.",
    ]
    if any(o.cell.show_n for o in ours.values()):
        notes.append(
            f"(n=k/{asked}): only k of the {asked} seeds asked finished; such a cell is never ranked."
        )
    notes += [f"{r.label}: published numbers from {r.source}." for r in table.rows if r.source]
    notes += [f"{r.label}: {r.note}" for r in table.rows if r.note]
    notes += [f"{table.rows[i].label} / {k}: {o.note}" for (i, k), o in ours.items() if o.note]
    notes += table.notes
    notes += [f"Not run: {m}" for m in missing or []]
    unfinished = sorted({u for o in ours.values() for u in o.unfinished})
    if unfinished:
        notes += ["Runs not finished (not in the means):", *(f"- {u}" for u in unfinished)]
    return Table(table.title, header, body, notes), pd.DataFrame(csv)


def suite_seeds(table: PaperTable, path: Path) -> int | None:
    """How many seeds the table's suite asks for (read from YAML alone: no planning)."""
    suite = table.suite
    if isinstance(suite, str):
        try:
            suite = load_yaml_file(path.parent / suite)
        except (OSError, DocumentError):
            return None
    seeds = suite.get("seeds") if isinstance(suite, dict) else None
    return len(seeds) if isinstance(seeds, list) and seeds else None


def cell_matches(table: PaperTable) -> list[dict[str, Any]]:
    """The spec fields of every cell's runs."""
    matches = [cell_source(row, col)[0] for row in table.rows for col in table.columns]
    return [m for m in matches if m is not None]


def render_from_records(
    name_or_path: str | Path,
    results: Path | str,
    out: Path | str | None = None,
    protocol: str | None = None,
    missing: list[str] | None = None,
    run_ids: set[str] | None = None,
    figures: bool = False,
) -> list[Path]:
    """Write ``<out>/tables/<table name>.{md,tex,csv}`` from the records under ``results`` (and with
    ``figures``, the figures of the table's runs under ``<out>/figures``)."""
    table, path = load_table(name_or_path)
    protocol = protocol or table.protocol
    runs = load(results, protocol)
    if run_ids is not None and not runs.empty:
        runs = runs[runs["run_id"].isin(run_ids)]
    out = Path(out) if out is not None else Path(results)
    rendered = render(table, runs, protocol, missing, suite_seeds(table, path))
    paths = write_tables([rendered], out / "tables", table.name, f"Table {table.name}")
    runs = finished(runs)
    matches = cell_matches(table)
    mine = runs[runs["spec"].map(lambda s: any(is_subset(m, s) for m in matches))] if not runs.empty else runs
    paths.append(write_runs(out / "tables", table.name, list(mine["run_id"])))  # what a staleness test checks
    if figures and not mine.empty:
        from mmbalance.reporting.figures import suite_figures

        paths += suite_figures(mine, out / "figures", table.name)
    return paths


def missing_data(suite: Any, data_root: Path | None = None) -> list[str]:
    """The full ``verify`` message (every missing file, the expected layout) of each dataset of ``suite``
    whose files are not there. CLI-level: it builds dataset adapters."""
    from mmbalance.common.spec import validate_spec
    from mmbalance.training.data import DataMissingError
    from mmbalance.training.runner import make_adapter

    problems = []
    for doc, _ in dataset_docs(suite):
        try:
            make_adapter(validate_spec(doc), data_root).verify()
        except DataMissingError as e:
            problems.append(str(e))
    return problems


def reproduce(
    name_or_path: str | Path,
    results: Path | str = "results",
    data_root: Path | None = None,
    out: Path | str | None = None,
    protocol: str | None = None,
    device: str = "auto",
    progress: bool = True,
    figures: bool = True,
) -> tuple[list[Path], list[str]]:
    """Run the table's missing runs (finished ones are reused), then write the table beside the paper's
    numbers. Returns the written files and one line per entry that could not run (missing data, ...)."""
    from mmbalance.scaleout.sweep import plan, run_local
    from mmbalance.training.runner import RunOptions

    table, path = load_table(name_or_path)
    if table.suite is None:  # nothing to run (e.g. the memory table): render what the records hold
        return render_from_records(
            path, results, out, protocol, ["the table has no suite: nothing to run"]
        ), []
    suite = table_suite(table, path)
    planned = plan(suite, data_root)
    missing = [f"{p.label}: {p.skip_reason}" for p in planned if p.spec is None]
    outcomes = run_local(planned, Path(results), data_root, RunOptions(device=device, progress=progress))
    finished = ("done", "skipped")  # skipped: finished before, reused
    missing += [f"{p.label}: {r.status} ({r.reason})" for p, r in outcomes if r.status not in finished]
    run_ids = {r.run_id for _, r in outcomes if r.status in finished}
    paths = render_from_records(path, results, out, protocol, missing, run_ids, figures=figures)
    return paths, missing
