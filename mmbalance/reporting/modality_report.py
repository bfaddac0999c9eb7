"""Tables and figures of the ``modality_eval`` records (see ``modality_eval.py`` for the definitions).

Reads ``final.json`` of the runs a ``report.load_runs`` frame lists (through its ``path`` column) and
nothing else, so it stays beside the main tables without touching them:

- table ``<name>-modality``: per dataset and task kind, a row per configuration with the dataset-level
  Shapley value of each modality, the sample-level imbalance degree (lower: more even), the equity index
  (higher: more even), the metric with each modality absent and the worst of them, and MultiBench's
  relative robustness (area under the noise curve) and effective robustness against joint training
  (mean over the modalities' noise curves); where the dataset labels each modality (CH-SIMS), how well each
  modality's own label predicts the target beside its Shapley value, and their rank correlation;
- figures ``<name>-<dataset>-<task>-contributions`` (Shapley bars per method) and
  ``<name>-<dataset>-<task>-robustness`` (metric vs noise level per modality, one panel per method);
- LNLN's incomplete-data protocol: table ``<name>-incomplete`` and figures ``...-incomplete``
  (``incomplete_report.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mmbalance.common.comparison import split_blocks
from mmbalance.common.metric_catalogue import metric_facts
from mmbalance.common.records import RunDir
from mmbalance.reporting.tables import Table, aggregate, cells_frame, rank_marks, write_tables
from mmbalance.training.modality_scores import effective_robustness

__all__ = ["modality_frame", "modality_tables", "modality_figures", "write_modality_outputs"]


def modality_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with one column per summary number of its ``modality_eval`` record; runs without a
    record (trained before it existed: score them with ``mmbalance evaluate``) or with a failed one
    are left out."""
    rows = []
    for _, r in runs.iterrows():
        if r.get("status", "done") != "done":
            continue
        rec = RunDir(Path(r["path"])).final().get("modality_eval")
        if rec is None or "error" in rec:  # not measured, or the measurement failed (the record says why)
            continue
        row = {**r.to_dict(), "me_metric": rec["metric"], "me_higher": rec["higher_is_better"],
               "me_record": rec, "imbalance_degree": rec["imbalance_degree"], "equity": rec["equity"],
               "worst_missing": rec["worst_missing"]}  # fmt: skip
        row.update({f"shapley/{m}": v for m, v in rec["shapley"].items()})
        if own := rec.get("own_labels"):  # CH-SIMS: each modality's own label scored against the target
            quality = {m: v[rec["metric"]] for m, v in own.items()}
            row.update({f"own_label/{m}": v for m, v in quality.items()})
            row["label_rank_corr"] = label_rank_corr(rec["shapley"], quality, rec["higher_is_better"])
        row.update({f"missing/{m}": v for m, v in rec["missing"].items()})
        rr = rec["relative_robustness"]
        row["relative_robustness"] = float(np.mean(list(rr.values()))) if rr else None
        rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["effective_robustness"] = _effective(frame)
    return frame


def label_rank_corr(shapley: dict[str, float], quality: dict[str, float], higher: bool) -> float | None:
    """Spearman correlation, over the modalities, between their Shapley values and how well each one's own
    label predicts the multimodal label (its metric, oriented so that larger is better): 1 when the model
    leans on the modalities in the order their annotated sentiment agrees with the target, -1 reversed."""
    mods = [m for m in shapley if m in quality]
    if len(mods) < 2:
        return None
    sign = 1.0 if higher else -1.0
    phi = pd.Series([shapley[m] for m in mods])
    own = pd.Series([sign * quality[m] for m in mods])
    value = phi.corr(own, method="spearman")
    return None if pd.isna(value) else float(value)


def _effective(frame: pd.DataFrame) -> list[float | None]:
    """Per run: MultiBench's effective robustness of each modality's noise curve against joint training's
    mean curve under the same comparison key (MultiBench's reference is late fusion), averaged."""
    out = []
    for _, r in frame.iterrows():
        ref = frame[(frame["method"] == "joint") & (frame["key"] == r["key"])]
        curves = r["me_record"]["noise"]
        values = []
        for m, curve in curves.items():
            refs = [x["noise"][m] for x in ref["me_record"] if m in x["noise"]]
            if refs:
                values.append(effective_robustness(curve, np.mean(refs, axis=0)))
        out.append(float(np.mean(values)) if values else None)
    return out


def modality_tables(runs: pd.DataFrame) -> list[tuple[Table, pd.DataFrame]]:
    frame = modality_frame(runs)
    out: list[tuple[Table, pd.DataFrame]] = []
    if frame.empty:
        return out
    for kb in split_blocks(frame):
        sub, dataset, task = kb.runs, kb.runs["dataset"].iloc[0], kb.runs["task"].iloc[0]
        metric, higher = sub["me_metric"].iloc[0], bool(sub["me_higher"].iloc[0])
        mods = list(max(sub["modalities"], key=len))
        label = metric_facts(metric).label
        own = [
            f"own_label/{m}" for m in mods if f"own_label/{m}" in sub and sub[f"own_label/{m}"].notna().any()
        ]
        own += ["label_rank_corr"] if own else []
        cols = [f"shapley/{m}" for m in mods] + own + ["imbalance_degree", "equity"]
        cols += [f"missing/{m}" for m in mods] + [
            "worst_missing",
            "relative_robustness",
            "effective_robustness",
        ]
        direction = {"imbalance_degree": False, "equity": True, "worst_missing": higher,
                     "relative_robustness": higher, "effective_robustness": higher}  # fmt: skip
        direction.update({f"missing/{m}": higher for m in mods})
        direction.update({c: True for c in own if c == "label_rank_corr"})
        agg = aggregate(sub, cols)
        for row in agg:
            for c in cols:
                row.cells[c].decimals = (
                    3
                    if c in ("imbalance_degree", "equity", "label_rank_corr")
                    else metric_facts(metric).decimals
                )
        for c, hi in direction.items():
            rank_marks([r.cells[c] for r in agg], hi, [r.multimodal for r in agg])
        header = ["Method"] + [f"φ {m}" for m in mods]
        header += [f"{label} of {c.split('/')[1]}'s label" for c in own if c != "label_rank_corr"]
        header += ["Rank corr φ vs label ↑"] * bool(own) + ["Imbalance degree ↓", "Equity ↑"]
        header += [f"{label} w/o {m}" for m in mods] + [f"Worst missing {label}", "Rel. robustness",
                                                        "Eff. robustness vs joint", "n"]  # fmt: skip
        rows = [[r.label, *(r.cells[c] for c in cols), str(r.seeds)] for r in agg]
        notes = [
            f"Test split, model of the selected epoch; mean ± std over n seeds. φ m: Shapley value of m on "
            f"{label}{' (as -MAE)' if not higher else ''}, from the metric on every subset of modalities.",
            "Absent modality: its encoder features replaced by their train-split mean (modality_eval.py).",
            "Imbalance degree: mean over samples of max−min sample-level Shapley value (BalanceBenchmark's "
            "per-sample values, our aggregate); equity: Pielou evenness of the positive φ (ours).",
            "Robustness: MultiBench's area under the metric vs Gaussian-noise-level curve (levels 0..0.9 of "
            "each input's train std), and its effective robustness against joint training; mean over modalities.",
        ]
        if own:
            notes.append(
                f"{label} of m's label: the dataset's own label of modality m (CH-SIMS' regression_labels_T/A/V) "
                f"taken as the prediction of the multimodal label, test split: how much of the sentiment the "
                f"annotators found in m alone (a property of the data). Rank corr: Spearman correlation over the "
                f"modalities of φ m with that score (oriented larger = better): 1 when the model's reliance follows "
                f"the modalities' annotated agreement with the target."
            )
        csv = cells_frame(agg, dataset, task, kb.title)
        out.append((Table(f"{kb.title}: modality contributions and robustness", header, rows, notes), csv))
    return out


def modality_figures(runs: pd.DataFrame, out_dir: Path, name: str) -> list[Path]:
    from mmbalance.reporting.figures import _colors, _fit, _percent_axis, _save, full_runs, plt

    frame = modality_frame(runs)
    paths: list[Path] = []
    if frame.empty:
        return paths
    for kb in split_blocks(frame):
        sub = kb.runs
        mods = list(max(sub["modalities"], key=len))
        multi, methods = full_runs(sub)
        colors = _colors(mods)
        metric = metric_facts(sub["me_metric"].iloc[0]).label
        prefix = out_dir / f"{name}-{kb.slug}"

        fig, ax = plt.subplots(
            figsize=(min(16.0, max(6.0, 0.2 * len(methods) * len(mods) + 2)), 3.4), layout="constrained"
        )
        width = 0.8 / len(mods)
        for i, m in enumerate(mods):
            stats = [multi.loc[multi["method"] == k, f"shapley/{m}"].agg(["mean", "std"]) for k in methods]
            ax.bar(np.arange(len(methods)) + (i - (len(mods) - 1) / 2) * width, [s["mean"] for s in stats],
                   width, yerr=[0.0 if pd.isna(s["std"]) else s["std"] for s in stats], color=colors[m],
                   label=m, capsize=2)  # fmt: skip
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(np.arange(len(methods)), methods, rotation=45, ha="right")
        ax.set_ylabel(f"Shapley value ({metric})")
        ax.set_title(_fit(f"{kb.title}: modality contributions on the test split", fig.get_figwidth()))
        ax.legend(fontsize=8, ncol=len(mods))
        paths += _save(fig, prefix.with_name(prefix.name + "-contributions"))

        ncols = min(5, len(methods))
        nrows = -(-len(methods) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 2.4 * nrows + 0.6), sharey=True,
                                 squeeze=False, layout="constrained")  # fmt: skip
        for ax, method in zip(axes.flat, methods, strict=False):
            recs = list(multi.loc[multi["method"] == method, "me_record"])
            levels = recs[0]["noise_levels"]
            for m in mods:
                curves = np.array([r["noise"][m] for r in recs if m in r["noise"]])
                if len(curves):
                    mean, std = curves.mean(0), curves.std(0, ddof=1) if len(curves) > 1 else 0 * curves[0]
                    ax.plot(levels, mean, color=colors[m], label=f"noise on {m}", lw=1.6)
                    ax.fill_between(levels, mean - std, mean + std, color=colors[m], alpha=0.2)
            ax.set_title(method)
        for ax in axes.flat[len(methods) :]:
            ax.axis("off")
        for ax in axes.flat[max(0, len(methods) - ncols) : len(methods)]:  # the lowest panel of each column
            ax.set_xlabel("noise std / input std")
        for ax in axes[:, 0]:
            ax.set_ylabel(f"test {metric}")
        _percent_axis(axes.flat[0], sub["me_metric"].iloc[0])  # shared y
        axes.flat[0].legend(fontsize=7)
        fig.suptitle(
            _fit(f"{kb.title}: robustness to Gaussian noise on one modality", fig.get_figwidth(), 12)
        )
        paths += _save(fig, prefix.with_name(prefix.name + "-robustness"))
    return paths


def write_modality_outputs(
    runs: pd.DataFrame, out: Path, name: str, heading: str, figures: bool = True
) -> list[Path]:
    """The table files and (optionally) the figures; nothing when no run has a record. Records with LNLN's
    incomplete-data entry get their own (``incomplete_report.write_incomplete_outputs``)."""
    tables = modality_tables(runs)
    if not tables:
        return []
    paths = write_tables(
        tables, out / "tables", f"{name}-modality", f"{heading}: modality contributions and robustness"
    )
    paths += modality_figures(runs, out / "figures", name) if figures else []
    return paths
