"""Memory in the run records: what a method holds beyond the model (every device), the CUDA training peak
per epoch, and CGGM's extra memory over joint training, which fills the ``memory-table`` cells."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import torch
from _report_records import make_run
from conftest import small_spec

from mmbalance.common.records import RunDir
from mmbalance.reporting import results
from mmbalance.training import runner
from mmbalance.training.memory import MB, method_state


def test_a_cggm_run_records_its_classifiers_memory(tmp_path):
    spec = small_spec(method="cggm", epochs=1, dataset_params={"n_train": 64, "n_valid": 32, "n_test": 32})
    done = runner.train(spec, results=tmp_path, progress=False, device="cpu")
    held = json.loads((done.path / "env.json").read_text())["method_memory_mb"]
    # Three linear classifiers (one per modality): their parameters, gradients and optimiser state.
    tr = runner.Trainer(
        spec, runner.make_adapter(spec), RunDir.of(tmp_path / "x", "t"), torch.device("cpu"), False
    )
    params = sum(p.numel() * 4 for p in tr.method.classifiers.parameters()) / MB
    assert held["modules"] == params and held["gradients"] == params and held["optimiser_state"] > 0
    assert all(
        "train_peak_mb" not in e for e in RunDir(done.path).epochs()
    )  # no allocator counts it on the CPU
    joint = runner.train(spec.model_copy(update={"method": "joint", "method_params": {}}), results=tmp_path,
                         progress=False, device="cpu")  # fmt: skip
    runs = results.load(tmp_path).set_index("method")
    assert runs.loc["cggm", "method_memory_mb"] == sum(held.values()) > 0
    assert runs.loc["joint", "method_memory_mb"] == 0 and joint.status == "done"
    assert math.isnan(runs.loc["cggm", "peak_memory_mb"]) and math.isnan(runs.loc["cggm", "extra_memory_mb"])


def test_method_state_counts_aux_parameters_in_the_main_optimiser():
    model = torch.nn.Linear(4, 2)
    aux = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam([*model.parameters(), *aux.parameters()])
    (model(torch.ones(1, 4)).sum() + aux(torch.ones(1, 4)).sum()).backward()
    opt.step()
    got = method_state(SimpleNamespace(), model, opt)  # a method holding nothing itself
    assert got == {"modules": 15 * 4, "gradients": 15 * 4, "optimiser_state": 2 * 15 * 4 + 2 * 4, "other": 0}


def peaks(rd: RunDir, values: list[float]) -> None:
    epochs = [{**e, "train_peak_mb": v} for e, v in zip(rd.epochs(), values, strict=True)]
    rd.file("metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))


def test_extra_memory_is_the_peak_over_the_joint_run_of_the_same_spec_and_seed(tmp_path):
    peaks(make_run(tmp_path, "joint", 0, dataset="iemocap", epochs=2), [500.0, 510.0])
    peaks(
        make_run(tmp_path, "cggm", 0, dataset="iemocap", epochs=2, method_params={"rho": 1.3}), [520.0, 522.0]
    )
    peaks(make_run(tmp_path, "cggm", 1, dataset="iemocap", epochs=2), [530.0, 531.0])  # no joint of seed 1
    runs = results.load(tmp_path)
    got = {(r.method, r.seed): (r.peak_memory_mb, r.extra_memory_mb) for r in runs.itertuples()}
    assert got[("joint", 0)] == (510.0, 0.0) and got[("cggm", 0)] == (522.0, 12.0)
    assert got[("cggm", 1)][0] == 531.0 and math.isnan(got[("cggm", 1)][1])


def test_memory_table_fills_from_gpu_records(tmp_path):
    from mmbalance.cli import main

    for seed in (0, 1):
        peaks(make_run(tmp_path, "joint", seed, dataset="iemocap", epochs=1), [500.0])
        peaks(make_run(tmp_path, "cggm", seed, dataset="iemocap", epochs=1), [510.0 + 2 * seed])
    assert main(["reproduce", "memory-table", "--results", str(tmp_path), "--quiet"]) == 0
    md = (tmp_path / "tables" / "memory-table.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| IEMOCAP"))
    assert "11.00 ± 1.41" in row  # extra: 10 and 12 MB over two seeds
    assert "| CMU-MOSI | n/a |" in md  # no MOSI runs: still n/a
