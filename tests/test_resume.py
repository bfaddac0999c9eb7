"""The runner's resume guarantee: an interrupted run, rerun, ends with the numbers of an uninterrupted one.

In-process interruptions (a KeyboardInterrupt right after an epoch checkpoint) for a few methods with
different state, every registered method in the slow tier, and a real ``mmbalance run`` subprocess
killed with SIGKILL mid-run. (Same spec twice -> identical final.json: tests/test_runner.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from _method_helpers import SHORT_RUN_PARAMS
from conftest import small_spec

from mmbalance.common.locks import read_lock
from mmbalance.common.records import RunDir
from mmbalance.common.registry import METHODS
from mmbalance.training.runner import Trainer, prepare, train

EPOCHS = 3


def method_spec(method: str, **overrides):
    params = overrides.pop("method_params", SHORT_RUN_PARAMS.get(method, {}))
    spec = small_spec(method=method, method_params=params, epochs=EPOCHS, **overrides)
    adapter, _, _ = prepare(spec)
    params = METHODS.get(method).variants(spec.method_params, adapter.task)[0]  # unimodal: the first modality
    return small_spec(method=method, method_params=params, epochs=EPOCHS, **overrides)


def interrupt_after_epoch(monkeypatch, epoch: int) -> None:
    """Stop the run like Ctrl-C right after epoch ``epoch``'s checkpoint is on disk."""
    save = Trainer.save_checkpoint

    def save_then_stop(self, e: int) -> None:
        save(self, e)
        if e == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_stop)


def check_resumes_exactly(tmp_path, monkeypatch, spec) -> None:
    reference = train(spec, tmp_path / "ref", progress=False)
    with monkeypatch.context() as m:
        interrupt_after_epoch(m, 1)
        with pytest.raises(KeyboardInterrupt):
            train(spec, tmp_path / "res", progress=False)
    rd = RunDir.of(tmp_path / "res", reference.run_id)
    assert rd.status() == "running" and not rd.file("lock").exists()  # the lock is released on the way out
    resumed = train(spec, tmp_path / "res", progress=False)
    assert resumed.status == "done"
    assert [r["epoch"] for r in rd.epochs()] == list(range(EPOCHS))
    assert resumed.final == reference.final
    assert rd.file("curves.csv").read_text() == RunDir(reference.path).file("curves.csv").read_text()


# joint: no method state; cggm: aux classifiers and their optimiser; pmr: prototypes.
@pytest.mark.parametrize("method", ["joint", "cggm", "pmr"])
def test_interrupted_run_resumes_to_the_uninterrupted_final(tmp_path, monkeypatch, method):
    check_resumes_exactly(tmp_path, monkeypatch, method_spec(method))


@pytest.mark.slow
@pytest.mark.parametrize("method", [m for m in METHODS.names() if m != "lnln"])  # lnln: test_method_lnln.py
def test_every_method_resumes_exactly(tmp_path, monkeypatch, method):
    check_resumes_exactly(tmp_path, monkeypatch, method_spec(method))


@pytest.mark.slow
def test_sigkilled_run_resumes_from_its_checkpoint(tmp_path):
    epochs = 6
    spec = small_spec(epochs=epochs, dataset_params={"n_train": 2048})
    reference = train(spec, tmp_path / "ref", progress=False)
    results = tmp_path / "res"
    sets = [
        "epochs=6",
        "batch_size=32",
        "probe_every=2",
        "dataset_params.n_train=2048",
        "dataset_params.n_valid=64",
        "dataset_params.n_test=64",
    ]  # fmt: skip = small_spec's run
    cmd = [
        sys.executable,
        "-m",
        "mmbalance.cli",
        "run",
        "--results",
        str(results),
        "--device",
        "cpu",
        "--quiet",
    ]
    cmd += [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same thread count as this process (conftest)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    rd = RunDir.of(results, reference.run_id)
    deadline, rows_before = time.time() + 240, None
    while time.time() < deadline and proc.poll() is None:
        rows = rd.epochs()
        if rd.file("checkpoint.pt").exists() and 1 <= len(rows) <= epochs - 2:
            proc.send_signal(signal.SIGKILL)
            rows_before = rows
            break
        time.sleep(0.02)
    out = proc.communicate(timeout=60)[0].decode()
    assert rows_before is not None, f"the run was not caught mid-way (rc {proc.returncode}):\n{out}"
    assert proc.returncode == -signal.SIGKILL
    assert rd.status() == "running" and read_lock(rd.file("lock")).pid == proc.pid  # a dead worker's lock

    resumed = train(spec, results, progress=False)
    assert resumed.status == "done" and resumed.run_id == reference.run_id
    rows = rd.epochs()
    assert [r["epoch"] for r in rows] == list(range(epochs))
    assert rows[: len(rows_before)] == rows_before  # the epochs before the kill were not trained again
    assert resumed.final == reference.final
