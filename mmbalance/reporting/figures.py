"""Figures from run records, in the style of the CGGM paper's analysis figures (matplotlib, Agg).

Every figure is one file, written as PNG and PDF with a stable name, from records alone:

- ``training_curves``: per-modality curves over training, one panel per method side by side (joint
  first, so "with and without a method" read left to right), median over seeds with an interquartile band
  (a mean ± std lets one seed that blows up set the scale of every panel):
  ``probe_acc`` (validation metric of each modality's linear probe, per epoch, from ``metrics.jsonl``),
  ``grad_norm`` (L2 norm of each encoder's gradient) and ``grad_cos`` (cosine between the fused and the
  unimodal gradient of each encoder), per logged step from ``curves.csv``; see ``probes.py``.
- ``balancing_terms``: a method's ``diag/<term>/<modality>`` curves, one panel per term (median and
  interquartile range over seeds; a symmetric-log axis for terms that span decades).
- ``param_bars``: final metric of a method for each value of one parameter (the rho / lambda
  ablations), as a dot plot with mean ± std intervals over seeds, joint training as a dashed line and
  band; an accuracy axis never runs past 100.

Every panel is titled, and every axis labelled, from one catalogue (``quantities.py``); titles are
wrapped to the figure's width.
- ``tsne_gradients``: t-SNE of gradient samples from the optional ``grads.npz`` record that
  ``scripts/grad_samples.py`` writes next to a finished run (the records hold no gradients otherwise).
- ``critical_difference``: average ranks of the methods across tables, methods the Nemenyi test cannot
  tell apart joined by a bar (Demšar 2006; drawn by scikit-posthocs).

``suite_figures`` (the report's figure step, in ``--jobs`` processes) first checks each run's ``spec.yaml``, ``metrics.jsonl``,
``curves.csv`` and ``grads.npz``: a run whose record cannot be read is skipped with a
``results.RecordWarning`` that names the file, and the figures are drawn from the other runs.
"""

from __future__ import annotations

import json
import multiprocessing
import textwrap
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from mmbalance.common.comparison import split_blocks  # noqa: E402
from mmbalance.common.metric_catalogue import metric_facts  # noqa: E402
from mmbalance.common.records import RunDir  # noqa: E402
from mmbalance.reporting.quantities import CURVES, quantity  # noqa: E402
from mmbalance.reporting.results import RecordWarning, one_line  # noqa: E402
from mmbalance.reporting.tables import config_labels  # noqa: E402

__all__ = [
    "training_curves",
    "balancing_terms",
    "param_bars",
    "tsne_gradients",
    "critical_difference",
    "suite_figures",
    "readable",
    "CURVE_KINDS",
]

CURVE_KINDS = tuple(CURVES)
SMOOTH = 5  # rolling mean over this many logged steps (the raw per-batch values are noisy)
plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "figure.dpi": 110})


def _save(fig: plt.Figure, stem: Path) -> list[Path]:
    """PNG and PDF of a figure made with ``layout="constrained"``. The layout is computed once and then
    frozen: each format draws once, instead of a layout and a tight-bbox pass per format (the figures
    were 85% of ``make bench-all``'s report)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [
        stem.parent / f"{stem.name}.png",
        stem.parent / f"{stem.name}.pdf",
    ]  # names may hold dots (lazy-0.50)
    fig.get_layout_engine().execute(fig)  # the layout alone (text extents), not a full render
    fig.set_layout_engine("none")
    for p in paths:
        # No creation date in the PDF: the same records give byte-identical files.
        metadata = {"CreationDate": None} if p.suffix == ".pdf" else None
        fig.savefig(p, dpi=150 if p.suffix == ".png" else None, metadata=metadata)
    plt.close(fig)
    return paths


def _colors(modalities: Sequence[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(modalities)}


BAND = "median over seeds, band: interquartile range"


def _band(ax: plt.Axes, frame: pd.DataFrame, x: str, y: str, color, label: str) -> None:
    """Median over seeds (rows sharing ``x``) with the interquartile range as a band: robust to one seed
    whose term explodes (CGGM's B_m reaches 1e6 on 2 of 5 seeds), which a mean ± std is not."""
    q = frame.groupby(x)[y].quantile([0.25, 0.5, 0.75]).unstack()
    ax.plot(q.index, q[0.5], color=color, label=label, lw=1.6)
    ax.fill_between(q.index, q[0.25], q[0.75], color=color, alpha=0.2)


def _fit(text: str, width_in: float, fontsize: float = 11.0) -> str:
    """``text`` wrapped to a figure or panel ``width_in`` inches wide (about 0.55 em per character)."""
    return textwrap.fill(text, max(20, int(width_in * 72 / (0.55 * fontsize))))


def _percent_axis(ax: plt.Axes, metric: str) -> None:
    """An accuracy-like axis (a percentage in the metric catalogue) never runs past 100."""
    if metric_facts(metric).percent:
        bottom, top = ax.get_ylim()
        ax.set_ylim(bottom, min(top, 100.0))


def full_runs(sub: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """A block's runs with every modality (the unimodal references left out) and their methods, joint first."""
    full = max(len(m) for m in sub["modalities"])
    multi = sub[sub["modalities"].map(len) == full]
    return multi, sorted(multi["method"].unique(), key=lambda m: (m != "joint", m))


def curve_frame(runs: Sequence[RunDir], kind: str) -> pd.DataFrame:
    """Long frame ``x, modality, value, seed`` of one curve kind over the given runs."""
    parts = []
    for rd in runs:
        seed = rd.spec()["seed"]
        if kind == "probe_acc":
            rows = [
                {"x": e["epoch"] + 1, "modality": m, "value": v, "seed": seed}
                for e in rd.epochs()
                for m, v in e["valid"].get("probe", {}).items()
            ]
            parts.append(pd.DataFrame(rows))
            continue
        if not rd.curves_path().exists() or rd.curves_path().stat().st_size == 0:
            continue
        curves = pd.read_csv(rd.curves_path())
        for col in (c for c in curves.columns if c.startswith(f"{kind}/")):
            smooth = curves[col].rolling(SMOOTH, min_periods=1).mean()
            parts.append(
                pd.DataFrame(
                    {"x": curves["step"], "modality": col.split("/", 1)[1], "value": smooth, "seed": seed}
                )
            )
    parts = [p for p in parts if not p.empty]
    return (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(columns=["x", "modality", "value", "seed"])
    )


MAX_COLUMNS = 5  # panels per row in multi-method figures


def training_curves(
    panels: dict[str, Sequence[RunDir]], kind: str, stem: Path, title: str = ""
) -> list[Path]:
    """One figure: a panel per label (method), a line per modality, shared y axis."""
    if kind not in CURVE_KINDS:
        raise ValueError(f"unknown curve kind {kind!r}; choose one of {', '.join(CURVE_KINDS)}")
    frames = {label: curve_frame(runs, kind) for label, runs in panels.items()}
    frames = {k: v for k, v in frames.items() if not v.empty}
    if not frames:
        return []
    metric = next(iter(panels.values()))[0].final()["selection_metric"]
    modalities = list(dict.fromkeys(m for f in frames.values() for m in f["modality"]))
    colors = _colors(modalities)
    ncols = min(MAX_COLUMNS, len(frames))  # many methods wrap into rows, so the figure stays readable
    nrows = -(-len(frames) // ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(4.2 * ncols, 3.3 * nrows + 0.5),
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    for ax in axes.flat[len(frames) :]:
        ax.set_visible(False)
    for ax, (label, frame) in zip(axes.flat, frames.items(), strict=False):
        for m in modalities:
            sub = frame[frame["modality"] == m]
            if not sub.empty:
                _band(ax, sub, "x", "value", colors[m], m)
        n = frame["seed"].nunique()
        ax.set_title(_fit(f"{label} (n={n} seed{'s' if n > 1 else ''})", 4.0))
        ax.set_xlabel("epoch" if kind == "probe_acc" else "training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if kind == "grad_cos":
            ax.axhline(0.0, color="grey", lw=0.8, ls=":")
    q = CURVES[kind]
    ylabel = f"probe {metric_facts(metric).label}" + (" (%)" if metric_facts(metric).percent else "")
    for row in axes:
        row[0].set_ylabel(ylabel if kind == "probe_acc" else q.axis_label)
    if q.scale != "linear":
        axes[0][0].set_yscale(q.scale)  # shared y: every panel follows
    if kind == "probe_acc":
        _percent_axis(axes[0][0], metric)
    axes[0][ncols - 1].legend(title="modality", loc="best", fontsize=9)
    what = q.name.replace("accuracy", metric_facts(metric).label) if kind == "probe_acc" else q.name
    fig.suptitle(_fit(f"{title}: {what} ({BAND})" if title else f"{what} ({BAND})", 4.2 * ncols, 12))
    return _save(fig, stem)


def balancing_terms(runs: Sequence[RunDir], stem: Path, title: str = "") -> list[Path]:
    """A method's ``diag/`` curves: keys ``<term>/<modality>`` give one panel per term, a line per
    modality; other keys (scalars such as ``l_gm``) share one panel."""
    frames = []
    for rd in runs:
        if rd.curves_path().exists() and rd.curves_path().stat().st_size > 0:
            c = pd.read_csv(rd.curves_path())
            frames.append(c.assign(seed=rd.spec()["seed"]))
    if not frames:
        return []
    curves = pd.concat(frames, ignore_index=True)
    modalities = runs[0].final()["modalities"]
    method = runs[0].spec()["method"]
    groups: dict[str, dict[str, str]] = {}  # term -> {line label: column}; a scalar term is its own panel
    for col in (c for c in curves.columns if c.startswith("diag/")):
        key = col.removeprefix("diag/")
        term, _, last = key.rpartition("/")
        if term and last in modalities:
            groups.setdefault(term, {})[last] = col
        else:
            groups.setdefault(key, {})[key] = col
    if not groups:
        return []
    colors = _colors(list(modalities) + [k for k in groups if k not in modalities])
    fig, axes = plt.subplots(
        1, len(groups), figsize=(4.2 * len(groups), 3.8), squeeze=False, layout="constrained"
    )
    for ax, (term, lines) in zip(axes[0], groups.items(), strict=True):
        q = quantity(term, method)
        for name, col in lines.items():
            sub = curves[["step", col, "seed"]].dropna().copy()
            sub[col] = sub.groupby("seed")[col].transform(lambda s: s.rolling(SMOOTH, min_periods=1).mean())
            _band(ax, sub, "step", col, colors[name], name)
        ax.set_title(_fit(q.name, 4.0))
        ax.set_ylabel(q.axis_label)
        if q.scale != "linear":
            ax.set_yscale(q.scale, **({"linthresh": 1.0} if q.scale == "symlog" else {}))
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(title="modality", fontsize=9)
    what = f"balancing terms ({BAND})"
    fig.suptitle(_fit(f"{title}: {what}" if title else what, 4.2 * len(groups), 12))
    return _save(fig, stem)


def param_bars(
    runs: pd.DataFrame,
    method: str,
    param: str,
    metric: str,
    stem: Path,
    baseline: str = "joint",
    title: str = "",
) -> list[Path]:
    """Bars: mean ± std of ``metric`` for each value of ``method_params.<param>``; baseline as a band.

    ``runs`` is a ``report.load_runs`` frame of one dataset (the other method params held fixed)."""
    own = runs[runs["method"] == method]
    values = own["spec"].map(lambda s: _hashable(s["method_params"].get(param)))
    if own.empty or values.isna().all():
        return []
    stats = own.assign(value=values).groupby("value")[metric].agg(["mean", "std", "count"]).sort_index()
    width = 2.6 + 0.9 * len(stats)
    fig, ax = plt.subplots(figsize=(width, 3.6), layout="constrained")
    xs = np.arange(len(stats))
    # Dots with intervals, not bars: a bar's length reads as the value, so a bar axis must start at zero,
    # which would flatten differences of a point or two; a dot plot may zoom in honestly.
    ax.errorbar(xs, stats["mean"], yerr=stats["std"].fillna(0), fmt="o", ms=7, capsize=5, color="tab:blue",
                label=f"{method} (mean ± std)")  # fmt: skip
    for x, (mean, n) in zip(xs, zip(stats["mean"], stats["count"], strict=True), strict=True):
        ax.annotate(f"n={n}", (x, mean), textcoords="offset points", xytext=(8, -3), fontsize=8, color="0.35")
    base = runs[runs["method"] == baseline][metric]
    if not base.empty:
        mu, sd = base.mean(), base.std() if len(base) > 1 else 0.0
        ax.axhline(mu, color="tab:red", ls="--", lw=1.4, label=f"{baseline} ({mu:.2f} ± {sd:.2f})")
        ax.axhspan(mu - sd, mu + sd, color="tab:red", alpha=0.12)
    ax.set_xticks(xs, [str(v) for v in stats.index])
    ax.set_xlim(-0.6, len(stats) - 0.4)
    ax.set_xlabel(f"{param}")
    ax.set_ylabel(metric_facts(metric).label + (" (%)" if metric_facts(metric).percent else ""))
    _percent_axis(ax, metric)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(_fit(title or f"{method}: {param} ablation", width))
    return _save(fig, stem)


def tsne_gradients(npz: Path, stem: Path, title: str = "", seed: int = 0) -> list[Path]:
    """t-SNE of gradient samples: arrays ``<kind>/<modality>`` of shape (K, D) in ``grads.npz`` (kinds such
    as ``fused``, ``classifier``, ``unimodal``). One panel per modality, since each modality's gradients
    live in its own encoder's parameter space; colour = kind. Samples are unit-normalised first, so the
    embedding compares directions, not magnitudes."""
    from sklearn.manifold import TSNE

    data = np.load(npz)
    modalities = list(dict.fromkeys(k.split("/", 1)[1] for k in data.files))
    kinds = list(dict.fromkeys(k.split("/", 1)[0] for k in data.files))
    if not modalities:
        return []
    colors = dict(zip(kinds, ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange"), strict=False))
    fig, axes = plt.subplots(
        1, len(modalities), figsize=(3.8 * len(modalities), 3.8), squeeze=False, layout="constrained"
    )
    for ax, m in zip(axes[0], modalities, strict=True):
        keys = [f"{k}/{m}" for k in kinds if f"{k}/{m}" in data.files]
        x = np.concatenate([data[k] for k in keys])
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        perplexity = min(30.0, max(2.0, (len(x) - 1) / 3))
        emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
        start = 0
        for k in keys:
            n = len(data[k])
            kind = k.split("/", 1)[0]
            label = f"{kind} gradient"
            ax.scatter(*emb[start : start + n].T, s=16, alpha=0.75, color=colors[kind], label=label, lw=0)
            start += n
        ax.set_title(f"encoder {m}")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("t-SNE 1")
    axes[0][0].set_ylabel("t-SNE 2")
    axes[0][-1].legend(fontsize=9, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title or "t-SNE of encoder gradient directions")
    return _save(fig, stem)


def critical_difference(
    average: pd.Series, nemenyi: pd.DataFrame, cd: float, stem: Path, title: str = "", caption: str = ""
) -> list[Path]:
    """Average ranks on an axis (1 = best, on the left), methods joined by a bar where the Nemenyi test
    finds no difference at p < 0.05; the critical difference is given in the title (scikit-posthocs
    would draw it over the tick labels)."""
    import scikit_posthocs
    from scikit_posthocs import _plotting

    fig, ax = plt.subplots(figsize=(8.0, 1.4 + 0.28 * len(average)), layout="constrained")
    # scikit-posthocs draws each bar through a set of method names, in string-hash order, which changes
    # between processes: sorted, the same ranks give the same bytes.
    cliques = _plotting._find_maximal_cliques
    _plotting._find_maximal_cliques = lambda adjacency: [sorted(c) for c in cliques(adjacency)]
    try:
        scikit_posthocs.critical_difference_diagram(
            average, nemenyi, ax=ax, label_fmt_left="{label} ({rank:.2f})",
            label_fmt_right="({rank:.2f}) {label}",
        )  # fmt: skip
    finally:
        _plotting._find_maximal_cliques = cliques
    what = f"Average rank (1 = best); bars: no Nemenyi difference at p < 0.05 (CD = {cd:.2f})"
    ax.set_title(_fit(f"{title}. {what}" if title else what, 8.0), pad=24)
    if caption:  # the methods left out and why: a ranking that silently drops methods misleads
        fig.supxlabel(
            _fit(caption, 8.0, 8), fontsize=8, ha="left", x=0.01
        )  # inside the layout: never clipped
    return _save(fig, stem)


def readable(path: Path | str) -> bool:
    """Whether the records a figure reads of the run at ``path`` parse; if not, a ``RecordWarning``
    names the file and the run is left out of the figures."""
    rd = RunDir(Path(path))
    name = "spec.yaml"
    try:
        if not isinstance(rd.spec().get("seed"), int):
            raise ValueError("no integer `seed`")
        name = "metrics.jsonl"
        for e in rd.epochs():
            probes = e["valid"].get("probe", {})
            if not isinstance(e["epoch"], int) or not all(
                isinstance(v, int | float) for v in probes.values()
            ):
                raise ValueError(f"epoch record {str(e)[:80]} is not an epoch number with numeric probes")
        name = "curves.csv"
        if rd.curves_path().exists() and rd.curves_path().stat().st_size > 0:
            curves = pd.read_csv(rd.curves_path())
            curves["step"].map(float)
            curves.apply(pd.to_numeric)
        name = "grads.npz"
        if rd.file(name).exists():
            with np.load(rd.file(name)) as grads:
                if not all(grads[k].ndim == 2 for k in grads.files):
                    raise ValueError("every array must be (samples, dims)")
    except Exception as e:  # any damage, whatever parser reports it
        warnings.warn(
            f"{rd.file(name)}: {type(e).__name__}: {one_line(e)}; run {rd.run_id} left out of the figures",
            RecordWarning,
            stacklevel=2,
        )
        return False
    return True


# --- everything for a set of runs -------------------------------------------------------------------
def suite_figures(runs: pd.DataFrame, out_dir: Path, name: str, jobs: int = 1) -> list[Path]:
    """All figures of a ``report.load_runs`` frame, per dataset and task kind, named
    ``<name>-<dataset>-<task>-<figure>.{png,pdf}``; drawn in ``jobs`` processes (each figure is
    independent, and drawing is most of a report's time)."""
    figures = figure_calls(runs, out_dir, name)
    if jobs <= 1 or len(figures) <= 1:
        return [p for fn, args, kwargs in figures for p in fn(*args, **kwargs)]
    context = multiprocessing.get_context("spawn")  # a fresh matplotlib per worker, no forked state
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        done = [pool.submit(fn, *args, **kwargs) for fn, args, kwargs in figures]
        return [p for future in done for p in future.result()]


def figure_calls(runs: pd.DataFrame, out_dir: Path, name: str) -> list[tuple[Callable, tuple, dict]]:
    """``(function, args, kwargs)`` of every figure ``suite_figures`` draws, in order."""
    calls: list[tuple[Callable, tuple, dict]] = []
    runs = runs[runs["path"].map(readable).astype(bool)] if not runs.empty else runs
    blocks = split_blocks(runs)
    tuned = {kb.block for kb in blocks if kb.protocol == "tuned"}
    for kb in blocks:  # one comparison key at a time, as the tables
        probes = kb.runs["probe_every"] if "probe_every" in kb.runs else pd.Series([1])
        if kb.block in tuned and kb.protocol != "tuned" or not (probes.fillna(1) > 0).any():
            continue  # a suite block's defaults run for the tuned-vs-defaults table; a block without probes
        sub, where = kb.runs, kb.title
        prefix = f"{name}-{kb.slug}"
        full = max(len(m) for m in sub["modalities"])
        multi = sub[sub["modalities"].map(len) == full]
        labels = config_labels(sub)
        # One panel per method: its most-seeded configuration, joint first.
        panels: dict[str, list[RunDir]] = {}
        methods = sorted(multi["method"].unique(), key=lambda m: (m != "joint", m))
        for method in methods:
            own = multi[multi["method"] == method]
            config = own.groupby("config", sort=False).size().idxmax()
            rows = own[own["config"] == config]
            panels[labels[config]] = [RunDir(_run_path(r)) for _, r in rows.iterrows()]
        for kind in CURVE_KINDS:
            stem = out_dir / f"{prefix}-{kind}"
            calls.append((training_curves, (panels, kind, stem), {"title": where}))
        for label, rds in panels.items():
            method = label.split("(")[0]
            title = f"{label} on {where}"
            calls.append((balancing_terms, (rds, out_dir / f"{prefix}-balancing-{method}"), {"title": title}))
        metric = sub["selection_metric"].iloc[0]
        for method in methods:
            own = multi[multi["method"] == method]
            for param in _varying_params(own):
                # Hold the method's other params at their most frequent combination.
                others = own["spec"].map(
                    lambda s, p=param: json.dumps(
                        {k: v for k, v in s["method_params"].items() if k != p}, sort_keys=True
                    )
                )
                held = pd.concat([multi[multi["method"] != method], own[others == others.mode()[0]]])
                stem = out_dir / f"{prefix}-ablation-{method}-{param}"
                title = f"{method} on {where}: {param}"
                calls.append((param_bars, (held, method, param, metric, stem), {"title": title}))
        for _, r in sub.iterrows():
            npz = Path(_run_path(r)) / "grads.npz"
            if npz.exists():
                stem = out_dir / f"{prefix}-tsne-{r['method']}-seed{r['seed']}"
                title = f"{labels[r['config']]} seed {r['seed']}: gradient t-SNE"
                calls.append((tsne_gradients, (npz, stem), {"title": title}))
    return calls


def _run_path(row: pd.Series) -> Path:
    return Path(row["path"])


def _varying_params(own: pd.DataFrame) -> list[str]:
    """Method params that take more than one value among these runs (each gets an ablation figure)."""
    params = own["spec"].map(lambda s: s["method_params"])
    keys = sorted({k for p in params for k in p})
    return [k for k in keys if len({json.dumps(p.get(k)) for p in params}) > 1]


def _hashable(value):
    return json.dumps(value) if isinstance(value, list | dict) else value
