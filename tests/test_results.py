"""``mmbalance.results.load``: one DataFrame row per run, whatever its state, from records alone."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from _report_records import make_run

from mmbalance.reporting.results import RecordWarning, load


def test_load_one_row_per_run_with_flat_spec_status_metrics_and_seconds(tmp_path):
    for seed in (0, 1):
        make_run(tmp_path, "cggm", seed, method_params={"rho": 1.5}, test={"accuracy": 70.0 + seed})
    make_run(tmp_path, "cggm", 2, method_params={"rho": 1.5}, status="failed: diverged: loss is nan")
    make_run(tmp_path, "joint", 0, status="running")  # no lock: its worker died
    runs = load(tmp_path).set_index(["method", "seed"])
    assert len(runs) == 4
    assert runs.loc[("cggm", 1), "status"] == "done" and runs.loc[("cggm", 1), "accuracy"] == 71.0
    assert runs.loc[("cggm", 1), "method_params.rho"] == 1.5  # the spec, flattened
    assert runs.loc[("cggm", 1), "dataset_params.task"] == "classification"
    assert runs.loc[("cggm", 1), "epochs"] == 3 and runs.loc[("cggm", 1), "seconds"] == pytest.approx(4.5)
    failed = runs.loc[("cggm", 2)]
    assert failed["status"] == "failed" and failed["reason"] == "diverged: loss is nan"
    assert failed["task"] == "classification" and failed["modalities"] == ("m0", "m1", "m2")
    assert failed["accuracy"] != failed["accuracy"]  # NaN: not finished
    assert failed["config"] == runs.loc[("cggm", 0), "config"]  # same configuration, another seed
    assert runs.loc[("joint", 0), "status"] == "interrupted"


def test_best_valid_protocol_and_unknown_protocol(tmp_path):
    make_run(tmp_path, "joint", 0, test={"accuracy": 70.0}, best_valid={"accuracy": 68.0})
    assert load(tmp_path)["accuracy"].item() == 70.0
    assert load(tmp_path, "best-valid")["accuracy"].item() == 68.0
    with pytest.raises(ValueError, match="unknown protocol"):
        load(tmp_path, "test")


def test_unreadable_records_are_named_not_fatal(tmp_path):
    make_run(tmp_path, "joint", 0)
    make_run(tmp_path, "joint", 1).file("final.json").write_text("{")
    failed = make_run(tmp_path, "joint", 2, status="failed: boom")
    failed.file("spec.yaml").write_bytes(b"\xff\xfe: [")
    make_run(tmp_path, "joint", 3, status="running").file("spec.yaml").write_text("epochs: 3\n")
    with pytest.warns(RecordWarning) as caught:
        runs = load(tmp_path)
    messages = " | ".join(str(w.message) for w in caught)
    assert "final.json: not valid JSON" in messages and "spec.yaml: not UTF-8 text" in messages
    assert "spec.yaml: ValueError: expected a mapping with dataset, method, seed" in messages
    assert sorted(runs["status"]) == ["done", "unreadable"]  # the failed run without a spec: left out


def test_empty_results_give_an_empty_frame(tmp_path):
    runs = load(tmp_path / "nowhere")
    assert runs.empty and {"run_id", "status", "method", "seed"} <= set(runs.columns)


def test_loading_results_imports_no_torch(tmp_path):
    make_run(tmp_path, "joint", 0)
    code = textwrap.dedent(f"""
        import sys
        import mmbalance
        assert len(mmbalance.results.load({str(tmp_path)!r})) == 1
        bad = [m for m in sys.modules if m.split(".")[0] in ("torch", "monai", "matplotlib", "scipy")]
        assert not bad, bad
    """)
    subprocess.run([sys.executable, "-c", code], check=True)
