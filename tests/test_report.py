"""Tables from run records: aggregation, best / second-best marks, protocols, paper tables, reproduce."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from _report_records import make_run

from mmbalance.common.spec import SpecError
from mmbalance.reporting.paper import PaperTable, load_table, render, reproduce
from mmbalance.reporting.report import load_runs, report, run_tables
from mmbalance.reporting.results import RecordWarning, load
from mmbalance.reporting.tables import Cell, aggregate, rank_marks

PAPER_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "paper"
# The CGGM paper's tables: their published numbers are exactly those in notes/cggm-paper-tables.md.
CGGM_TABLES = {"food101-table", "mosi-iemocap-table", "brats-table", "iemocap-ablation-table",
               "iemocap-classifiers-table", "memory-table", "synthetic-table", "synthetic-ablation"}  # fmt: skip


def test_aggregate_mean_std_n_by_hand(tmp_path):
    for seed, acc in enumerate([70.0, 72.0, 77.0]):
        make_run(tmp_path, "joint", seed, test={"accuracy": acc})
    make_run(tmp_path, "pmr", 0, test={"accuracy": 60.0})
    rows = aggregate(load_runs(tmp_path), ["accuracy"])
    joint = next(r for r in rows if r.method == "joint")
    # mean 73; sample variance ((-3)^2 + (-1)^2 + 4^2) / (3 - 1) = 13
    assert joint.cells["accuracy"].mean == pytest.approx(73.0)
    assert joint.cells["accuracy"].std == pytest.approx(math.sqrt(13.0))
    assert joint.cells["accuracy"].n == 3 and joint.seeds == 3
    assert joint.cells["accuracy"].text() == "73.00 ± 3.61"
    single = next(r for r in rows if r.method == "pmr").cells["accuracy"]
    assert single.std is None and single.text() == "60.00"  # one seed: no std


def test_configurations_are_rows_labelled_by_what_differs(tmp_path):
    for seed in (0, 1):
        make_run(
            tmp_path, "cggm", seed, method_params={"rho": 1.0, "lam": 0.1}, test={"accuracy": 60.0 + seed}
        )
        make_run(
            tmp_path, "cggm", seed, method_params={"rho": 1.5, "lam": 0.1}, test={"accuracy": 70.0 + seed}
        )
    rows = aggregate(load_runs(tmp_path), ["accuracy"])
    labels = {r.label: r.cells["accuracy"].mean for r in rows}
    assert labels == {"cggm(rho=1.0)": 60.5, "cggm(rho=1.5)": 70.5}  # seeds never mix configurations


def test_rank_marks_respect_direction_ties_and_eligibility():
    cells = [Cell(70.0), Cell(80.0), Cell(75.0), Cell(90.0), Cell(None)]
    rank_marks(cells, higher=True, eligible=[True, True, True, False, True])
    assert [c.mark for c in cells] == [0, 1, 2, 0, 0]  # 90 is a unimodal row: not ranked
    mae = [Cell(0.75, decimals=3), Cell(0.70, decimals=3), Cell(0.80, decimals=3)]
    rank_marks(mae, higher=False)
    assert [c.mark for c in mae] == [2, 1, 0]
    tie = [Cell(80.001), Cell(80.004), Cell(79.0)]  # equal as displayed (80.00): both best
    rank_marks(tie, higher=True)
    assert [c.mark for c in tie] == [1, 1, 2]


def test_run_tables_mark_best_and_second_in_markdown_and_latex(tmp_path):
    for seed in (0, 1):
        make_run(tmp_path, "joint", seed, test={"accuracy": 70.0, "f1_macro": 60.0})
        make_run(tmp_path, "ogm_ge", seed, test={"accuracy": 75.0, "f1_macro": 55.0})
        make_run(tmp_path, "pmr", seed, test={"accuracy": 72.0, "f1_macro": 58.0})
        make_run(tmp_path, "unimodal", seed, method_params={"modality": "m2"}, modalities=("m2",),
                 test={"accuracy": 99.0, "f1_macro": 99.0}, probe={"m2": 66.0})  # fmt: skip
    [block] = run_tables(load_runs(tmp_path), "best-valid-test")
    table, csv = block.table, block.csv
    md, tex = table.markdown(), table.latex()
    assert "| ogm_ge | **75.00 ± 0.00** | 55.00 ± 0.00 |" in md
    assert "| pmr | _72.00 ± 0.00_ | _58.00 ± 0.00_ |" in md
    assert "| joint | 70.00 ± 0.00 | **60.00 ± 0.00** |" in md
    assert "99.00" in md and "**99.00" not in md  # the unimodal row is shown but not ranked
    assert "\\textbf{75.00 $\\pm$ 0.00}" in tex and "\\underline{72.00 $\\pm$ 0.00}" in tex
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "Protocol: test metrics at the best validation epoch" in md
    # the weak modality (lowest probe inside the multimodal models: m0 = 40) gets its column
    assert "m0 probe Acc (weak)" in md
    assert set(csv["metric"]) == {"accuracy", "f1_macro", "probe/m0"}
    best = csv[(csv["metric"] == "accuracy") & (csv["mark"] == 1)]
    assert list(best["method"]) == ["ogm_ge"]


def test_lower_is_better_for_mae(tmp_path):
    make_run(tmp_path, "joint", 0, task="regression", test={"mae": 0.80, "corr": 0.6})
    make_run(tmp_path, "cggm", 0, task="regression", test={"mae": 0.75, "corr": 0.5})
    [block] = run_tables(load_runs(tmp_path), "best-valid-test")
    table = block.table
    md = table.markdown()
    assert "**0.750**" in md and "_0.800_" in md  # MAE: lower is better, 3 decimals
    assert "**0.600**" in md and "_0.500_" in md  # Corr: higher is better
    assert "m2 probe MAE (weak)" in md and "| 42.000 |" in md  # the probe metric is the task's (MAE here)


def test_protocol_best_valid_reads_best_validation_over_epochs(tmp_path):
    make_run(
        tmp_path, "joint", 0, test={"accuracy": 70.0}, valid={"accuracy": 65.0}, best_valid={"accuracy": 68.0}
    )
    assert load_runs(tmp_path, "best-valid-test")["accuracy"].item() == 70.0
    assert load_runs(tmp_path, "best-valid")["accuracy"].item() == 68.0
    with pytest.raises(ValueError, match="unknown protocol"):
        load_runs(tmp_path, "test")


def test_unreadable_final_json_is_named_listed_and_left_out(tmp_path):
    for seed, acc in enumerate([70.0, 72.0]):
        make_run(tmp_path, "joint", seed, test={"accuracy": acc})
    make_run(tmp_path, "joint", 2, test={"accuracy": 10.0}).file("final.json").write_text("{not json")
    with pytest.warns(RecordWarning, match=r"final\.json: not valid JSON"):
        report(tmp_path, figures=False)
    md = (tmp_path / "tables" / "all-runs.md").read_text()
    assert "| joint | 71.00 ± 1.41 |" in md and "10.00" not in md
    assert "2/3 incomplete" in md and "- joint seed 2: unreadable (" in md


def test_report_writes_md_tex_csv_of_the_suite_only(tmp_path):
    results = tmp_path / "results"
    for seed in (0, 1):
        make_run(results, "joint", seed, test={"accuracy": 70.0 + seed})
    make_run(results, "joint", 0, epochs=9, test={"accuracy": 10.0})  # not in the suite (epochs differ)
    suite = tmp_path / "suite.yaml"
    dataset = {"dataset": "synthetic", "dataset_params": {"task": "classification"}}
    doc = {
        "name": "mini",
        "seeds": [0, 1],
        "base": {"epochs": 3},
        "datasets": [dataset],
        "methods": [{"method": "joint"}],
    }
    suite.write_text(yaml.safe_dump(doc))
    paths = report(results, suite=suite, figures=False)
    assert [p.name for p in paths] == ["mini.md", "mini.tex", "mini.csv", "mini.runs"]
    assert len((results / "tables" / "mini.runs").read_text().split()) == 2  # the suite's runs only
    md = (results / "tables" / "mini.md").read_text()
    assert "70.50 ± 0.71" in md and "10.00" not in md
    make_run(results, "cggm", 0, epochs=3)
    paths = report(results, figures=False, methods=["cggm"])
    assert paths[0].name == "all-runs-cggm.md" and "joint" not in paths[0].read_text()


def test_report_code_imports_no_runner_method_or_adapter(tmp_path):
    make_run(tmp_path, "joint", 0, diag=True)
    code = textwrap.dedent(f"""
        import sys
        from mmbalance.reporting.report import report
        from mmbalance.reporting.paper import render_from_records
        report({str(tmp_path)!r})
        render_from_records({str(PAPER_DIR / "synthetic-table.yaml")!r}, {str(tmp_path)!r})
        # not even the data contract (and its monai import): a table needs records only
        bad = [m for m in sys.modules if m in ("mmbalance.training.runner", "mmbalance.training.data")
               or m.startswith(("mmbalance.methods.", "mmbalance.datasets."))]
        assert not bad, bad
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


# --- paper tables -------------------------------------------------------------------------------------
TABLE = {
    "name": "t",
    "title": "A table",
    "source": "a paper",
    "columns": [
        {"key": "acc", "label": "Acc", "metric": "accuracy"},
        {"key": "f1", "label": "F1", "metric": "f1_macro"},
    ],
    "rows": [
        {"label": "Joint", "match": {"method": "joint"}},
        {"label": "CGGM", "match": {"method": "cggm"}, "published": {"acc": 75.0}, "source": "somewhere"},
        {"label": "Not runnable", "note": "no switch for it"},
    ],
}


def test_paper_table_published_number_and_na(tmp_path):
    for seed, acc in enumerate([72.0, 74.0]):
        make_run(tmp_path, "cggm", seed, test={"accuracy": acc, "f1_macro": 50.0})
    make_run(tmp_path, "joint", 0, test={"accuracy": 70.0, "f1_macro": 40.0})
    table, csv = render(PaperTable.model_validate(TABLE), load_runs(tmp_path))
    md = table.markdown()
    # published 75 | ours 73 ± 1.41 | Δ -2; F1 not published: n/a, and no Δ
    assert "| CGGM | 75.00 | **73.00 ± 1.41** | -2.00 | n/a | **50.00 ± 0.00** | n/a |" in md
    # fewer seeds than the rest: n shown, and never ranked (no italics for second best)
    assert "| Joint | n/a | 70.00 (n=1/2) | n/a |" in md and "such a cell is never ranked" in md
    assert "| Not runnable | n/a | n/a | n/a | n/a | n/a | n/a |" in md
    assert "CGGM: published numbers from somewhere." in md and "Not runnable: no switch for it" in md
    row = csv[(csv["row"] == "CGGM") & (csv["column"] == "Acc")].iloc[0]
    assert row["published"] == 75.0 and row["delta"] == pytest.approx(-2.0) and row["n"] == 2
    assert math.isnan(csv[(csv["row"] == "CGGM") & (csv["column"] == "F1")]["published"].item())


def test_paper_table_incomplete_cell_not_ranked_and_failed_run_listed(tmp_path):
    for seed in (0, 1):
        make_run(tmp_path, "joint", seed, test={"accuracy": 70.0, "f1_macro": 40.0})
    make_run(tmp_path, "cggm", 0, test={"accuracy": 90.0, "f1_macro": 50.0})
    make_run(tmp_path, "cggm", 1, status="failed: diverged: loss is nan")
    table, csv = render(PaperTable.model_validate(TABLE), load(tmp_path), asked=2)
    md = table.markdown()
    assert "| CGGM | 75.00 | 90.00 (n=1/2) | +15.00 |" in md  # never bold at n = 1
    assert "| Joint | n/a | **70.00 ± 0.00** |" in md
    assert "- cggm seed 1: failed (diverged: loss is nan), run cggm-" in md
    assert set(csv["n_asked"]) == {2}


def test_paper_table_spec_errors_name_the_field():
    bad = {**TABLE, "rows": [{"label": "X", "published": {"nope": 1.0}, "source": "s"}]}
    with pytest.raises(ValueError, match=r"row 'X': unknown column key\(s\) \['nope'\]"):
        PaperTable.model_validate(bad)
    unsourced = {**TABLE, "rows": [{"label": "X", "published": {"acc": 1.0}}]}
    with pytest.raises(ValueError, match="need a `source`"):
        PaperTable.model_validate(unsourced)
    with pytest.raises(SpecError, match="unknown table 'no-such-table'"):
        load_table("no-such-table")


@pytest.mark.parametrize("path", sorted(PAPER_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_paper_tables_are_valid(path):
    table, _ = load_table(path)
    published = [v for r in table.rows for v in r.published.values() if v is not None]
    assert all(r.source for r in table.rows if r.published)
    if table.name.startswith(("food101", "brats", "mosi")):
        assert published  # the numbers on file are there ...
    if table.name in CGGM_TABLES:
        assert len(published) <= 7  # ... and only those (notes/cggm-paper-tables.md has 7 cells)


def test_shipped_published_numbers_are_exactly_the_ones_on_file():
    # ../shared/notes/cggm-paper-tables.md: CGGM Food101 Acc, MOSI MAE, IEMOCAP Acc, BraTS WT / TC / ET / avg
    on_file = {("food101-table", "CGGM", "acc"): 92.94, ("mosi-iemocap-table", "CGGM", "mosi_mae"): 0.747,
               ("mosi-iemocap-table", "CGGM", "iemo_acc"): 75.38, ("brats-table", "CGGM", "wt"): 76.94,
               ("brats-table", "CGGM", "tc"): 72.75, ("brats-table", "CGGM", "et"): 72.14,
               ("brats-table", "CGGM", "avg"): 73.94}  # fmt: skip
    shipped = {}
    for path in PAPER_DIR.glob("*.yaml"):
        table, _ = load_table(path)
        if table.name not in CGGM_TABLES:
            continue  # other papers' tables: each row names its own source (test above)
        shipped |= {
            (table.name, r.label, k): v for r in table.rows for k, v in r.published.items() if v is not None
        }
    assert shipped == on_file


def test_reproduce_reuses_finished_runs_and_reports_missing_data(tmp_path):
    tiny = {"n_train": 64, "n_valid": 32, "n_test": 32}
    suite = {
        "name": "mini", "seeds": [0], "base": {"epochs": 1, "batch_size": 32, "probe_every": 2},
        "datasets": [{"dataset": "synthetic", "dataset_params": tiny}, {"dataset": "mosi"}],
        "methods": [{"method": "joint"}, {"method": "cggm"}],
    }  # fmt: skip
    spec = {**TABLE, "suite": suite}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(spec))
    results, data = tmp_path / "results", tmp_path / "data"
    paths, missing = reproduce(path, results, data_root=data, device="cpu", progress=False, figures=False)
    assert any(line.startswith("mosi") and "data missing" in line for line in missing)
    runs = sorted((results / "runs").glob("*/final.json"))
    assert len(runs) == 2
    mtimes = {p: p.stat().st_mtime_ns for p in (results / "runs").rglob("*") if p.is_file()}
    md = (results / "tables" / "t.md").read_text()
    paths2, _ = reproduce(path, results, data_root=data, device="cpu", progress=False, figures=False)
    assert {
        p: p.stat().st_mtime_ns for p in (results / "runs").rglob("*") if p.is_file()
    } == mtimes  # no retraining
    assert (results / "tables" / "t.md").read_text() == md
    assert paths == paths2 and "Not run: mosi" in md


@pytest.mark.parametrize("path", sorted(PAPER_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_table_suites_are_valid_run_specs(path):
    """Every dataset x method entry of a table's suite is a valid run spec (so it plans once the data is
    there), and every row's method params are fields of that method."""
    from mmbalance.common.registry import METHODS
    from mmbalance.common.spec import deep_merge, validate_spec
    from mmbalance.reporting.paper import table_suite
    from mmbalance.reporting.tables import dataset_docs

    table, _ = load_table(path)
    if table.suite is None:
        return
    suite = table_suite(table, path)
    for doc, overrides in dataset_docs(suite):
        for m in suite.methods:
            validate_spec(deep_merge(deep_merge(doc, overrides.get(m["method"], {})), m))
    for row in table.rows:
        for match in [row.match] + [c.match for c in row.columns.values()]:
            if "method" in match:
                fields = METHODS.get(match["method"]).Params.model_fields
                assert set(match.get("method_params", {})) <= set(fields), (row.label, match)


def _shipped() -> dict[Path, int]:
    """Every file under the repository's results/ with its modification time."""
    return {p: p.stat().st_mtime_ns for p in (PAPER_DIR.parent.parent / "results").rglob("*") if p.is_file()}


def test_cli_report_and_reproduce(tmp_path, capsys):
    from mmbalance.cli import main

    shipped = _shipped()
    rd = make_run(tmp_path, "cggm", 0, dataset="iemocap", test={"accuracy": 70.0})
    assert main(["report", str(tmp_path), "--no-figures", "--protocol", "best-valid"]) == 0
    assert "best validation score" in (tmp_path / "tables" / "all-runs.md").read_text()
    assert main(["report", str(tmp_path / "nowhere")]) == 2  # no runs: one clear line
    assert "no finished runs" in capsys.readouterr().err
    # the memory table has no suite: reproduce renders it from the records, every cell n/a
    assert main(["reproduce", "memory-table", "--results", str(tmp_path), "--quiet"]) == 0
    md = (tmp_path / "tables" / "memory-table.md").read_text()
    assert "| IEMOCAP | n/a | n/a | n/a |" in md and "8 MB to 24 MB" in md
    assert (tmp_path / "tables" / "memory-table.runs").read_text() == f"{rd.run_id}\n"  # the runs behind it
    assert _shipped() == shipped  # written to the folder asked for, never to the shipped results/


# --- statistics and completeness ----------------------------------------------------------------------------
def _block(path, seeds=None):
    [block] = run_tables(load(path), "best-valid-test", seeds=seeds)
    return block


def test_delta_vs_joint_paired_t_test_holm_by_hand(tmp_path):
    from scipy.stats import t as student_t

    joint, pmr, ogm = [70, 71, 72, 73, 74], [72, 73.5, 74, 75, 77], [71, 70, 72.5, 72.5, 74.2]
    for seed in range(5):
        make_run(tmp_path, "joint", seed, test={"accuracy": joint[seed]})
        make_run(tmp_path, "pmr", seed, test={"accuracy": pmr[seed]})
        make_run(tmp_path, "ogm_ge", seed, test={"accuracy": ogm[seed]})
    block = _block(tmp_path)
    # pmr - joint = [2, 2.5, 2, 2, 3]: mean 2.3, sd sqrt(0.8 / 4) = 0.4472, t = 2.3 / (0.4472 / sqrt 5) = 11.5
    p_pmr = 2 * student_t.sf(11.5, df=4)
    # ogm_ge - joint = [1, -1, 0.5, -0.5, 0.2]: mean 0.04, sd 0.7956, t = 0.04 / (0.7956 / sqrt 5) = 0.1124
    p_ogm = 2 * student_t.sf(0.04 / (0.795613 / 5**0.5), df=4)
    csv = block.csv[block.csv["metric"] == "accuracy"].set_index("method")
    # Holm over 2 tests: the smaller p times 2, the larger max(that, itself)
    assert csv.loc["pmr", "p_holm"] == pytest.approx(2 * p_pmr, rel=1e-4)
    assert csv.loc["ogm_ge", "p_holm"] == pytest.approx(max(2 * p_pmr, p_ogm), rel=1e-3)
    assert csv.loc["pmr", "delta_vs_joint"] == pytest.approx(2.3)
    md = block.table.markdown()
    assert "| pmr | **74.30 ± 1.86** | 40.00 ± 0.00 | +2.30* | < 0.001 | 5/5 |" in md
    assert "| joint | 72.00 ± 1.58 | 40.00 ± 0.00 |  |  | 5/5 |" in md
    assert "+0.04 |" in md and "+0.04*" not in md
    assert "paired t-test" in md and "Wilcoxon" in md and "0.0625" in md and "Holm" in md
    assert "Friedman test over the seeds (blocks: 5 seeds" in md


def test_incomplete_row_never_ranked_and_unfinished_runs_listed(tmp_path):
    """Issue 14 item 11: with one of two CGGM seeds diverged, CGGM was printed in bold as best at n = 1."""
    for seed in (0, 1):
        make_run(tmp_path, "joint", seed, test={"accuracy": 70.0})
        make_run(tmp_path, "pmr", seed, test={"accuracy": 75.0})
    make_run(tmp_path, "cggm", 0, test={"accuracy": 90.0})
    make_run(tmp_path, "cggm", 1, status="failed: diverged: loss is nan at epoch 2")
    md = _block(tmp_path).table.markdown()
    cggm = next(line for line in md.splitlines() if line.startswith("| cggm"))
    assert "90.00" in cggm and "**" not in cggm and "1/2 incomplete" in cggm
    assert "| pmr | **75.00 ± 0.00** |" in md
    assert "- cggm seed 1: failed (diverged: loss is nan at epoch 2), run cggm-" in md
    assert "Incomplete rows (fewer finished seeds than asked) are shown but never ranked." in md
    # a suite that asks for 3 seeds: every row is incomplete, none is ranked
    md3 = _block(tmp_path, seeds=[0, 1, 2]).table.markdown()
    assert "2/3 incomplete" in md3 and "**" not in md3


def test_reference_rows_shown_not_ranked_and_ensemble_absent_is_fine(tmp_path):
    for seed in (0, 1):
        make_run(tmp_path, "joint", seed, test={"accuracy": 70.0 + seed})
        make_run(tmp_path, "pmr", seed, test={"accuracy": 72.0 + seed})
        for m, acc in (("m0", 80.0), ("m1", 60.0)):
            make_run(tmp_path, "unimodal", seed, method_params={"modality": m}, modalities=(m,),
                     test={"accuracy": acc + seed}, probe={m: acc})  # fmt: skip
    md = _block(tmp_path).table.markdown()
    assert "| unimodal(modality=m0) (best unimodal) † | 80.50 ± 0.71 |" in md
    assert "| unimodal(modality=m1) † | 60.50 ± 0.71 |" in md
    assert "| pmr | **72.50 ± 0.71** |" in md and "unimodal_ensemble" not in md
    for seed in (0, 1):
        make_run(tmp_path, "unimodal_ensemble", seed, test={"accuracy": 95.0 + seed})
    block = _block(tmp_path)
    md = block.table.markdown()
    ens = next(line for line in md.splitlines() if line.startswith("| unimodal_ensemble"))
    assert "95.50 ± 0.71" in ens and "**" not in ens and "+25.00" in ens  # Δ vs joint: the headroom
    assert "| pmr | **72.50 ± 0.71** |" in md
    assert "unimodal_ensemble: the ensemble of separately trained unimodal models" in md
    assert set(block.scores) == {"joint", "pmr"}  # references are not in the cross-table ranking either


def test_average_ranks_friedman_nemenyi_and_cd_figure(tmp_path):
    from mmbalance.reporting.figures import critical_difference
    from mmbalance.reporting.report import rank_table

    results = tmp_path / "results"
    order = {"joint": 0.0, "agm": 1.0, "pmr": 2.0, "cggm": 3.0}  # cggm best everywhere, joint worst
    for seed in (0, 1):
        for method, gain in order.items():
            make_run(results, method, seed, test={"accuracy": 70.0 + gain + seed})
            make_run(results, method, seed, dataset="mfeat", test={"accuracy": 90.0 + gain - seed})
            make_run(results, method, seed, task="regression", test={"mae": 1.0 - 0.1 * gain, "corr": 0.5})
        make_run(results, "mla", seed, test={"accuracy": 99.0})  # one table only: not ranked across
    blocks = run_tables(load(results), "best-valid-test")
    ranking = rank_table(blocks)
    assert ranking.average.to_dict() == {"cggm": 1.0, "pmr": 2.0, "agm": 3.0, "joint": 4.0}
    # Friedman, k = 4 methods, N = 3 tables, ranks 1..4 in each: 12N/(k(k+1)) * sum(R_j^2) - 3N(k+1)
    #   = 12 * 3 / 20 * (1 + 4 + 9 + 16) - 3 * 3 * 5 = 9.0
    md = ranking.table.markdown()
    assert "χ² = 9.00, p = 0.029" in md
    # Nemenyi CD = q_0.05(k=4) / sqrt(2) * sqrt(k (k + 1) / (6 N)) = 2.569 * sqrt(20 / 18) = 2.708
    assert ranking.cd == pytest.approx(2.569 * (20 / 18) ** 0.5, abs=1e-3) and "2.71 ranks" in md
    assert "Not ranked: mla (absent or incomplete in 2 of 3 tables)." in md
    paths = critical_difference(ranking.average, ranking.nemenyi, ranking.cd, tmp_path / "cd")
    assert [p.name for p in paths] == ["cd.png", "cd.pdf"] and paths[0].stat().st_size > 5000
    report(results, figures=False)
    assert "### Average rank across tables" in (results / "tables" / "all-runs.md").read_text()


def test_corrupt_records_skip_figures_with_named_warning_after_tables(tmp_path, capsys):
    """Issue 14 item 12: a corrupt metrics.jsonl, curves.csv or spec.yaml crashed the figures step after
    the tables were written. Now the run is skipped from the figures, with one line naming the file."""
    from mmbalance.cli import main

    for seed in range(3):
        make_run(tmp_path, "cggm", seed, diag=True)
    bad = [make_run(tmp_path, "joint", seed) for seed in range(3)]
    with bad[0].file("metrics.jsonl").open("a") as f:
        f.write('{"epoch": 3, "val')  # truncated
    bad[1].file("curves.csv").write_text("step,loss\n0,0.5\n10,abc,7\n")
    bad[2].file("spec.yaml").write_text("seed: [unclosed\n")
    assert main(["report", str(tmp_path)]) == 0
    err = capsys.readouterr().err.splitlines()
    for rd, name in zip(bad, ("metrics.jsonl", "curves.csv", "spec.yaml"), strict=True):
        line = next(e for e in err if str(rd.file(name)) in e)
        assert line.startswith("warning: ") and line.endswith(f"run {rd.run_id} left out of the figures")
    md = (tmp_path / "tables" / "all-runs.md").read_text()
    assert "| joint | **50.00 ± 0.00** |" in md and "3/3" in md  # the tables still count all three runs
    assert (tmp_path / "figures" / "all-runs-synthetic-classification-probe_acc.png").stat().st_size > 1000


def test_segmentation_table_with_joint_training(tmp_path):
    """joint's empty method_params is a spec column, not a metric (segmentation lists every column)."""
    for seed in (0, 1):
        make_run(
            tmp_path, "joint", seed, task="segmentation", test={"dice_mean": 50.0 + seed, "dice_WT": 60.0}
        )
    paths = report(tmp_path, figures=False)
    md = paths[0].read_text()
    assert "Dice avg" in md and "50.50" in md and "method_params" not in md
