"""Tables and figures of LNLN's incomplete-data protocol (``incomplete.py``), from the ``incomplete`` entry of
each run's ``modality_eval`` record; beside them, the whole-modality-missing score of the same runs.

- table ``<name>-incomplete``: per dataset and task kind, a row per configuration with the metric at each
  missing rate r (mean over the three position draws, then over seeds), LNLN's average over the ten rates
  (its Table 2) and the worst metric with one whole modality absent (``modality_eval``'s ``worst_missing``);
- figure ``<name>-<dataset>-<task>-incomplete``: the metric vs r, a line per method (mean over seeds, band
  ± std), the legend giving each method's average.

Runs recorded before the protocol existed have no entry: ``mmbalance evaluate RUN_DIR --write`` adds it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mmbalance.common.comparison import split_blocks
from mmbalance.common.metric_catalogue import metric_facts
from mmbalance.reporting.modality_report import modality_frame
from mmbalance.reporting.tables import Table, aggregate, cells_frame, rank_marks, write_tables

LEGEND_COLUMNS = 5

__all__ = ["incomplete_frame", "incomplete_tables", "incomplete_figures", "write_incomplete_outputs"]


def _rate(r: float) -> str:
    return f"incomplete/{r:.1f}"


def incomplete_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """``modality_frame(runs)`` restricted to runs with an ``incomplete`` entry, with a column per rate and
    ``incomplete_mean``."""
    frame = modality_frame(runs)
    if frame.empty:
        return frame
    frame = frame[frame["me_record"].map(lambda rec: "incomplete" in rec)].copy()
    for i, r in enumerate(frame["me_record"].iloc[0]["incomplete"]["rates"] if len(frame) else []):
        frame[_rate(r)] = frame["me_record"].map(lambda rec, i=i: rec["incomplete"]["curve"][i])
    frame["incomplete_mean"] = frame["me_record"].map(lambda rec: rec["incomplete"]["mean"])
    return frame


def incomplete_tables(runs: pd.DataFrame) -> list[tuple[Table, pd.DataFrame]]:
    frame = incomplete_frame(runs)
    out: list[tuple[Table, pd.DataFrame]] = []
    if frame.empty:
        return out
    for kb in split_blocks(frame):
        sub, metric = kb.runs, kb.runs["me_metric"].iloc[0]
        higher, label = bool(sub["me_higher"].iloc[0]), metric_facts(metric).label
        rates = sub["me_record"].iloc[0]["incomplete"]["rates"]
        cols = [_rate(r) for r in rates] + ["incomplete_mean", "worst_missing"]
        agg = aggregate(sub, cols)
        for row in agg:
            for c in cols:
                row.cells[c].decimals = metric_facts(metric).decimals
        for c in ("incomplete_mean", "worst_missing"):
            rank_marks([r.cells[c] for r in agg], higher, [r.multimodal for r in agg])
        header = (
            ["Method"] + [f"r={r:.1f}" for r in rates] + [f"Average {label}", "Worst w/o one modality", "n"]
        )
        rows = [[r.label, *(r.cells[c] for c in cols), str(r.seeds)] for r in agg]
        notes = [
            f"Test {label}, model of the selected epoch, with a fraction r of every modality's positions removed "
            "at once (LNLN's generate_m: word ids -> [UNK] keeping [CLS]/[SEP], sequence steps -> 0, fixed-size "
            "values -> train-split mean); each run averages three position draws (seeds 1111-1113), then "
            "mean ± std over n seeds.",
            "Average: LNLN's robustness score, the mean over the ten rates. Worst w/o one modality: the metric "
            "with the worst single modality absent (modality_eval.py), for comparison.",
        ]
        csv = cells_frame(agg, kb.runs["dataset"].iloc[0], kb.runs["task"].iloc[0], kb.title)
        out.append((Table(f"{kb.title}: incomplete data (LNLN protocol)", header, rows, notes), csv))
    return out


def incomplete_figures(runs: pd.DataFrame, out_dir: Path, name: str) -> list[Path]:
    from mmbalance.reporting.figures import _fit, _percent_axis, _save, full_runs, plt

    frame = incomplete_frame(runs)
    paths: list[Path] = []
    if frame.empty:
        return paths
    for kb in split_blocks(frame):
        multi, methods = full_runs(kb.runs)
        metric = kb.runs["me_metric"].iloc[0]
        cmap = plt.get_cmap("tab10")
        legend_rows = -(-len(methods) // LEGEND_COLUMNS)
        fig, ax = plt.subplots(figsize=(7.5, 4.0 + 0.17 * legend_rows), layout="constrained")
        for i, method in enumerate(methods):
            recs = [r["incomplete"] for r in multi.loc[multi["method"] == method, "me_record"]]
            curves = np.array([r["curve"] for r in recs])
            mean = curves.mean(0)
            std = curves.std(0, ddof=1) if len(curves) > 1 else np.zeros_like(mean)
            color = "black" if method == "joint" else cmap(i % 10)
            style = "-" if i < 10 else "--"
            avg = float(np.mean([r["mean"] for r in recs]))
            ax.plot(recs[0]["rates"], mean, style, color=color, lw=1.8 if method == "joint" else 1.2,
                    label=f"{method} ({avg:.{metric_facts(metric).decimals}f})")  # fmt: skip
            ax.fill_between(recs[0]["rates"], mean - std, mean + std, color=color, alpha=0.12)
        ax.set_xlabel("missing rate r (fraction of every modality's positions removed)")
        ax.set_ylabel(f"test {metric_facts(metric).label}")
        _percent_axis(ax, metric)
        # below the axes: with thirty methods no corner of the plot is free of curves
        fig.legend(loc="outside lower center", fontsize=7, ncol=LEGEND_COLUMNS, title="method (average over r)",
                   title_fontsize=7)  # fmt: skip
        ax.set_title(_fit(f"{kb.title}: incomplete data (LNLN protocol), mean ± std over seeds", 7.5))
        prefix = out_dir / f"{name}-{kb.slug}"
        paths += _save(fig, prefix.with_name(prefix.name + "-incomplete"))
    return paths


def write_incomplete_outputs(
    runs: pd.DataFrame, out: Path, name: str, heading: str, figures: bool = True
) -> list[Path]:
    """The incomplete-data table file and (optionally) figures; nothing when no record has the entry."""
    if not (tables := incomplete_tables(runs)):
        return []
    paths = write_tables(tables, out / "tables", f"{name}-incomplete", f"{heading}: incomplete data")
    return paths + (incomplete_figures(runs, out / "figures", name) if figures else [])
