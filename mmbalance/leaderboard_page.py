"""Render validated leaderboard entries as Markdown and as one static HTML page.

One table per dataset configuration (dataset, task and split fingerprint: numbers measured on other
data are never ranked together), rows ranked by the task's primary metric. The HTML page has no
external assets and works from ``file://``: CSS and a small sorting script are inline, and a
Content-Security-Policy allows only that script (by its hash), so nothing injected could run even
if escaping failed. Every user-supplied string is escaped; URLs were restricted to http(s) on entry.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from mmbalance.leaderboard import DICE, LOWER_IS_BETTER, METRICS, RANGES, Entry, KnownSplit, summarize

__all__ = ["render_markdown", "render_html", "groups", "SORT_SCRIPT"]

# sortOrder is pure (unit-tested with node); the DOM part only runs in a browser.
SORT_SCRIPT = """\
"use strict";
// Indices of `values` in sorted order; NaN (missing) always last; ties keep page order.
function sortOrder(values, ascending) {
  const sign = ascending ? 1 : -1;
  return values.map((_, i) => i).sort((a, b) => {
    const x = values[a], y = values[b], mx = Number.isNaN(x), my = Number.isNaN(y);
    if (mx || my) return mx === my ? a - b : (mx ? 1 : -1);
    return x === y ? a - b : (x < y ? -sign : sign);
  });
}
function sortTable(table, col, ascending) {
  const body = table.tBodies[0], rows = Array.from(body.rows);
  const values = rows.map(r => parseFloat(r.cells[col].dataset.value));
  for (const i of sortOrder(values, ascending)) body.appendChild(rows[i]);
  for (const th of table.tHead.rows[0].cells) th.removeAttribute("aria-sort");
  table.tHead.rows[0].cells[col].setAttribute("aria-sort", ascending ? "ascending" : "descending");
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
  window.addEventListener("hashchange", applyHash);
  applyHash();
}
"""

STYLE = """\
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;color:#1d1d1f}
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
"""


def groups(entries: Mapping[str, Entry]) -> list[tuple[tuple[str, str, str], list[tuple[str, Entry]]]]:
    """Entries grouped by (dataset, task, split fingerprint), each group ranked best first."""
    out: dict[tuple[str, str, str], list[tuple[str, Entry]]] = {}
    for name, e in sorted(entries.items()):
        out.setdefault((e.dataset, e.task, e.data_fingerprint), []).append((name, e))
    for rows in out.values():
        key = rows[0][1].primary()
        sign = 1 if key in LOWER_IS_BETTER else -1
        rows.sort(key=lambda r: (sign * r[1].summary[key].mean, r[0]))
    return sorted(out.items())


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
    better = "lower" if primary in LOWER_IS_BETTER else "higher"
    return [(k, MODALITY_COLUMNS[k][0] + (f" {primary}" if k == "worst_missing" else ""),
             MODALITY_COLUMNS[k][1] or better) for k in keys]  # fmt: skip


def hyperparameters(e: Entry) -> list[str]:
    """``key=value`` of the method's params, then the training settings that differ between entries."""
    spec = e.spec
    items = [f"{k}={_value(v)}" for k, v in sorted(e.method_params.items())]
    optim, sched = spec.get("optim") or {}, spec.get("schedule") or {}
    items += [f"epochs={spec.get('epochs')}", f"batch={spec.get('batch_size')}",
              f"{optim.get('name')} lr={optim.get('lr')}"]  # fmt: skip
    if sched.get("name") not in (None, "none"):
        items.append(f"schedule={sched.get('name')}")
    return items


def code(e: Entry) -> tuple[str, str]:
    """Package version (marked when a seed ran from an uncommitted checkout) and the per-seed commits."""
    dirty = any(s.code_version.endswith("-dirty") for s in e.seeds)
    commits = ", ".join(f"seed {s.seed}: {s.code_version}" for s in e.seeds)
    return e.code_version + (" (uncommitted changes)" if dirty else ""), commits


def _value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def fmt(name: str, value: float) -> str:
    return f"{value:.3f}" if name in RANGES else f"{value:.2f}"


def _title(key: tuple[str, str, str], known: Mapping[str, KnownSplit]) -> tuple[str, str]:
    dataset, task, fingerprint = key
    config = known[fingerprint].config if fingerprint in known else "unregistered configuration"
    return f"{dataset} · {task}", config


# --- Markdown ---------------------------------------------------------------------------------------------
def md_text(s: str) -> str:
    """Text safe in a Markdown table cell: HTML escaped, Markdown syntax and pipes backslashed."""
    return re.sub(r"([\\`*_\[\]|#~])", r"\\\1", html.escape(s, quote=True))


def md_url(url: str) -> str:
    return quote(url, safe=":/?#&=%+@,;~-._!$'*")  # parentheses, brackets, spaces and quotes encoded


def render_markdown(entries: Mapping[str, Entry], known: Mapping[str, KnownSplit] | None = None) -> str:
    known = known or {}
    lines = ["# mmbalance leaderboard", "",
             "Generated by `mmbalance leaderboard build` from the validated entries in `entries/`; "
             "do not edit. "
             "Each number is the mean ± sample std (ddof=1) over seeds of the test metric at the best "
             "validation epoch.", ""]  # fmt: skip
    if not entries:
        lines.append("No entries yet: `mmbalance submit RUN_DIR... --name NAME --out FILE`.")
    for key, rows in groups(entries):
        title, config = _title(key, known)
        metrics = metric_columns(rows)
        extra = modality_columns(rows, rows[0][1].primary())
        lines += [f"## {md_text(title)}", "", f"{md_text(config)}; split fingerprint `{key[2]}`", ""]
        head = ["#", "Method", "Hyper-parameters", *metrics, *(label for _, label, _ in extra), "Seeds",
                "Submitter", "Code", "Date", "Entry"]  # fmt: skip
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for rank, (name, e) in enumerate(rows, 1):
            cells = [str(rank), md_text(e.method) + (f" ([link]({md_url(e.url)}))" if e.url else ""),
                     md_text(", ".join(hyperparameters(e)))]  # fmt: skip
            cells += [f"{fmt(m, e.summary[m].mean)} ± {fmt(m, e.summary[m].std)}" if m in e.summary else "–"
                      for m in metrics]  # fmt: skip
            stats = modality_stats(e)
            cells += [f"{stats[k][0]:.3f} ± {stats[k][1]:.3f}" for k, _, _ in extra]
            cells += [str(len(e.seeds)), md_text(e.submitter), md_text(code(e)[0]), e.date.date().isoformat(),
                      f"[json](entries/{md_url(name)})"]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


# --- HTML ---------------------------------------------------------------------------------------------------
def esc(s: str) -> str:
    return html.escape(s, quote=True)


def _sortable_th(label: str, better: str) -> str:
    return f'<th data-better="{better}"><button type="button">{esc(label)}</button></th>'


def _table(table_id: str, rows: list[tuple[str, Entry]]) -> list[str]:
    metrics = metric_columns(rows)
    head = ["<th>#</th>", "<th>Method</th>", "<th>Hyper-parameters</th>"]
    head += [_sortable_th(m, "lower" if m in LOWER_IS_BETTER else "higher") for m in metrics]
    extra = modality_columns(rows, rows[0][1].primary())
    head += [_sortable_th(label, better) for _, label, better in extra]
    head += [_sortable_th("Seeds", "higher"), "<th>Submitter</th>", "<th>Code</th>",
             _sortable_th("Date", "higher"), "<th>Links</th>"]  # fmt: skip
    out = [f'<table id="{table_id}">', "<thead><tr>" + "".join(head) + "</tr></thead>", "<tbody>"]
    for rank, (name, e) in enumerate(rows, 1):
        cells = [f'<td class="num">{rank}</td>', f"<td><strong>{esc(e.method)}</strong></td>",
                 f'<td class="hp">{"<br>".join(esc(h) for h in hyperparameters(e))}</td>']  # fmt: skip
        for m in metrics:
            if m in e.summary:
                s = e.summary[m]
                per_seed = ", ".join(f"seed {r.seed}: {fmt(m, r.metrics[m])}" for r in e.seeds)
                cells.append(f'<td class="num" data-value="{s.mean!r}" title="{esc(per_seed)}">'
                             f"{fmt(m, s.mean)} ± {fmt(m, s.std)}</td>")  # fmt: skip
            else:
                cells.append('<td class="num" data-value="NaN">–</td>')
        stats = modality_stats(e)
        for k, _, _ in extra:
            mean, std, per_seed = stats[k]
            cells.append(
                f'<td class="num" data-value="{mean!r}" title="{esc(per_seed)}">{mean:.3f} ± {std:.3f}</td>'
            )
        links = [f'<a href="entries/{esc(quote(name))}">json</a>']
        if e.url:
            links.append(f'<a href="{esc(e.url)}" rel="noopener noreferrer nofollow">paper/code</a>')
        cells += [f'<td class="num" data-value="{len(e.seeds)}">{len(e.seeds)}</td>',
                  f"<td>{esc(e.submitter)}</td>",
                  f'<td><code title="{esc(code(e)[1])}">{esc(code(e)[0])}</code></td>',
                  f'<td data-value="{e.date.timestamp()!r}">{e.date.date().isoformat()}</td>',
                  f"<td>{' · '.join(links)}</td>"]  # fmt: skip
        out.append("<tr>" + "".join(cells) + "</tr>")
    return out + ["</tbody>", "</table>"]


def render_html(entries: Mapping[str, Entry], known: Mapping[str, KnownSplit] | None = None) -> str:
    known = known or {}
    digest = base64.b64encode(hashlib.sha256(SORT_SCRIPT.encode()).digest()).decode()
    csp = f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; base-uri 'none'"
    body = ["<h1>mmbalance leaderboard</h1>",
            '<p class="meta">Mean ± sample std (ddof=1) over seeds of the test metric at the best validation '
            "epoch. Click a metric to sort; hover a value for the per-seed numbers. Generated by "
            "<code>mmbalance leaderboard build</code> from validated entries; do not edit.</p>"]  # fmt: skip
    if not entries:
        body.append("<p>No entries yet.</p>")
    for i, (key, rows) in enumerate(groups(entries)):
        title, config = _title(key, known)
        body.append(f"<h2>{esc(title)}</h2>")
        body.append(f'<p class="meta">{esc(config)}; split fingerprint <code>{esc(key[2])}</code></p>')
        body += _table(f"t{i}", rows)
    return "\n".join([
        "<!doctype html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>mmbalance leaderboard</title>", f"<style>\n{STYLE}</style>", "</head>", "<body>", *body,
        f"<script>{SORT_SCRIPT}</script>", "</body>", "</html>", "",  # the CSP hash covers exactly this text
    ])  # fmt: skip
