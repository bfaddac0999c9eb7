"""Tables from run records: mean ± std over seeds per dataset, method and metric, with statistics.

Built on ``results.load`` (one DataFrame row per run, whatever its state), which reads records alone,
never the runner, a method or a dataset adapter, so a table is rebuilt without running any training
code (``tests/test_report.py`` checks that).

Two protocols pick the value of a run (both are stored in ``final.json``):

- ``best-valid-test`` (default): test metrics at the epoch with the best validation score.
- ``best-valid``: the best validation score of each metric over the epochs, no test split: what the
  CGGM code reports, so that our numbers can be set beside the published ones like for like.

One table per *comparison key* (``comparison.py``): runs whose specs are equal but for the method, its own
parameters and the seed, on the same data. A folder with several keys (ad-hoc runs at another learning
rate, say) gives one table per key, titled by what differs; a table of fixture-data runs is labelled so
and never ranked. A row is one *configuration*: the canonical run spec without its seed. Its label is the
method plus the spec fields that tell it apart from the other rows of its table (``unimodal(modality=m2)``,
``cggm(rho=1.0)``). A cell is ``mean ± std`` over the configuration's finished seeds among those asked
(sample std, ddof=1; none with one seed). Per row:

- ``n``: finished seeds out of those asked: the suite's seeds; without a suite, the seeds the table's rows
  share (held by at least half of its rows, so one stray run at another seed marks nothing incomplete;
  such extra seeds are listed under the table and left out of the means). A row with fewer is
  *incomplete*: it is shown, never ranked, and its unfinished runs (failed, interrupted, running,
  unreadable) are listed under the table with their reason.
- ``Δ vs joint``: the primary metric's mean difference to the joint training run of the same key over the
  seeds both have, a paired t-test, Holm-corrected over the table's tested rows (``stats.py`` says why not
  Wilcoxon). When the seed draws the data, a pair whose data fingerprints differ is flagged and left out.
- Best and second best per metric among the *ranked* rows: complete, multimodal balancing methods and
  joint. Reference rows are never ranked: the unimodal models (the best one is marked) and the unimodal
  ensemble (``unimodal_ensemble``), the headroom a balancing method aims at.

Across the tables (two or more): average ranks of the methods every table has, Friedman's test and the
Nemenyi critical difference, and the critical-difference figure (``figures.critical_difference``).

A new metric column is a ``final.json`` key added to ``TASK_METRICS`` (its label, direction and precision
in ``metric_catalogue.CATALOGUE``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mmbalance.common.comparison import BASELINE, REFERENCES, KeyBlock, fingerprint_mismatches, split_blocks
from mmbalance.common.metric_catalogue import metric_facts
from mmbalance.reporting import stats
from mmbalance.reporting.results import PROTOCOLS, config_key, flatten, load
from mmbalance.reporting.tables import (
    FIXTURE_NOTE,
    Cell,
    Row,
    Table,
    aggregate,
    finished,
    is_subset,
    primary_metric,
    rank_marks,
    write_runs,
    write_tables,
)

__all__ = [
    "PROTOCOLS",
    "REFERENCES",
    "Block",
    "load_runs",
    "run_tables",
    "rank_table",
    "report",
    "suite_filter",
    "config_key",
]

# Columns per task kind, in the papers' order; segmentation shows every Dice region the record has.
TASK_METRICS = {
    "classification": ["accuracy", "f1_macro"],
    # MOSI/MOSEI (mosi_metrics), then CH-SIMS (sims_metrics): a run has the one set or the other
    "regression": ["acc2_non0", "acc7", "f1_non0", "acc5", "acc3", "acc2", "f1", "mae", "corr"],
}


# --- loading ------------------------------------------------------------------------------------------
def load_runs(results: Path | str, protocol: str = "best-valid-test") -> pd.DataFrame:
    """The finished runs of ``results.load`` (what a cell or a figure averages)."""
    return finished(load(results, protocol))


# --- suites: which runs belong to one --------------------------------------------------------------------
def suite_filter(suite: Any) -> list[dict[str, Any]]:
    """The spec fragments a run of ``suite`` must contain (one per dataset x method entry); a run
    belongs to the suite when one fragment is a subset of its spec."""
    from mmbalance.common.spec import compose
    from mmbalance.scaleout.sweep import spec_fragment

    return [
        {"method": "joint", **compose(suite.base, spec_fragment(d), m)}
        for d in suite.datasets
        for m in suite.methods
    ]


def select_suite(runs: pd.DataFrame, suite: Any, results: Path | None = None) -> pd.DataFrame:
    """The runs of ``suite``: those its last sweep planned (``<results>/sweeps/<suite>.runs``), else those
    a fragment of it is a subset of (another suite's run can match: a paper table's CGGM ablation on the
    same data). Under the tuned protocol a run's chosen values are its own, not the fragment's."""
    from mmbalance.reporting.tables import RUNS_SUFFIX, SWEEPS, read_runs
    from mmbalance.reporting.tuned_report import without_tuning

    if runs.empty:
        return runs
    planned = results / SWEEPS / f"{suite.name}{RUNS_SUFFIX}" if results is not None else None
    if planned is not None and planned.is_file():
        return runs[runs["run_id"].isin(read_runs(planned))]
    fragments = suite_filter(suite)
    seeds = set(suite.seeds).union(*(e.get("seeds", []) for e in suite.datasets))

    def belongs(spec: dict[str, Any]) -> bool:
        if spec["seed"] not in seeds:
            return False
        if not spec.get("tuned"):
            return any(is_subset(f, spec) for f in fragments)
        own = [{k: v for k, v in f.items() if k != "method_params"} for f in fragments]
        return any(is_subset(f, without_tuning(spec, f)) for f in own)

    return runs[runs["spec"].map(belongs)]


# --- rows ------------------------------------------------------------------------------------------------
def mark_best_unimodal(rows: Sequence[Row], metric: str) -> None:
    uni = [r for r in rows if r.method == "unimodal" and not r.cells[metric].empty]
    if uni:
        pick = max if metric_facts(metric).higher_is_better else min
        pick(uni, key=lambda r: r.cells[metric].mean).best_unimodal = True


def compare_to_baseline(rows: Sequence[Row], metric: str) -> Row | None:
    """Δ of ``metric`` and the Holm-adjusted paired t-test p of every row against joint training (its
    configuration with most finished seeds); only complete rows are tested. Returns the joint row."""
    joints = [r for r in rows if r.method == BASELINE and r.seeds]
    if not joints or len(rows) < 2:
        return None
    base = max(joints, key=lambda r: r.seeds)
    raw = {}
    for r in rows:
        if r is base:
            continue
        # seed-drawn data: the key omits the fingerprint, so check that each pair saw the same data
        r.unpaired = fingerprint_mismatches(base.fingerprints, r.fingerprints)
        paired = r.per_seed[metric].drop(index=r.unpaired)
        delta, p, _ = stats.paired_vs_baseline(base.per_seed[metric], paired)
        r.delta = Cell(delta, decimals=metric_facts(metric).decimals, signed=True)
        if p is not None and r.complete and base.complete:
            raw[r.config] = p
    adjusted = stats.holm(raw)
    for r in rows:
        r.p = adjusted.get(r.config)
        if r.p is not None and r.p < stats.ALPHA:
            r.delta.flag = "*"
    return base


def seeds_friedman(rows: Sequence[Row], metric: str) -> str:
    """Friedman's test over the seeds (blocks) of the ranked rows, as a note ("" when it does not apply)."""
    ranked = [r for r in rows if r.ranked]
    scores = pd.DataFrame({r.label: r.per_seed[metric] for r in ranked}).dropna()
    result = stats.friedman(scores)
    if result is None:
        return ""
    chi2, p = result
    return (
        f"Friedman test over the seeds (blocks: {len(scores)} seeds finished by every ranked row; "
        f"{scores.shape[1]} ranked rows): χ² = {chi2:.2f}, p {_p_is(p)}."
    )


def _p_text(p: float | None) -> str:
    return "n/a" if p is None else "< 0.001" if p < 0.001 else f"{p:.3f}"


def _p_is(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def default_metrics(runs: pd.DataFrame, task: str) -> list[str]:
    present = [c for c in metric_columns(runs) if runs[c].notna().any()]
    if task in TASK_METRICS:
        return [m for m in TASK_METRICS[task] if m in present]
    return [c for c in present if c != "loss"]


def metric_columns(runs: pd.DataFrame) -> list[str]:
    """The final-metric columns of a ``results.load`` frame (not the spec's, not the probes)."""
    spec_keys = {k for s in runs["spec"] for k in flatten(s)} if "spec" in runs else set()
    meta = {"run_id", "path", "status", "reason", "spec", "config", "task", "modalities", "key", "fixture",
            "data_fingerprint", "block", "block_order", "protocol", "label",  # tuned_report.assign_blocks
            "peak_memory_mb", "method_memory_mb", "extra_memory_mb",  # resources (memory-table), not metrics
            "selection_metric", "best_epoch", "epochs_done", "seconds"}  # fmt: skip
    return [
        c
        for c in runs.columns
        if c not in meta and c not in spec_keys and not c.startswith(("probe/", "modality/"))
    ]


def weak_modality(runs: pd.DataFrame) -> str | None:
    """The modality whose unimodal probe scores worst inside the multimodal models of this table."""
    runs = finished(runs)
    if runs.empty:
        return None
    full = max(len(m) for m in runs["modalities"])
    multi = runs[runs["modalities"].map(len) == full]
    probes = {c: multi[c].mean() for c in multi.columns if c.startswith("probe/") and multi[c].notna().any()}
    if not probes:
        return None
    higher = metric_facts(multi["selection_metric"].iloc[0]).higher_is_better
    pick = min if higher else max
    return pick(probes, key=probes.get).removeprefix("probe/")


# --- tables ----------------------------------------------------------------------------------------------
@dataclass
class Block:
    """The table of one comparison key, its CSV rows, and what the cross-table ranking needs."""

    table: Table
    csv: pd.DataFrame
    metric: str  # the primary metric, the one compared and ranked
    scores: dict[str, float]  # ranked row label -> mean of the primary metric, rounded as shown
    unranked: list[str] = field(default_factory=list)  # multimodal methods not ranked here (incomplete)
    fixture: bool = False  # fixture data: left out of the ranking across tables
    slug: str = ""  # the file-name part of its figures (``comparison.KeyBlock.slug``)
    protocol: str = "defaults"  # tuned or defaults (``comparison.KeyBlock.protocol``)
    task: str = ""
    name: str = ""  # the suite's block name, when it has one (column heads of the ranking)


def run_tables(
    runs: pd.DataFrame,
    protocol: str,
    metrics: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
) -> list[Block]:
    """One table per comparison key from a ``results.load`` frame (every status); ``seeds``: seeds per
    row (the suite's)."""
    return [key_table(kb, protocol, metrics, seeds) for kb in split_blocks(runs)]


def key_table(
    kb: KeyBlock, protocol: str, metrics: Sequence[str] | None = None, seeds: Sequence[int] | None = None
) -> Block:
    """The table of one comparison key: rows, marks, Δ vs joint, notes and CSV rows."""
    runs_t = kb.runs
    dataset, task = runs_t["dataset"].iloc[0], runs_t["task"].iloc[0]
    done = finished(runs_t)
    cols = list(metrics) if metrics else default_metrics(done, task)
    weak = weak_modality(done)
    probe_cols = [f"probe/{weak}"] if weak else []
    primary = primary_metric(runs_t, cols[0] if cols else "")
    compared = [primary] if primary and primary not in cols else []
    rows = aggregate(runs_t, cols + probe_cols + compared, seeds, kb.fixture)
    for r in rows:
        for m in probe_cols:  # the probes report the task's primary metric
            r.cells[m].decimals = metric_facts(primary).decimals
    for m in cols:
        rank_marks([r.cells[m] for r in rows], metric_facts(m).higher_is_better, [r.ranked for r in rows])
    base = compare_to_baseline(rows, primary) if primary else None
    if primary:
        mark_best_unimodal(rows, primary)

    header = ["Method"] + [metric_facts(m).label for m in cols]
    header += [f"{weak} probe {metric_facts(primary).label} (weak)" for _ in probe_cols]
    if base is not None:
        header += [f"Δ {metric_facts(primary).label} vs joint", "p (Holm)"]
    header += ["n"]
    body: list[list[str | Cell]] = []
    for r in rows:
        line: list[str | Cell] = [r.shown_label, *(r.cells[m] for m in cols + probe_cols)]
        if base is not None:
            line += [r.delta or "", _p_text(r.p) if r is not base else ""]
        body.append(line + [r.n_text])
    notes = _notes(rows, cols, protocol, primary, weak, base, kb)
    title = kb.title
    csv = _csv_rows(rows, dataset, task, title, primary, protocol)
    # as displayed, so that methods equal in the table tie in the ranks
    scores = {r.label: r.cells[primary].rounded() for r in rows if primary and r.ranked}
    unranked = [r.label for r in rows if r.multimodal and not r.reference and not r.ranked]
    return Block(Table(title, header, body, notes), csv, primary, scores, unranked, kb.fixture, kb.slug,
                 kb.protocol, task if isinstance(task, str) else "", kb.block or "")  # fmt: skip


def _csv_rows(
    rows: Sequence[Row], dataset: str, task: str, title: str, primary: str, protocol: str
) -> pd.DataFrame:
    """One CSV row per table row and metric: the numbers of the table, for scripts."""
    return pd.DataFrame(
        [
            {
                "dataset": dataset,
                "task": task,
                "block": title,
                "method": r.label,
                "metric": m,
                "mean": c.mean,
                "std": c.std,
                "n": c.n,
                "n_asked": r.asked,
                "complete": r.complete,
                "ranked": r.ranked,
                "reference": r.reference,
                "best_unimodal": r.best_unimodal,
                "mark": c.mark,
                "delta_vs_joint": r.delta.mean if r.delta is not None and m == primary else None,
                "p_holm": r.p if m == primary else None,
                "protocol": protocol,
            }
            for r in rows
            for m, c in r.cells.items()
        ]
    )


def _notes(
    rows: Sequence[Row],
    cols: Sequence[str],
    protocol: str,
    primary: str,
    weak: str | None,
    base: Row | None,
    kb: KeyBlock,
) -> list[str]:
    notes = [
        f"Fixture data ({FIXTURE_NOTE}): a check of the code path, not a result; never ranked."
    ] * kb.fixture
    notes += [
        f"Protocol: {PROTOCOLS[protocol]}. Mean ± std (sample std, ddof=1) over the finished seeds; "
        "n: seeds finished / seeds asked.",
        "Best in bold, second best in italics (underlined in LaTeX), among the ranked rows: complete "
        "multimodal rows, not the † reference rows"
        + ("; MAE: lower is better." if any(not metric_facts(m).higher_is_better for m in cols) else "."),
    ]
    if base is not None:
        tested = sum(r.p is not None for r in rows)
        notes.append(
            f"Δ vs joint: mean over the seeds both rows finished of (row − {base.label}) in "
            f"{metric_facts(primary).label}; p: {stats.PAIRED_TEST}, Holm-corrected over the {tested} complete "
            f"row(s) tested; * p < {stats.ALPHA}. A paired t-test, not Wilcoxon's signed-rank test: with 5 "
            "seeds the latter's smallest two-sided p is 0.0625. Incomplete rows are not tested."
        )
    if any(r.reference for r in rows):
        notes.append(
            "† Reference rows, never ranked: "
            + "; ".join(f"{m}: {what}" for m, what in REFERENCES.items() if any(r.method == m for r in rows))
            + " (the best unimodal model is marked)."
        )
    if weak:
        notes.append(
            f"'{weak} probe': {'test' if protocol == 'best-valid-test' else 'validation'} "
            f"{metric_facts(primary).label} of a linear probe on the weakest modality's encoder features "
            f"({weak}: worst probe score inside the multimodal models)."
        )
    friedman_note = seeds_friedman(rows, primary) if primary else ""
    notes += [friedman_note] if friedman_note else []
    if any(not r.complete for r in rows):
        notes.append("Incomplete rows (fewer finished seeds than asked) are shown but never ranked.")
    extra = sorted({s for r in rows for s in r.extra})
    notes += [
        f"Seed {s} finished by only some rows ({', '.join(r.label for r in rows if s in r.extra)}): "
        "not in the means, the tests or n." for s in extra
    ]  # fmt: skip
    notes += [
        f"{r.label}: data fingerprint differs from {base.label}'s at seed(s) "
        f"{', '.join(map(str, r.unpaired))}; those seeds are not paired." for r in rows if r.unpaired
    ]  # fmt: skip
    unfinished = [f"- {r.label} {u}" for r in rows for u in r.unfinished]
    unrecorded = sorted({s for r in rows for s in r.unrecorded})
    unfinished += [
        f"- seed {s}, no run record: {', '.join(r.label for r in rows if s in r.unrecorded)}"
        for s in unrecorded
    ]
    if unfinished:
        notes += ["Runs not finished (not in the means):", *unfinished]
    return notes


# --- across tables ---------------------------------------------------------------------------------------
@dataclass
class Ranking:
    """Average ranks over the tables, with Friedman's test and the Nemenyi post-hoc comparison."""

    table: Table
    csv: pd.DataFrame
    average: pd.Series  # method -> average rank (1 = best), sorted
    nemenyi: pd.DataFrame | None  # pairwise p-values (None with fewer than 3 methods)
    cd: float  # Nemenyi critical difference at stats.ALPHA
    left_out: dict[str, str] = field(default_factory=dict)  # method -> why it is not ranked

    def caption(self) -> str:
        """Which methods the ranking leaves out, and why (the critical-difference figure's caption)."""
        if not self.left_out:
            return ""
        by_reason: dict[str, list[str]] = {}
        for m, why in self.left_out.items():
            by_reason.setdefault(why, []).append(m)
        return "Not ranked: " + "; ".join(f"{', '.join(sorted(ms))} ({why})" for why, ms in by_reason.items())


def left_out(blocks: Sequence[Block], scores: pd.DataFrame, common: Sequence[str]) -> dict[str, str]:
    """Method -> why the ranking across ``blocks`` leaves it out: a reference row, absent from some
    tables (a method that refuses a task kind), or incomplete in one."""
    why: dict[str, str] = {}
    for b in blocks:
        refs = b.csv[b.csv["reference"]]["method"] if "reference" in b.csv else []
        why.update({str(m).split("(")[0]: "reference rows, never ranked" for m in refs})
    for m in scores.columns:
        if m not in common:
            absent = [t for t in scores.index if pd.isna(scores.loc[t, m])]
            why[m] = f"absent or incomplete in {len(absent)} of {len(scores)} tables"
    for b in blocks:
        for m in b.unranked:
            why.setdefault(m, "incomplete in a table")
    return why


def rank_table(blocks: Sequence[Block], title: str = "Average rank across tables") -> Ranking | None:
    """Average ranks of the methods ranked in every table (blocks: the tables), ``None`` with fewer
    than 2 tables or 2 such methods."""
    # Fixture data is a check of the code, not a result; a table with one ranked row (a lone ad-hoc
    # run) ranks nothing and would leave no method common to every table.
    blocks = [b for b in blocks if not b.fixture and len(b.scores) >= 2]
    if len(blocks) < 2:
        return None
    titles = [b.name or b.table.title for b in blocks]
    if len(set(titles)) < len(titles):  # a block swept over a grid: its keys' titles tell them apart
        titles = [b.table.title for b in blocks]
    scores = pd.DataFrame([pd.Series(b.scores, dtype=float) for b in blocks], index=titles)
    common = [c for c in scores.columns if scores[c].notna().all()]
    if len(common) < 2:
        return None
    sign = [1.0 if metric_facts(b.metric).higher_is_better else -1.0 for b in blocks]
    oriented = scores[common].mul(sign, axis=0)
    ranks = stats.average_ranks(oriented)
    average = ranks.mean().sort_values()
    k, n = len(common), len(blocks)
    cd = stats.critical_difference(k, n)
    result = stats.friedman(oriented)
    header = ["Method", *(f"{t} {metric_facts(b.metric).label}" for t, b in zip(titles, blocks, strict=True))]
    body: list[list[str | Cell]] = [
        [m, *(f"{ranks.loc[t, m]:.1f}" for t in titles), Cell(float(average[m]), decimals=2)]
        for m in average.index
    ]
    rank_marks([row[-1] for row in body], higher=False)
    notes = [
        f"Rank of each method's mean primary metric in each table (1 = best; ties share the mean rank), "
        f"among the {k} methods ranked in all {n} tables (complete, multimodal, not reference rows).",
    ]
    if result is not None:
        chi2, p = result
        notes.append(
            f"Friedman test (blocks: the {n} tables): χ² = {chi2:.2f}, p {_p_is(p)}. Nemenyi critical "
            f"difference at α = {stats.ALPHA}: {cd:.2f} ranks; two methods whose average ranks differ by "
            "less are not told apart (see the critical-difference figure)."
        )
    why = left_out(blocks, scores, common)
    csv = pd.DataFrame(
        [
            {"dataset": "all", "task": t, "method": m, "metric": "rank", "mean": ranks.loc[t, m]}
            for t in titles
            for m in average.index
        ]  # fmt: skip
        + [
            {"dataset": "all", "task": "average", "method": m, "metric": "rank", "mean": average[m]}
            for m in average.index
        ]  # fmt: skip
    )
    nemenyi = stats.nemenyi(oriented) if k >= 3 else None
    ranking = Ranking(Table(title, header + ["Avg rank"], body, notes), csv, average,
                      nemenyi, cd, why)  # fmt: skip
    if why:
        ranking.table.notes.append(ranking.caption() + ".")
    return ranking


def report(
    results: Path | str,
    suite: Path | str | None = None,
    out: Path | str | None = None,
    protocol: str = "best-valid-test",
    figures: bool = True,
    methods: Sequence[str] | None = None,
    jobs: int = 1,
) -> list[Path]:
    """Tables (and figures, drawn in ``jobs`` processes) of the runs under ``results``: only the suite's
    runs if given, and only the given ``methods`` (e.g. ``["joint", "cggm"]`` for a with / without
    figure). Unfinished runs are
    counted and listed, never averaged; a record that cannot be read is left out with a
    ``results.RecordWarning`` naming the file."""
    out = Path(out) if out is not None else Path(results)
    runs = load(results, protocol)
    name, heading, seeds, s = "all-runs", f"All runs in {results}", None, None
    if suite is not None:
        from mmbalance.reporting.tuned_report import assign_blocks
        from mmbalance.scaleout.sweep import load_suite

        s = load_suite(suite)
        runs, name, heading, seeds = select_suite(runs, s, Path(results)), s.name, f"Suite {s.name}", s.seeds
        runs = assign_blocks(runs, s) if not runs.empty else runs  # tables titled by the suite's blocks
    if methods and not runs.empty:
        runs = runs[runs["method"].isin(methods)]
        name += "-" + "-".join(methods)
    if finished(runs).empty:
        what = f"{len(runs)} run(s), none finished" if len(runs) else "no runs"
        raise FileNotFoundError(
            f"no finished runs{' of suite ' + name if suite else ''} under {Path(results) / 'runs'} ({what})"
        )
    blocks = run_tables(runs, protocol, seeds=seeds)
    rankings = rankings_of(blocks, s)
    tables = [(b.table, b.csv) for b in blocks] + [(r.table, r.csv) for _, r in rankings]
    if s is not None and "block" in runs.columns:
        from mmbalance.reporting.tuned_report import laziness_table, tuned_vs_defaults

        tables += [t for t in (laziness_table(runs, s.protocol), tuned_vs_defaults(runs)) if t is not None]
    paths = write_tables(tables, out / "tables", name, heading)
    paths.append(
        write_runs(
            out / "tables", name, list(runs["run_id"])
        )  # finished or not: a diverged run is in the table
    )  # what a staleness test checks
    from mmbalance.reporting.incomplete_report import (
        write_incomplete_outputs,  # their own table files and figures
    )
    from mmbalance.reporting.modality_report import write_modality_outputs

    paths += write_modality_outputs(finished(runs), out, name, heading, figures)
    paths += write_incomplete_outputs(finished(runs), out, name, heading, figures)
    if figures:
        from mmbalance.reporting.figures import critical_difference, suite_figures

        paths += suite_figures(finished(runs), out / "figures", name, jobs)
        for suffix, ranking in rankings:
            if ranking.nemenyi is not None:
                paths += critical_difference(
                    ranking.average, ranking.nemenyi, ranking.cd, out / "figures" / f"{name}-critical-difference{suffix}",
                    title=f"{heading}, {ranking.table.title[0].lower()}{ranking.table.title[1:]}: "
                          f"{len(ranking.table.columns) - 2} tables, Friedman + Nemenyi",
                    caption=ranking.caption(),
                )  # fmt: skip
        if s is not None and "block" in runs.columns:
            from mmbalance.reporting.tuned_report import gain_figure, gain_frame

            gains = gain_frame(runs, s, s.protocol)
            if not gains.empty:
                paths += gain_figure(gains, out / "figures" / f"{name}-gain-vs-imbalance")
    return paths


def rankings_of(blocks: Sequence[Block], suite: Any | None) -> list[tuple[str, Ranking]]:
    """``(figure suffix, ranking)``: across every table; for a suite, across its protocol's tables of every
    task kind (the methods every kind admits) and across its classification tables (every method that
    classifies; ``-classification``)."""
    if suite is None:
        ranking = rank_table(blocks)
        return [("", ranking)] if ranking else []
    own = [b for b in blocks if b.protocol == suite.protocol]
    candidates = [
        ("", rank_table(own, f"Average rank across the {suite.protocol}-protocol tables of every task kind"))
    ]
    if any(b.task != "classification" for b in own):
        classification = [b for b in own if b.task == "classification"]
        title = f"Average rank across the {suite.protocol}-protocol classification tables"
        candidates.append(("-classification", rank_table(classification, title)))
    return [(suffix, r) for suffix, r in candidates if r is not None]
