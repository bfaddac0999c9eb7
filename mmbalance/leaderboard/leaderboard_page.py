"""Render validated leaderboard entries as Markdown and as one static HTML page.

One *track* per comparison key (``comparison.py``, as the report tables): entries whose specs are equal
but for the method and its parameters, on the same data, so an entry trained 20 epochs at lr 0.01 never
ranks beside entries trained 12 epochs at lr 0.05. A track's title says what tells it from the other
tracks of its dataset. Rows are ranked by the task's primary metric, with the Δ to the track's joint
entry (paired over the seeds both have); reference entries (unimodal models, the unimodal ensemble) are
shown apart, never ranked. Each method links to its paper and official code (``Method.reference``).

The HTML page has no external assets and works from ``file://``: CSS and a small script (sorting,
ranks that follow the sort, a filter box) are inline, and a Content-Security-Policy allows only that
script (by its hash), so nothing injected could run even if escaping failed. Every user-supplied string
is escaped; URLs were restricted to http(s) on entry.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mmbalance.common.comparison import BASELINE, REFERENCES, comparison_key, differences
from mmbalance.common.metric_catalogue import metric_facts
from mmbalance.common.records import atomic_write_text
from mmbalance.leaderboard.leaderboard import (
    DICE,
    METRICS,
    Entry,
    KnownSplit,
    LeaderboardError,
    load_entries,
    load_fingerprints,
    page_key,
    summarize,
)

__all__ = [
    "render_markdown",
    "render_html",
    "tracks",
    "Track",
    "method_links",
    "SORT_SCRIPT",
    "build",
    "Built",
]

# sortOrder is pure (unit-tested with node); the DOM part only runs in a browser.
SORT_SCRIPT = """\
"use strict";
// Means of the same numbers summed in another order differ in the last bits (85.8 vs 85.80000000000001):
// values this close are equal.
function same(x, y) { return Math.abs(x - y) <= 1e-9 * Math.max(1, Math.abs(x), Math.abs(y)); }
// Indices of `values` in sorted order; NaN (missing) always last; ties keep page order.
function sortOrder(values, ascending) {
  const sign = ascending ? 1 : -1;
  return values.map((_, i) => i).sort((a, b) => {
    const x = values[a], y = values[b], mx = Number.isNaN(x), my = Number.isNaN(y);
    if (mx || my) return mx === my ? a - b : (mx ? 1 : -1);
    return same(x, y) ? a - b : (x < y ? -sign : sign);
  });
}
// Rank of each value in the sort's direction: 1 + how many are strictly better (ties share); NaN: none.
function ranks(values, ascending) {
  return values.map(v => Number.isNaN(v) ? NaN :
    1 + values.filter(w => !Number.isNaN(w) && !same(w, v) && (ascending ? w < v : w > v)).length);
}
function sortTable(table, col, ascending) {
  const body = table.tBodies[0], rows = Array.from(body.rows);
  const values = rows.map(r => parseFloat(r.cells[col].dataset.value));
  for (const i of sortOrder(values, ascending)) body.appendChild(rows[i]);
  if (table.classList.contains("ranked")) {  // the # column follows the sort (references have none)
    const r = ranks(values, ascending);
    rows.forEach((row, i) => { row.cells[0].textContent = Number.isNaN(r[i]) ? "–" : String(r[i]); });
  }
  for (const th of table.tHead.rows[0].cells) th.removeAttribute("aria-sort");
  table.tHead.rows[0].cells[col].setAttribute("aria-sort", ascending ? "ascending" : "descending");
}
// Rows whose text (method, hyper-parameters, submitter, ...) contains every word of the query.
function filterRows(query) {
  const words = query.toLowerCase().split(/\\s+/).filter(w => w);
  for (const row of document.querySelectorAll("table.entries tbody tr")) {
    const text = row.textContent.toLowerCase();
    row.hidden = !words.every(w => text.includes(w));
  }
}
// #sort=<table id>.<column>.<asc|desc> keeps the order in the address (and lets a test load it).
function applyHash() {
  const m = /^#sort=([A-Za-z0-9_-]+)\\.(\\d+)\\.(asc|desc)$/.exec(location.hash);
  const table = m && document.getElementById(m[1]);
  if (table && table.tHead.rows[0].cells[Number(m[2])]) sortTable(table, Number(m[2]), m[3] === "asc");
}
if (typeof document !== "undefined") {
  for (const btn of document.querySelectorAll("th[data-better] button")) {
    btn.addEventListener("click", () => {
      const th = btn.closest("th"), table = th.closest("table"), state = th.getAttribute("aria-sort");
      // First click shows the best first; a second click reverses.
      const asc = state ? state === "descending" : th.dataset.better === "lower";
      history.replaceState(null, "", `#sort=${table.id}.${th.cellIndex}.${asc ? "asc" : "desc"}`);
      sortTable(table, th.cellIndex, asc);
    });
  }
  const box = document.getElementById("filter");
  if (box) box.addEventListener("input", () => filterRows(box.value));
  window.addEventListener("hashchange", applyHash);
  applyHash();
}
"""

STYLE = """\
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1700px;padding:0 1em;color:#1d1d1f}
.scroll{overflow-x:auto}table.entries{font-size:.9em}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:2em}
table{border-collapse:collapse;width:100%;margin:.5em 0 1.5em}
th,td{border-bottom:1px solid #ddd;padding:.35em .6em;text-align:left;vertical-align:top}
th{background:#f4f5f7;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
th button{font:inherit;font-weight:600;border:0;background:none;cursor:pointer;padding:0}
th[aria-sort=ascending] button::after{content:" \\25B2"}
th[aria-sort=descending] button::after{content:" \\25BC"}
.hp{font-family:ui-monospace,monospace;font-size:.85em;color:#444}.meta{color:#666;font-size:.9em}
code{font-size:.9em}
.refs{opacity:.85}.refs caption,.ranked caption{text-align:left;font-weight:600;padding:.3em 0}
input[type=search]{font:inherit;padding:.3em .5em;width:28em;max-width:100%}
.ref{color:#555;font-size:.85em}
"""


@dataclass
class Track:
    """Entries of one comparison key: the ranked ones best first, and the references apart."""

    title: str  # "synthetic · classification"
    config: str  # the registered configuration, plus what tells this track from its dataset's others
    fingerprint: str
    ranked: list[tuple[str, Entry]]
    references: list[tuple[str, Entry]]

    @property
    def joint(self) -> Entry | None:
        return next((e for _, e in self.ranked if e.method == BASELINE), None)


def _key(e: Entry) -> str:
    return comparison_key(e.spec, e.data_fingerprint)


def primary_ranks(rows: list[tuple[str, Entry]]) -> list[int]:
    """1 + how many entries are strictly better in the primary metric (ties share a rank; the page's
    script ranks the same way after a sort)."""
    key = rows[0][1].primary() if rows else ""
    sign = -1 if metric_facts(key).higher_is_better else 1
    values = [sign * e.summary[key].mean for _, e in rows]
    # as the page's script: means equal but for summation order (last bits) tie
    return [
        1 + sum(w < v and not math.isclose(w, v, rel_tol=1e-9, abs_tol=1e-9) for w in values) for v in values
    ]


def tracks(entries: Mapping[str, Entry], known: Mapping[str, KnownSplit] | None = None) -> list[Track]:
    """Entries grouped by comparison key, ranked best first by the primary metric, references apart."""
    known = known or {}
    by_key: dict[str, list[tuple[str, Entry]]] = {}
    for name, e in sorted(entries.items()):
        by_key.setdefault(_key(e), []).append((name, e))
    by_dataset: dict[tuple[str, str], list[str]] = {}
    for key, rows in by_key.items():
        by_dataset.setdefault((rows[0][1].dataset, rows[0][1].task), []).append(key)
    out = []
    for (dataset, task), keys in sorted(by_dataset.items()):
        labels = differences(keys)
        for key in keys:
            rows = by_key[key]
            primary = rows[0][1].primary()
            sign = -1 if metric_facts(primary).higher_is_better else 1
            rows.sort(key=lambda r, m=primary, s=sign: (s * r[1].summary[m].mean, r[0]))
            fingerprint = rows[0][1].data_fingerprint
            where = page_key(rows[0][1])
            config = known[where].config if where in known else "unregistered configuration"
            config += f"; {labels[key]}" if labels[key] else ""
            out.append(Track(f"{dataset} · {task}", config, fingerprint,
                             [r for r in rows if r[1].method not in REFERENCES],
                             [r for r in rows if r[1].method in REFERENCES]))  # fmt: skip
    return sorted(out, key=lambda t: (t.title, t.config))


def delta_vs_joint(e: Entry, joint: Entry | None) -> float | None:
    """Mean over the seeds both have of (entry − joint) in the primary metric; None for joint itself."""
    if joint is None or e is joint:
        return None
    key = e.primary()
    base = {s.seed: s.metrics[key] for s in joint.seeds if key in s.metrics}
    diffs = [s.metrics[key] - base[s.seed] for s in e.seeds if s.seed in base and key in s.metrics]
    return sum(diffs) / len(diffs) if diffs else None


CODE_REPO = re.compile(r";\s*(?:as\s+)?([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)")  # "...; owner/repo path.py"
ARXIV = re.compile(r"arXiv[ :](\d{4}\.\d{4,5})")


@cache
def method_links(method: str) -> tuple[str, list[tuple[str, str]]]:
    """A method's reference text (``Method.reference``: paper; official code) and the links it names:
    the GitHub repository of its official code, an arXiv id. Read from the registry's listing (no torch)."""
    from mmbalance.common.registry import METHODS

    listing = {m["name"]: m for m in METHODS.listing()}
    text = str(listing.get(method, {}).get("reference", ""))
    links = [("code", f"https://github.com/{m.group(1)}") for m in CODE_REPO.finditer(text)][:1]
    links += [("paper", f"https://arxiv.org/abs/{m.group(1)}") for m in ARXIV.finditer(text)][:1]
    return text, links


def metric_columns(rows: list[tuple[str, Entry]]) -> list[str]:
    task = rows[0][1].task
    present = {k for _, e in rows for k in e.summary}
    dice = sorted(k for k in present if DICE.match(k) and k not in METRICS[task])
    return [k for k in METRICS[task] if k in present] + dice


# Columns from the seeds' modality numbers (``SeedRun.modality``), when every entry of a table has them.
MODALITY_COLUMNS = {"imbalance_degree": ("Imbalance ↓", "lower"), "equity": ("Equity ↑", "higher"),
                    "worst_missing": ("Worst missing", None)}  # fmt: skip


def modality_stats(e: Entry) -> dict[str, tuple[float, float, str]]:
    """``column -> (mean, std, per-seed text)`` of the seeds' modality numbers (none if a seed lacks them)."""
    if any(s.modality is None for s in e.seeds):
        return {}
    out = {}
    for k in MODALITY_COLUMNS:
        values = [getattr(s.modality, k) for s in e.seeds]
        if all(v is not None for v in values):
            stat = summarize(values)
            per_seed = ", ".join(f"seed {s.seed}: {v:.3f}" for s, v in zip(e.seeds, values, strict=True))
            out[k] = (stat.mean, stat.std, per_seed)
    return out


def modality_columns(rows: list[tuple[str, Entry]], primary: str) -> list[tuple[str, str, str]]:
    """``(key, label, better)`` of the modality columns every entry of ``rows`` has."""
    have = [set(modality_stats(e)) for _, e in rows]
    keys = [k for k in MODALITY_COLUMNS if all(k in h for h in have)]
    better = _better(primary)
    return [(k, MODALITY_COLUMNS[k][0] + (f" {primary}" if k == "worst_missing" else ""),
             MODALITY_COLUMNS[k][1] or better) for k in keys]  # fmt: skip


def hyperparameters(e: Entry) -> list[str]:
    """``key=value`` of the method's params, then the training settings that differ between entries."""
    spec = e.spec
    items = [f"{k}={_value(v)}" for k, v in sorted(e.method_params.items())]
    optim, sched = spec.get("optim") or {}, spec.get("schedule") or {}
    items += [f"epochs={spec.get('epochs')}", f"batch={spec.get('batch_size')}",
              f"{optim.get('name')} lr={_value(optim.get('lr'))}"]  # fmt: skip
    if sched.get("name") not in (None, "none"):
        items.append(f"schedule={sched.get('name')}")
    return items


def code(e: Entry) -> tuple[str, str]:
    """Package version (marked when a seed ran from an uncommitted checkout) and the per-seed commits."""
    dirty = any(s.code_version.endswith("-dirty") for s in e.seeds)
    commits = ", ".join(f"seed {s.seed}: {s.code_version}" for s in e.seeds)
    return e.code_version + (" (uncommitted changes)" if dirty else ""), commits


def _value(v: Any) -> str:
    """A parameter as shown: tuned floats to 4 significant digits (the entry's JSON keeps every digit)."""
    if isinstance(v, float):
        return f"{v:.4g}"
    return v if isinstance(v, str) else json.dumps(v)


def fmt(name: str, value: float) -> str:
    return f"{value:.{metric_facts(name).decimals}f}"


# --- Markdown ---------------------------------------------------------------------------------------------
def md_text(s: str) -> str:
    """Text safe in a Markdown table cell: HTML escaped, Markdown syntax and pipes backslashed."""
    return re.sub(r"([\\`*_\[\]|#~])", r"\\\1", html.escape(s, quote=True))


def md_url(url: str) -> str:
    return quote(url, safe=":/?#&=%+@,;~-._!$'*")  # parentheses, brackets, spaces and quotes encoded


def _md_method(e: Entry) -> str:
    text, links = method_links(e.method)
    out = md_text(e.method) + "".join(f" ([{k}]({md_url(u)}))" for k, u in links)
    return out + (f" ([entry link]({md_url(e.url)}))" if e.url else "")


def _md_rows(rows: list[tuple[str, Entry]], metrics: list[str], extra, joint: Entry | None, ranked: bool):
    lines = []
    for rank, (name, e) in zip(primary_ranks(rows) if ranked else ["†"] * len(rows), rows, strict=True):
        cells = [str(rank), _md_method(e), md_text(", ".join(hyperparameters(e)))]
        cells += [f"{fmt(m, e.summary[m].mean)} ± {fmt(m, e.summary[m].std)}" if m in e.summary else "–"
                  for m in metrics]  # fmt: skip
        delta = delta_vs_joint(e, joint)
        cells.append("–" if delta is None else f"{delta:+.{metric_facts(e.primary()).decimals}f}")
        stats = modality_stats(e)
        cells += [f"{stats[k][0]:.3f} ± {stats[k][1]:.3f}" for k, _, _ in extra]
        cells += [str(len(e.seeds)), md_text(e.submitter), md_text(code(e)[0]), e.date.date().isoformat(),
                  f"[json](entries/{md_url(name)})"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(entries: Mapping[str, Entry], known: Mapping[str, KnownSplit] | None = None) -> str:
    lines = ["# mmbalance leaderboard", "",
             "Generated by `mmbalance leaderboard build` from the validated entries in `entries/`; "
             "do not edit. "
             "Each number is the mean ± sample std (ddof=1) over seeds of the test metric at the best "
             "validation epoch. One table per track: entries trained alike (same data, model, epochs and "
             "optimiser) but for the method and its parameters. Δ vs joint: mean over the seeds both have "
             "of (entry − the track's joint entry) in the primary metric. † Reference entries (unimodal "
             "models, the unimodal ensemble) are shown apart and never ranked.", ""]  # fmt: skip
    if not entries:
        lines.append("No entries yet: `mmbalance submit RUN_DIR... --name NAME --out FILE`.")
    for t in tracks(entries, known):
        everyone = t.ranked + t.references
        metrics, primary = metric_columns(everyone), everyone[0][1].primary()
        extra = modality_columns(everyone, primary)
        lines += [
            f"## {md_text(t.title)}",
            "",
            f"{md_text(t.config)}; split fingerprint `{t.fingerprint}`",
            "",
        ]
        head = ["#", "Method", "Hyper-parameters", *metrics, f"Δ {primary} vs joint",
                *(label for _, label, _ in extra), "Seeds", "Submitter", "Code", "Date", "Entry"]  # fmt: skip
        for rows, ranked in ((t.ranked, True), (t.references, False)):
            if not rows:
                continue
            lines += [] if ranked else ["References (never ranked):", ""]
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += _md_rows(rows, metrics, extra, t.joint, ranked) + [""]
    return "\n".join(lines) + "\n"


# --- HTML ---------------------------------------------------------------------------------------------------
def esc(s: str) -> str:
    return html.escape(s, quote=True)


def _better(metric: str) -> str:
    return "higher" if metric_facts(metric).higher_is_better else "lower"


def _sortable_th(label: str, better: str) -> str:
    return f'<th data-better="{better}"><button type="button">{esc(label)}</button></th>'


def _html_method(e: Entry) -> str:
    text, links = method_links(e.method)
    out = f"<strong>{esc(e.method)}</strong>"
    out += "".join(f' <a href="{esc(u)}" rel="noopener noreferrer">{k}</a>' for k, u in links)
    return out + (f'<div class="ref">{esc(text)}</div>' if text else "")


def _table(table_id: str, rows: list[tuple[str, Entry]], joint: Entry | None, ranked: bool) -> list[str]:
    metrics = metric_columns(rows)
    primary = rows[0][1].primary()
    head = ["<th>#</th>", "<th>Method (paper, code)</th>", "<th>Hyper-parameters</th>"]
    head += [_sortable_th(m, _better(m)) for m in metrics]
    head.append(_sortable_th(f"Δ {primary} vs joint", _better(primary)))
    extra = modality_columns(rows, primary)
    head += [_sortable_th(label, better) for _, label, better in extra]
    head += [_sortable_th("Seeds", "higher"), "<th>Submitter</th>", "<th>Code version</th>",
             _sortable_th("Date", "higher"), "<th>Links</th>"]  # fmt: skip
    caption = "Ranked" if ranked else "References (never ranked)"
    out = [f'<table id="{table_id}" class="entries {"ranked" if ranked else "refs"}">',
           f"<caption>{caption}</caption>",
           "<thead><tr>" + "".join(head) + "</tr></thead>", "<tbody>"]  # fmt: skip
    for rank, (name, e) in zip(primary_ranks(rows) if ranked else ["†"] * len(rows), rows, strict=True):
        cells = [f'<td class="num">{rank}</td>', f"<td>{_html_method(e)}</td>",
                 f'<td class="hp">{"<br>".join(esc(h) for h in hyperparameters(e))}</td>']  # fmt: skip
        for m in metrics:
            if m in e.summary:
                s = e.summary[m]
                per_seed = ", ".join(f"seed {r.seed}: {fmt(m, r.metrics[m])}" for r in e.seeds)
                cells.append(f'<td class="num" data-value="{s.mean!r}" title="{esc(per_seed)}">'
                             f"{fmt(m, s.mean)} ± {fmt(m, s.std)}</td>")  # fmt: skip
            else:
                cells.append('<td class="num" data-value="NaN">–</td>')
        delta = delta_vs_joint(e, joint)
        shown = "–" if delta is None else f"{delta:+.{metric_facts(primary).decimals}f}"
        cells.append(f'<td class="num" data-value="{"NaN" if delta is None else repr(delta)}">{shown}</td>')
        stats = modality_stats(e)
        for k, _, _ in extra:
            mean, std, per_seed = stats[k]
            cells.append(
                f'<td class="num" data-value="{mean!r}" title="{esc(per_seed)}">{mean:.3f} ± {std:.3f}</td>'
            )
        links = [f'<a href="entries/{esc(quote(name))}">json</a>']
        if e.url:
            links.append(f'<a href="{esc(e.url)}" rel="noopener noreferrer nofollow">entry link</a>')
        cells += [f'<td class="num" data-value="{len(e.seeds)}">{len(e.seeds)}</td>',
                  f"<td>{esc(e.submitter)}</td>",
                  f'<td><code title="{esc(code(e)[1])}">{esc(code(e)[0])}</code></td>',
                  f'<td data-value="{e.date.timestamp()!r}">{e.date.date().isoformat()}</td>',
                  f"<td>{' · '.join(links)}</td>"]  # fmt: skip
        out.append("<tr>" + "".join(cells) + "</tr>")
    return out + ["</tbody>", "</table>"]


def render_html(entries: Mapping[str, Entry], known: Mapping[str, KnownSplit] | None = None) -> str:
    digest = base64.b64encode(hashlib.sha256(SORT_SCRIPT.encode()).digest()).decode()
    csp = f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; base-uri 'none'"
    body = ["<h1>mmbalance leaderboard</h1>",
            '<p class="meta">Mean ± sample std (ddof=1) over seeds of the test metric at the best validation '
            "epoch. One table per track: entries trained alike (same data, model, epochs and optimiser) but "
            "for the method and its parameters. Δ vs joint: mean over the seeds both have of (entry − the "
            "track's joint entry). Reference entries are shown apart, never ranked. Click a column to sort "
            "(the ranks follow); hover a value for the per-seed numbers. Generated by "
            "<code>mmbalance leaderboard build</code> from validated entries; do not edit.</p>",
            '<p><input type="search" id="filter" placeholder="Filter: method, hyper-parameter, submitter..." '
            'aria-label="Filter entries"></p>']  # fmt: skip
    if not entries:
        body.append("<p>No entries yet.</p>")
    for i, t in enumerate(tracks(entries, known)):
        body.append(f"<h2>{esc(t.title)}</h2>")
        body.append(
            f'<p class="meta">{esc(t.config)}; split fingerprint <code>{esc(t.fingerprint)}</code></p>'
        )
        for table_id, rows, ranked in ((f"t{i}", t.ranked, True), (f"r{i}", t.references, False)):
            body += (
                ['<div class="scroll">', *_table(table_id, rows, t.joint, ranked), "</div>"] if rows else []
            )
    return "\n".join([
        "<!doctype html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>mmbalance leaderboard</title>", f"<style>\n{STYLE}</style>", "</head>", "<body>", *body,
        f"<script>{SORT_SCRIPT}</script>", "</body>", "</html>", "",  # the CSP hash covers exactly this text
    ])  # fmt: skip


# --- build: validate every entry, render the two pages ---------------------------------------------------
@dataclass
class Built:
    entries: dict[str, Entry]
    markdown: Path
    html: Path


def build(results: Path | str = "results", fingerprints: Path | str | None = None) -> Built:
    """Validate every entry under ``results/leaderboard/entries`` and render README.md and index.html.

    Raises ``LeaderboardError`` listing every bad entry; nothing is written then.
    """
    root = Path(results) / "leaderboard"
    known = load_fingerprints(fingerprints)
    good, errors = load_entries(root / "entries", known)
    if errors:
        raise LeaderboardError(f"{len(errors)} bad leaderboard entr{'y' if len(errors) == 1 else 'ies'}:\n"
                               + "\n".join(errors))  # fmt: skip
    md, page = root / "README.md", root / "index.html"
    by_fingerprint = {k.page_key: k for k in known.values()}
    atomic_write_text(md, render_markdown(good, by_fingerprint))
    atomic_write_text(page, render_html(good, by_fingerprint))
    return Built(good, md, page)
