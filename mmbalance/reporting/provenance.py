"""The runs behind each shipped table, so that a test can tell a stale one.

``report`` and ``reproduce`` write ``<out>/tables/<name>.runs`` beside ``<name>.md``: the sorted run ids
of the table's runs. ``sweep`` writes ``<results>/sweeps/<suite>.runs``, the run ids it planned, and the
suite's report takes exactly those runs when the file is there. A run id hashes the canonical spec, the data fingerprint and the package version
(``RunSpec.run_id``), so planning the committed spec again (``expected_run_ids``: the suite of the same
name in ``benchmarks/``, or the paper table's suite) and comparing ids (``stale``) catches a changed
setting, a changed data generator or a new version without training anything. What the ids cannot see
(the numbers, the rendering) the slow test sees: it retrains and compares the table byte for byte
(``tests/test_shipped_results.py``).
"""

from __future__ import annotations

from pathlib import Path

from mmbalance.reporting.tables import RUNS_SUFFIX, read_runs

__all__ = [
    "BENCHMARKS",
    "source_of",
    "expected_run_ids",
    "stale",
]

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


# The tables a suite's report writes beside ``<suite>``: the modality evaluation and the incomplete-data protocol.
COMPANIONS = ("-modality", "-incomplete")


def suite_of(name: str) -> str:
    """The suite a table is named after (``all-incomplete`` -> ``all``)."""
    return next((name.removesuffix(c) for c in COMPANIONS if name.endswith(c)), name)


def source_of(name: str) -> Path | None:
    """The committed spec a table named ``name`` is built from: ``benchmarks/<name>.yaml`` (a suite,
    whose report also writes its ``COMPANIONS``) or ``benchmarks/paper/<name>.yaml``."""
    for candidate in (
        BENCHMARKS / f"{suite_of(name)}.yaml",
        BENCHMARKS / "paper" / f"{name}.yaml",
    ):
        if candidate.is_file():
            return candidate
    return None


def expected_run_ids(source: Path, data_root: Path | None = None) -> tuple[set[str], list[str]]:
    """The run ids the committed spec gives now, and the entries that cannot be planned here (missing
    data: those tables are checked only where the data is)."""
    from mmbalance.scaleout.sweep import load_suite, plan, run_ids

    if source.parent.name == "paper":
        from mmbalance.reporting.paper import load_table, table_suite

        suite = table_suite(*load_table(source))
    else:
        suite = load_suite(source)
    planned = plan(suite, data_root)
    return set(run_ids(planned, data_root)), [
        f"{p.label}: {p.skip_reason}" for p in planned if p.spec is None
    ]


def stale(tables_dir: Path, name: str, data_root: Path | None = None) -> list[str]:
    """Why the table ``<tables_dir>/<name>.md`` is not what its committed spec gives ([] when current)."""
    source = source_of(name)
    if source is None:
        return [f"{tables_dir / name}.md: no suite or paper table named {name} in {BENCHMARKS}"]
    runs_file = tables_dir / f"{suite_of(name)}{RUNS_SUFFIX}"
    if not runs_file.is_file():
        return [f"{runs_file}: missing; the table's runs are unknown (rebuild with `make results`)"]
    expected, unplanned = expected_run_ids(source, data_root)
    recorded = read_runs(runs_file)
    problems = []
    if missing := expected - recorded:
        problems.append(f"{len(missing)} run(s) that {source.name} gives now are not in the table")
    if not unplanned and (extra := recorded - expected):
        problems.append(f"{len(extra)} run(s) of the table are not what {source.name} gives now")
    return [f"{tables_dir / name}.md: {p} (rebuild with `make results`)" for p in problems]
