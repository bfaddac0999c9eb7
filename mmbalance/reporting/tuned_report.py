"""What a suite's blocks add to its report (issue 23): laziness per block, tuned vs defaults, the
classification ranking, and each method's gain against the imbalance degree.

A run belongs to the block of the suite whose dataset entry it matches most specifically (the entry's
spec fields are a subset of the run's spec; ``mfeat`` with all views and ``mfeat`` with two both match a
two-view run, which belongs to the two-view block). Values are the primary metric under the report's
protocol; Δ vs joint pairs each run with joint's run of the same block, protocol and seed (on synthetic
data and mfeat the seed also draws the data, so the pairing removes the draw's noise). Reads records
alone, like the rest of the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mmbalance.common.comparison import REFERENCES
from mmbalance.common.metric_catalogue import metric_facts
from mmbalance.reporting.stats import interval
from mmbalance.reporting.tables import Cell, Table, finished, is_subset, primary_metric

__all__ = ["assign_blocks", "laziness_table", "tuned_vs_defaults", "gain_frame", "MISSION"]

MISSION = ("ogm_ge", "pmr", "cggm")  # the methods this suite starts from, highlighted in figures


def _leaves(d: Any) -> int:
    return sum(_leaves(v) for v in d.values()) if isinstance(d, dict) else 1


def assign_blocks(runs: pd.DataFrame, suite: Any) -> pd.DataFrame:
    """``runs`` with ``block`` (None outside the suite's blocks), ``protocol`` (tuned / defaults) and
    ``label`` (the method with its variant: ``unimodal(modality=m0)``) columns."""
    from mmbalance.common.spec import compose
    from mmbalance.scaleout.sweep import block_name, spec_fragment

    fragments = [(block_name(e), compose(suite.base, spec_fragment(e))) for e in suite.datasets]
    for _, f in fragments:
        f.pop("method", None)

    def block(spec: dict[str, Any]) -> str | None:
        matches = [(_leaves(f), name) for name, f in fragments if is_subset(f, without_tuning(spec, f))]
        return max(matches)[1] if matches else None

    out = runs.copy()
    out["block"] = out["spec"].map(block)
    out["block_order"] = out["block"].map({name: i for i, (name, _) in enumerate(fragments)})
    out["protocol"] = out["spec"].map(lambda s: "tuned" if s.get("tuned") else "defaults")
    out["label"] = out["spec"].map(_label)
    return out


def without_tuning(spec: dict[str, Any], fragment: dict[str, Any]) -> dict[str, Any]:
    """A tuned run's spec with the values tuning chose put back to the fragment's, for block matching."""
    chosen = (spec.get("tuned") or {}).get("chosen", [])
    if not chosen:
        return spec
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in spec.items()}
    for path in chosen:
        section, _, key = path.partition(".")
        base = fragment.get(section)
        if isinstance(base, dict) and key in base and isinstance(out.get(section), dict):
            out[section][key] = base[key]
    return out


def _label(spec: dict[str, Any]) -> str:
    variant = spec.get("method_params", {}).get("modality") if spec.get("method") == "unimodal" else None
    return f"unimodal({variant})" if variant else spec["method"]


def _primary(frame: pd.DataFrame) -> str:
    return primary_metric(frame)


def paired_deltas(frame: pd.DataFrame, baseline: str = "joint") -> pd.DataFrame:
    """Per finished run of a block and protocol: its primary metric minus the baseline's of the same seed
    (columns block, protocol, label, method, seed, delta)."""
    rows = []
    for (block, protocol), sub in finished(frame).groupby(["block", "protocol"], sort=True):
        metric = _primary(sub)
        base = sub[sub["label"] == baseline].set_index("seed")[metric]
        for _, r in sub.iterrows():
            if r["seed"] in base.index:
                rows.append({"block": block, "protocol": protocol, "label": r["label"], "method": r["method"],
                             "seed": r["seed"], "delta": r[metric] - base[r["seed"]], "metric": metric})  # fmt: skip
    return pd.DataFrame(rows, columns=["block", "protocol", "label", "method", "seed", "delta", "metric"])


# --- laziness per block ---------------------------------------------------------------------------------
def laziness_table(frame: pd.DataFrame, protocol: str = "tuned") -> tuple[Table, pd.DataFrame] | None:
    """Per classification block: each modality alone, joint, the unimodal ensemble, and ensemble − joint
    (paired by seed): a block shows laziness when the ensemble of separately trained unimodal models
    beats joint training (Du et al., ICML 2023)."""
    done = finished(frame)
    done = done[(done["protocol"] == protocol) & done["block"].notna() & (done["task"] == "classification")]
    if done.empty:
        return None
    deltas = paired_deltas(done)
    body, csv = [], []
    for block, sub in sorted(done.groupby("block", sort=False), key=lambda g: g[1]["block_order"].iloc[0]):
        metric = _primary(sub)
        means = sub.groupby("label")[metric].agg(["mean", "std", "count"])
        unimodal = [
            f"{m.split('(')[1][:-1]} {means.loc[m, 'mean']:.1f}"
            for m in means.index
            if m.startswith("unimodal(")
        ]
        gap = deltas[(deltas["block"] == block) & (deltas["label"] == "unimodal_ensemble")]["delta"]
        if "joint" not in means.index or gap.empty:
            continue
        mean, lo, hi = interval(gap)
        lazy = "yes" if lo > 0 else ("no" if mean <= 0 else "not significant")
        body.append([block, ", ".join(unimodal), Cell(means.loc["joint", "mean"], means.loc["joint", "std"]),
                     Cell(means.loc["unimodal_ensemble", "mean"], means.loc["unimodal_ensemble", "std"]),
                     f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]", lazy, str(len(gap))])  # fmt: skip
        csv.append({"block": block, "metric": metric, "joint": means.loc["joint", "mean"],
                    "ensemble": means.loc["unimodal_ensemble", "mean"], "gap": mean, "gap_lo": lo, "gap_hi": hi,
                    "lazy": lazy, **{f"alone/{m}": means.loc[m, "mean"] for m in means.index if m.startswith("unimodal(")}})  # fmt: skip
    if not body:
        return None
    header = [
        "Block",
        "Each modality alone",
        "Joint",
        "Unimodal ensemble",
        "Ensemble − joint [95% CI]",
        "Lazy",
        "n",
    ]
    notes = [
        f"Test {metric_facts(_primary(done)).label} at the best validation epoch, {protocol} protocol, mean ± std over seeds. "
        "Ensemble − joint: paired by seed, mean and 95% t-interval. Lazy: the interval is above 0 (joint "
        "training leaves accuracy that separately trained unimodal models reach); no: the mean is not above 0.",
    ]
    return Table(
        "Laziness per block: does joint training leave the weak modalities under-trained?",
        header,
        body,
        notes,
    ), pd.DataFrame(csv)


# --- tuned vs defaults ------------------------------------------------------------------------------------
def tuned_vs_defaults(frame: pd.DataFrame) -> tuple[Table, pd.DataFrame] | None:
    """Per block run under both protocols and per method: mean(tuned) − mean(defaults) of the primary
    metric (the same seeds draw the same data under both, so the pairs are by seed), and each protocol's
    Δ vs joint: how much of a method's standing is its defaults."""
    done = finished(frame[frame["block"].notna()])
    both = [b for b, sub in sorted(done.groupby("block"), key=lambda g: g[1]["block_order"].iloc[0])
            if set(sub["protocol"]) == {"tuned", "defaults"}]  # fmt: skip
    if not both:
        return None
    deltas = paired_deltas(done[done["block"].isin(both)])
    body, csv = [], []
    for block in both:
        sub = done[done["block"] == block]
        metric = _primary(sub)
        sign = 1 if metric_facts(metric).higher_is_better else -1
        pivot = sub.pivot_table(index=["label", "seed"], columns="protocol", values=metric)
        for label, rows in pivot.groupby(level=0, sort=False):
            rows = rows.dropna()
            if rows.empty:
                continue
            gain = interval((rows["tuned"] - rows["defaults"]).tolist())
            d = (
                deltas[(deltas["block"] == block) & (deltas["label"] == label)]
                .groupby("protocol")["delta"]
                .mean()
            )
            body.append([block, label + (" †" if label.split("(")[0] in REFERENCES else ""),
                         f"{rows['defaults'].mean():.2f}", f"{rows['tuned'].mean():.2f}",
                         f"{gain[0]:+.2f} [{gain[1]:+.2f}, {gain[2]:+.2f}]",
                         f"{d.get('defaults', float('nan')):+.2f}", f"{d.get('tuned', float('nan')):+.2f}", str(len(rows))])  # fmt: skip
            csv.append({"block": block, "method": label, "metric": metric, "defaults": rows["defaults"].mean(),
                        "tuned": rows["tuned"].mean(), "tuned_minus_defaults": gain[0], "better_when_tuned": sign * gain[0] > 0,
                        "delta_vs_joint_defaults": d.get("defaults"), "delta_vs_joint_tuned": d.get("tuned")})  # fmt: skip
    header = [
        "Block",
        "Method",
        "Defaults",
        "Tuned",
        "Tuned − defaults [95% CI]",
        "Δ vs joint (defaults)",
        "Δ vs joint (tuned)",
        "n",
    ]
    notes = [
        "Test primary metric at the best validation epoch, mean over the seeds both protocols finished; tuned: "
        "the settings `mmbalance tune` chose on validation with the same budget for every method (trial 0: "
        "the defaults); defaults: the method's own defaults as the suite sets them. Tuned − defaults paired "
        "by seed with its 95% t-interval; Δ vs joint pairs each protocol with joint under the same protocol. "
        "MAE (regression): lower is better, so a negative difference is a gain.",
    ]
    return Table(
        "Tuned vs defaults: how much of a method's standing is its defaults", header, body, notes
    ), pd.DataFrame(csv)


# --- gain vs imbalance ---------------------------------------------------------------------------------
def gain_frame(frame: pd.DataFrame, suite: Any, protocol: str = "tuned") -> pd.DataFrame:
    """Per block with an imbalance degree (``dataset_params.imbalance``) and per method: the level and
    Δ vs joint's mean and 95% interval over seeds."""
    from mmbalance.common.spec import compose
    from mmbalance.scaleout.sweep import block_name, spec_fragment

    levels = {}
    for e in suite.datasets:
        level = compose(suite.base, spec_fragment(e)).get("dataset_params", {}).get("imbalance")
        if level is not None:
            levels[block_name(e)] = float(level)
    done = finished(frame[frame["block"].isin(levels) & (frame["protocol"] == protocol)])
    rows = []
    for (block, label), sub in paired_deltas(done).groupby(["block", "label"]):
        if label == "joint":
            continue
        mean, lo, hi = interval(sub["delta"].tolist())
        rows.append({"block": block, "level": levels[block], "label": label, "method": sub["method"].iloc[0],
                     "mean": mean, "lo": lo, "hi": hi, "n": len(sub), "metric": sub["metric"].iloc[0]})  # fmt: skip
    return pd.DataFrame(rows)


def gain_figure(
    gains: pd.DataFrame, stem: Path, highlight: Sequence[str] = MISSION, best: int = 3
) -> list[Path]:
    """Δ vs joint against the imbalance degree: the mission's methods and the ``best`` methods at the top
    level in colour with their 95% intervals, every other balancing method as a thin grey line, the
    unimodal ensemble (the headroom) dashed."""
    from mmbalance.reporting.figures import _save, plt

    methods = gains[~gains["label"].str.startswith("unimodal")]
    top = methods[methods["level"] == methods["level"].max()].sort_values("mean", ascending=False)
    shown = list(
        dict.fromkeys([*[m for m in highlight if m in set(methods["label"])], *top["label"].head(best)])
    )
    fig, ax = plt.subplots(figsize=(7.5, 4.6), layout="constrained")
    ax.axhline(0, color="black", lw=0.8)
    for label, sub in methods.groupby("label"):
        if label not in shown:
            sub = sub.sort_values("level")
            ax.plot(sub["level"], sub["mean"], color="0.75", lw=0.8, zorder=1)
    cmap = plt.get_cmap("tab10")
    for i, label in enumerate(shown):
        sub = methods[methods["label"] == label].sort_values("level")
        offset = (i - (len(shown) - 1) / 2) * 0.008  # keep the intervals apart
        mission = label in highlight
        name = label if mission else f"{label} (best {best} at λ = {methods['level'].max():g})"
        ax.errorbar(sub["level"] + offset, sub["mean"], yerr=[sub["mean"] - sub["lo"], sub["hi"] - sub["mean"]],
                    color=cmap(i), marker="o" if mission else "s", ms=4, lw=1.6, ls="-" if mission else "--",
                    capsize=2.5, label=name, zorder=3)  # fmt: skip
    ens = gains[gains["label"] == "unimodal_ensemble"].sort_values("level")
    if not ens.empty:
        ax.plot(ens["level"], ens["mean"], "k--", lw=1.2, label="unimodal ensemble (reference)", zorder=2)
    metric = metric_facts(gains["metric"].iloc[0]).label
    ax.set_xlabel("imbalance degree λ (0: identical modalities; 1: the lazy scenario)")
    ax.set_ylabel(f"Δ test {metric} vs joint (points)")
    ax.set_title("When does balancing pay? Gain over joint training against the imbalance degree\n"
                 "mean and 95% interval over seeds (paired by seed); grey: the other balancing methods",
                 fontsize=10)  # fmt: skip
    ax.legend(fontsize=8, loc="upper left", frameon=False)
    return _save(fig, stem)
