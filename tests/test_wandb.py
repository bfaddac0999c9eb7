"""W&B logging, offline: a run's record is sent as one W&B run, and its values read back from the
offline run file equal the record's. Without the flag nothing imports wandb."""

from __future__ import annotations

import csv
import json
import struct
import sys
import time
from pathlib import Path

import pytest

from mmbalance.cli import main
from mmbalance.common.records import RunDir, iter_runs
from mmbalance.training.wandb_log import settings

RUN = ["run", "--dataset", "synthetic", "--method", "cggm", "--quiet", "--set", "epochs=2", "--set", "probe_every=2", "--set", "batch_size=16",
       "--set", "dataset_params.n_train=64", "--set", "dataset_params.n_valid=32", "--set", "dataset_params.n_test=32"]  # fmt: skip


def wandb_records(path: Path) -> list:
    """The records of an offline ``run-*.wandb`` file (W&B's LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pos, chunk = [], 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def finished_records(path: Path, timeout_s: float = 60.0) -> list:
    """The records of a finished offline run: W&B's writer process may still be flushing the file when
    ``run.finish()`` returns (a report's tables and images take a moment), so wait for its exit record."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def read_back(wandb_dir: Path) -> list[dict]:
    """Per offline run: its id, name, group, config, history rows and summary, as Python values."""
    runs = []
    for f in sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb")):
        out = {"history": [], "summary": {}, "artifacts": []}
        for r in finished_records(f):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                out.update(id=r.run.run_id, name=r.run.display_name, group=r.run.run_group,
                           config={u.key: json.loads(u.value_json) for u in r.run.config.update})  # fmt: skip
            elif kind == "history":
                out["history"].append(
                    {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
                )
            elif kind == "summary":
                out["summary"].update(
                    {"/".join(u.nested_key) or u.key: json.loads(u.value_json) for u in r.summary.update}
                )
            elif kind == "artifact":
                out["artifacts"].append(
                    (r.artifact.name, r.artifact.type, [m.path for m in r.artifact.manifest.contents])
                )
        runs.append(out)
    return runs


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline must be the default
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path / "wb"


def test_run_logs_its_record_offline_and_report_its_files(tmp_path, wandb_env, monkeypatch):
    results = tmp_path / "results"
    assert main([*RUN, "--results", str(results), "--wandb"]) == 0
    (logged,) = read_back(wandb_env)
    (rd,) = iter_runs(results)
    assert logged["id"] == logged["name"] == rd.run_id
    assert logged["config"]["method"] == "cggm" and logged["config"]["epochs"] == 2
    assert logged["config"]["method_params"] == rd.spec()["method_params"]
    epochs = [h for h in logged["history"] if "epoch" in h]
    assert [h["valid/accuracy"] for h in epochs] == [e["valid"]["accuracy"] for e in rd.epochs()]
    assert [h["train/loss"] for h in epochs] == [e["train_loss"] for e in rd.epochs()]
    assert [h["test/probe/m1"] for h in epochs] == [e["test"]["probe"]["m1"] for e in rd.epochs()]
    with rd.curves_path().open() as f:
        curves = list(csv.DictReader(f))
    steps = [h for h in logged["history"] if "train/step" in h]
    assert [h["train/step"] for h in steps] == [int(c["step"]) for c in curves] and len(steps) >= 2
    assert [h["curves/grad_norm/m0"] for h in steps] == [float(c["grad_norm/m0"]) for c in curves]
    assert [h["curves/diag/coeff/m1"] for h in steps] == [float(c["diag/coeff/m1"]) for c in curves]
    final = rd.final()
    assert logged["summary"]["final/test/accuracy"] == final["test"]["accuracy"]
    assert (
        logged["summary"]["final/best_epoch"] == final["best_epoch"] and logged["summary"]["status"] == "done"
    )

    # Reused: the record was sent already, nothing new. Without --wandb, wandb is never imported.
    assert main([*RUN, "--results", str(results), "--wandb"]) == 0
    monkeypatch.setitem(sys.modules, "wandb", None)  # any `import wandb` would now fail
    assert main([*RUN, "--results", str(results), "--set", "seed=1"]) == 0
    assert main(["report", str(results), "--no-figures"]) == 0
    monkeypatch.delitem(sys.modules, "wandb")
    assert len(read_back(wandb_env)) == 1 and len(iter_runs(results)) == 2

    assert main(["report", str(results), "--no-figures", "--wandb"]) == 0
    report = next(r for r in read_back(wandb_env) if r["name"] == "report-all-runs")
    (name, kind, files) = next(a for a in report["artifacts"] if a[1] == "report")  # tables: their own
    assert (name, kind) == ("report-all-runs", "report") and "tables/all-runs.csv" in files


def test_settings_come_from_the_flag_or_the_suite_section():
    assert settings(None, None) is None  # nothing asked: W&B is not touched
    assert settings({"project": "p", "mode": "online"}, False) is None  # --no-wandb wins
    cfg = settings({"project": "p", "mode": "online"}, None, mode="offline")
    assert (cfg.project, cfg.mode) == ("p", "offline")  # --wandb-mode over the suite's
    assert settings(None, True).project == "mmbalance" and settings(None, True).mode is None
    with pytest.raises(ValueError, match="mode"):
        settings({"mode": "sometimes"}, True)


def test_a_failed_run_is_logged_with_its_reason(tmp_path, wandb_env):
    rd = RunDir(tmp_path / "results" / "runs" / "0123456789abcdef")
    rd.path.mkdir(parents=True)
    rd.file("spec.yaml").write_text("method: joint\nepochs: 3\n")
    rd.file("metrics.jsonl").write_text(
        json.dumps({"epoch": 0, "train_loss": 1.5, "valid": {"accuracy": 40.0}}) + "\n"
    )
    rd.set_status("failed", "diverged at epoch 1")
    from mmbalance.training.wandb_log import log_run

    log_run(rd.path, settings(None, True), tmp_path / "results", group="g")
    (logged,) = read_back(wandb_env)
    assert logged["group"] == "g" and logged["history"][0]["valid/accuracy"] == 40.0
    assert logged["summary"]["status"] == "failed" and logged["summary"]["reason"] == "diverged at epoch 1"


def test_a_run_is_logged_live_while_it_trains_and_a_report_as_tables_and_images(tmp_path, wandb_env):
    import mmbalance

    small = {"epochs": 4, "batch_size": 32, "probe_every": 4,
             "dataset_params": {"n_train": 512, "n_valid": 128, "n_test": 128}}  # fmt: skip
    suite = {"name": "live", "seeds": [0], "base": small, "datasets": [{"dataset": "synthetic"}],
             "methods": [{"method": "cggm"}]}  # fmt: skip
    rows = mmbalance.sweep(suite, results=tmp_path / "r", wandb=True)
    assert list(rows["status"]) == ["done"]
    (logged,) = read_back(wandb_env)
    (rd,) = iter_runs(tmp_path / "r")
    assert logged["id"] == rd.run_id and logged["group"] == "live"
    epochs = [h for h in logged["history"] if "epoch" in h]
    assert [h["valid/accuracy"] for h in epochs] == [e["valid"]["accuracy"] for e in rd.epochs()]
    # Sent as each epoch ended, not replayed at the end: the rows are as far apart as the epochs took
    # (a replay writes them all within a millisecond or two).
    stamps, took = [h["_timestamp"] for h in epochs], [e["seconds"] for e in rd.epochs()]
    assert stamps == sorted(stamps) and stamps[-1] - stamps[0] >= 0.5 * sum(took[1:]) > 0.01, (stamps, took)
    final = rd.final()
    summary = logged["summary"]
    for m, phi in final["modality_eval"]["shapley"].items():
        assert summary[f"final/modality_eval/shapley/{m}"] == phi
    assert summary["final/modality_eval/imbalance_degree"] == final["modality_eval"]["imbalance_degree"]
    assert (
        summary["final/modality_eval/relative_robustness/m0"]
        == final["modality_eval"]["relative_robustness"]["m0"]
    )
    assert any(k.startswith("curves/diag/") for h in logged["history"] for k in h)  # CGGM's coefficients

    # Reused: nothing sent again. The report: tables as W&B tables, figures as images, named after the suite.
    mmbalance.sweep(suite, results=tmp_path / "r", wandb=True)
    assert len(read_back(wandb_env)) == 1
    paths = mmbalance.report(tmp_path / "r", suite="live", wandb=True)
    report = next(r for r in read_back(wandb_env) if r["name"] == "report-live")
    (name, kind, files) = next(a for a in report["artifacts"] if a[1] == "report")  # tables: their own
    assert (name, kind) == ("report-live", "report") and "tables/live.csv" in files
    media = {k: v for h in report["history"] for k, v in h.items() if not k.startswith("_")}
    csv_rows = sum(1 for _ in (tmp_path / "r" / "tables" / "live.csv").open()) - 1
    assert media["tables/live/_type"] == "table-file" and media["tables/live/nrows"] == csv_rows
    pngs = [p for p in paths if p.suffix == ".png"]
    assert pngs and all(media[f"figures/{p.stem}/_type"] == "image-file" for p in pngs)
