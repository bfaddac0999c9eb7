"""Scale-out: run locks, sweep status, the SLURM submission, parallel and submitit sweeps, a killed worker.

The tests that start worker processes (each imports torch and monai) are marked slow.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mmbalance.common.locks import RunLock, read_lock
from mmbalance.common.records import RunDir
from mmbalance.common.spec import SpecError
from mmbalance.common.status import sweep_status
from mmbalance.scaleout import executors
from mmbalance.scaleout.sweep import load_suite, plan, run_ids, run_local
from mmbalance.training.runner import RunOptions, prepare, train

SUITE = {
    "name": "scaleout",
    "seeds": [0, 1],
    "base": {
        "epochs": 2,
        "batch_size": 32,
        "probe_every": 4,
        "dataset_params": {"n_train": 128, "n_valid": 32, "n_test": 32},
    },  # fmt: skip
    "datasets": [{"dataset": "synthetic"}],
    "methods": [{"method": "joint"}, {"method": "unimodal", "method_params": {"modality": "m0"}}],
}


def write_suite(tmp_path: Path, **overrides) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({**SUITE, **overrides}))
    return path


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def write_lock(path: Path, pid: int, host: str, age_s: float = 0.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": host, "token": "old", "started": time.time() - age_s}))
    os.utime(path, (time.time() - age_s, time.time() - age_s))


# --- locks ------------------------------------------------------------------------------------------
def test_lock_is_exclusive_until_released(tmp_path):
    a, b = RunLock(tmp_path / "lock"), RunLock(tmp_path / "lock")
    assert a.acquire()
    assert not b.acquire()
    assert b.holder.pid == os.getpid() and b.holder.host == socket.gethostname()
    a.release()
    assert not (tmp_path / "lock").exists()
    assert b.acquire() and b.took_over is None
    b.release()


def test_lock_of_dead_pid_on_this_host_is_taken_over(tmp_path):
    pid = dead_pid()
    write_lock(tmp_path / "lock", pid, socket.gethostname())
    with RunLock(tmp_path / "lock") as lock:
        assert lock.acquired and lock.took_over.pid == pid
        assert read_lock(tmp_path / "lock").token == lock.token


def test_lock_of_other_host_goes_stale_by_heartbeat_age(tmp_path):
    write_lock(tmp_path / "lock", 1, "elsewhere-node", age_s=5.0)
    with RunLock(tmp_path / "lock", heartbeat=1.0, stale_after=60.0) as lock:  # 5 s old: alive
        assert not lock.acquired and lock.holder.host == "elsewhere-node"
    assert (tmp_path / "lock").exists()  # a lock that is not ours is never removed
    with RunLock(tmp_path / "lock", heartbeat=1.0, stale_after=2.0) as lock:  # 5 s > 2 s: stale
        assert lock.acquired and lock.took_over.host == "elsewhere-node"


def test_heartbeat_keeps_a_live_lock_fresh(tmp_path):
    with RunLock(tmp_path / "lock", heartbeat=0.05, stale_after=1.0) as lock:
        assert lock.acquired
        old = time.time() - 100
        os.utime(tmp_path / "lock", (old, old))
        time.sleep(0.3)
        assert time.time() - (tmp_path / "lock").stat().st_mtime < 1.0
        assert not RunLock(tmp_path / "lock", heartbeat=0.05, stale_after=1.0).acquire()


def test_train_skips_a_locked_run_and_takes_over_a_dead_workers_lock(tmp_path, spec_factory):
    spec = spec_factory()
    _, _, rd = prepare(spec, tmp_path)
    with RunLock(rd.file("lock")):
        result = train(spec, tmp_path, progress=False)
    assert result.status == "running elsewhere" and f"pid {os.getpid()}" in result.reason
    assert not rd.file("spec.yaml").exists()  # nothing written by the worker that lost

    write_lock(rd.file("lock"), dead_pid(), socket.gethostname())
    result = train(spec, tmp_path, progress=False)
    assert result.status == "done" and not rd.file("lock").exists()
    assert train(spec, tmp_path, progress=False).status == "skipped"


# --- status -----------------------------------------------------------------------------------------
def fake_run(results: Path, run_id: str, status: str | None) -> RunDir:
    rd = RunDir.of(results, run_id)
    rd.path.mkdir(parents=True)
    rd.file("spec.yaml").write_text("{}\n")
    if status is not None:
        rd.file("status").write_text(status + "\n")
    if status == "done":  # the fields every reader needs (records.final_problem): "{}" is not done
        final = {"protocol": "p", "task": "classification", "selection_metric": "accuracy",
                 "test": {"accuracy": 50.0}, "best_epoch": 0, "epochs": 1}  # fmt: skip
        rd.file("final.json").write_text(json.dumps(final))
    return rd


def test_status_counts_states_and_failure_reasons(tmp_path):
    fake_run(tmp_path, "a", "done")
    fake_run(tmp_path, "b", "failed: diverged: loss is nan at epoch 3, step 2")
    fake_run(tmp_path, "c", "failed: diverged: loss is nan at epoch 3, step 2")
    fake_run(tmp_path, "d", "failed: DataError: bad file x.h5")
    live = fake_run(tmp_path, "e", "running")
    dead = fake_run(tmp_path, "f", "running")
    write_lock(dead.file("lock"), dead_pid(), socket.gethostname())
    with RunLock(live.file("lock")):
        report = sweep_status(tmp_path)
        assert report.counts() == {"done": 1, "running": 1, "interrupted": 1, "failed": 3, "pending": 0}
        assert report.failure_reasons() == {"diverged: loss is nan at epoch 3, step 2": 2,
                                            "DataError: bad file x.h5": 1}  # fmt: skip
        running = next(r for r in report.runs if r.state == "running")
        assert running.run_id == "e" and f"pid {os.getpid()}" in running.detail
    planned = sweep_status(tmp_path, {"a": "joint seed 0", "zz": "joint seed 1"})
    assert planned.counts() == {"done": 1, "running": 0, "interrupted": 0, "failed": 0, "pending": 1}
    assert [r.label for r in planned.runs] == ["joint seed 0", "joint seed 1"]


def test_status_cli_with_suite(tmp_path, capsys):
    from mmbalance.cli import main

    suite = write_suite(tmp_path, seeds=[0])
    planned = plan(load_suite(suite))
    run_local(planned[:1], tmp_path / "res", options=RunOptions(progress=False))
    assert main(["status", str(tmp_path / "res"), "--suite", str(suite)]) == 0
    assert "1 done, 0 running, 0 interrupted, 0 failed, 1 pending (2 runs)" in capsys.readouterr().out


# --- options and the SLURM submission ---------------------------------------------------------------------
def test_executor_options_merge_suite_and_command_line():
    section = {"partition": "gpu", "time_min": 60, "sbatch": {"account": "lab"}, "jobs": 2}
    opts = executors.executor_options(section, {"time_min": 90, "jobs": None, "sbatch": {"qos": "high"}})
    assert (opts.partition, opts.time_min, opts.jobs) == ("gpu", 90, 2)
    assert opts.sbatch == {"account": "lab", "qos": "high"}
    with pytest.raises(SpecError, match="executor.bogus: unknown field"):
        executors.executor_options({"bogus": 1}, {})
    with pytest.raises(SpecError, match="executor.jobs"):
        executors.executor_options({}, {"jobs": 0})


def test_slurm_sweep_writes_one_array_sbatch_script(tmp_path, monkeypatch):
    # A stand-in `sbatch` records the script submitit hands it; `srun` only has to exist.
    bin_dir, record = tmp_path / "bin", tmp_path / "submitted.sh"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {record}\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    suite = load_suite(write_suite(tmp_path, seeds=[0, 1, 2], methods=[{"method": "joint"}]))
    opts = executors.executor_options(
        {"partition": "gpu", "time_min": 90, "gpus": 1, "cpus": 6, "mem_gb": 16, "array_parallelism": 2,
         "setup": ["module load cuda/12.4"]},
        {"sbatch": {"account": "lab"}},
    )  # fmt: skip
    planned = plan(suite)
    jobs = executors.submit(planned, tmp_path / "res", None, "cuda", opts, name=suite.name)

    script = record.read_text()
    expected = ["#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --array=0-2%2", "#SBATCH --mem=16GB",
                "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=6", "#SBATCH --account=lab",
                "#SBATCH --job-name=scaleout", "module load cuda/12.4"]  # fmt: skip
    for line in expected:
        assert line in script.splitlines(), f"{line!r} missing from:\n{script}"
    command = script.strip().splitlines()[-1]
    assert command.startswith("srun ") and f"{sys.executable} -u -m submitit.core._submit" in command
    assert [j.job_id for _, j in jobs] == ["4242_0", "4242_1", "4242_2"]
    # Each array task unpickles the run it trains: the spec of its plan entry, on the asked device.
    for (p, job), task in zip(jobs, range(3), strict=True):
        with job.paths.submitted_pickle.open("rb") as f:
            delayed = pickle.load(f)
        assert isinstance(delayed.function, executors.RunJob)
        assert delayed.args[0] == p.spec.canonical() and delayed.args[3].device == "cuda", task
        assert delayed.args[1] == str((tmp_path / "res").resolve())


# --- parallel and submitit sweeps -------------------------------------------------------------------------
def check_same_as_sequential(outcomes, reference: dict[str, dict]) -> None:
    """Every run trained once (one ``done`` per run id, duplicates skipped or refused), each final
    equal to the sequential sweep's."""
    done = [r.run_id for _, r in outcomes if r.status == "done"]
    assert sorted(done) == sorted(reference), [(r.run_id, r.status, r.reason) for _, r in outcomes]
    assert {r.status for _, r in outcomes} <= {"done", "skipped", "running elsewhere"}
    for _, r in outcomes:
        assert r.final is None or r.final["test"] == reference[r.run_id]["test"]
        epochs = [row["epoch"] for row in RunDir(r.path).epochs()]
        assert epochs == list(range(SUITE["base"]["epochs"]))


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    root = tmp_path_factory.mktemp("sequential")
    outcomes = run_local(
        plan(load_suite(write_suite(root))), root / "res", options=RunOptions(progress=False)
    )
    assert all(r.status == "done" for _, r in outcomes)
    return {r.run_id: r.final for _, r in outcomes}


@pytest.mark.slow
def test_parallel_sweep_trains_each_run_once_and_matches_sequential(tmp_path, sequential):
    planned = plan(load_suite(write_suite(tmp_path)))
    opts = executors.ExecutorOptions(jobs=2, threads=1)
    outcomes = executors.run_parallel(planned + planned, tmp_path / "res", None, "cpu", opts, progress=False)
    check_same_as_sequential(outcomes, sequential)
    again = executors.run_parallel(planned, tmp_path / "res", None, "cpu", opts, progress=False)
    assert [r.status for _, r in again] == ["skipped"] * len(planned)


@pytest.mark.slow
def test_submitit_local_sweep_matches_sequential(tmp_path, sequential):
    planned = plan(load_suite(write_suite(tmp_path)))
    opts = executors.ExecutorOptions(gpus=0, threads=1, time_min=10)
    jobs = executors.submit(planned, tmp_path / "res", None, "cpu", opts, cluster="local")
    outcomes = [(p, job.result()) for p, job in jobs]
    check_same_as_sequential(outcomes, sequential)


@pytest.mark.slow
def test_killed_worker_sweep_restarts_and_resumes(tmp_path):
    """SIGKILL a worker of ``mmbalance sweep --jobs 2`` after its run wrote an epoch checkpoint; the
    sweep retries every unfinished run once, and resumes the killed one from its checkpoint."""
    epochs = 6
    base = {
        **SUITE["base"],
        "epochs": epochs,
        "dataset_params": {"n_train": 2048, "n_valid": 64, "n_test": 64},
    }
    suite_path = write_suite(tmp_path, base=base, executor={"jobs": 2, "threads": 1})
    results = tmp_path / "res"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "mmbalance.cli", "sweep", str(suite_path), "--results", str(results),
           "--device", "cpu", "--quiet"]  # fmt: skip
    sweep = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed, rows_before = None, None
    deadline = time.time() + 240
    while killed is None and time.time() < deadline and sweep.poll() is None:
        for rd in (RunDir(p) for p in sorted((results / "runs").glob("*"))):
            lock, rows = read_lock(rd.file("lock")), rd.epochs()
            if lock is not None and rd.file("checkpoint.pt").exists() and 1 <= len(rows) <= epochs - 2:
                os.kill(lock.pid, signal.SIGKILL)
                killed, rows_before = rd, rows
                break
        time.sleep(0.02)
    output = sweep.communicate(timeout=300)[0]
    assert killed is not None, f"no run was caught mid-way:\n{output}"
    # The sweep reads the broken pool's runs back from disk and retries the unfinished ones in a fresh pool.
    assert sweep.returncode == 0 and "a worker process died" in output, output
    planned = plan(load_suite(suite_path))
    outcomes = run_local(planned, results, options=RunOptions(progress=False))
    for _, r in outcomes:  # every run ended exactly once, in the killed sweep
        assert r.status == "skipped", (r.run_id, r.status, r.reason)
        assert [row["epoch"] for row in RunDir(r.path).epochs()] == list(range(epochs))
    resumed = RunDir(killed.path).epochs()
    assert resumed[: len(rows_before)] == rows_before  # epochs before the kill kept (timings too): resumed
    spec = next(p.spec for p, r in outcomes if r.run_id == killed.run_id)
    reference = train(spec, tmp_path / "ref", progress=False)
    assert killed.final()["test"] == reference.final["test"]


def test_run_ids_match_training(tmp_path):
    planned = plan(load_suite(write_suite(tmp_path, seeds=[0])))
    ids = run_ids(planned)
    assert list(ids.values()) == [p.label for p in planned]
    assert train(planned[0].spec, tmp_path, progress=False).run_id == list(ids)[0]


# --- GPU path options, exercised on CPU ---------------------------------------------------------------
def test_amp_on_cpu_trains_in_bf16_and_is_recorded(tmp_path, spec_factory):
    result = train(spec_factory(), tmp_path, device="cpu", progress=False, amp=True)
    assert result.status == "done"
    env = json.loads(RunDir(result.path).file("env.json").read_text())
    assert env["amp"] is True and env["loader_workers"] == 0
    assert 0 < result.final["test"]["accuracy"] <= 100


def test_methods_see_unscaled_gradients_under_loss_scaling(tmp_path, spec_factory):
    """With a loss scaler on, ``after_backward`` must see the true gradients (scaled by 2^10 otherwise)."""
    import torch

    from mmbalance.training.runner import Trainer

    spec = spec_factory(method="ogm_ge")
    adapter, _, _ = prepare(spec)
    seen = {}
    for scaled in (False, True):
        trainer = Trainer(spec, adapter, RunDir(tmp_path / str(scaled)), torch.device("cpu"), progress=False)
        if (
            scaled
        ):  # what AMP on CUDA does (fp16 autocast aside): a 2^10 loss scale, unscaled before the method
            trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        after_backward = trainer.method.after_backward

        def record(model, out, batch, ctx, after_backward=after_backward, scaled=scaled):
            seen[scaled] = [p.grad.clone() for p in model.encoder_parameters("m0")]
            after_backward(model, out, batch, ctx)

        trainer.method.after_backward = record
        batch = next(iter(trainer.loader("train", shuffle=False)))
        trainer.train_batch(batch)
        seen[f"weights {scaled}"] = [p.detach().clone() for p in trainer.model.parameters()]
    for a, b in zip(seen[False], seen[True], strict=True):
        assert torch.equal(a, b)  # power-of-two scaling is exact
    for a, b in zip(seen["weights False"], seen["weights True"], strict=True):
        assert torch.equal(a, b)


def test_loader_workers_give_the_same_run(tmp_path, spec_factory):
    spec = spec_factory(epochs=1)
    plain = train(spec, tmp_path / "plain", device="cpu", progress=False)
    workers = train(spec, tmp_path / "workers", device="cpu", progress=False, workers=2)
    assert workers.final == plain.final


def test_sweep_verdict_counts_diverged_runs_as_results(capsys):
    from argparse import Namespace

    from mmbalance.cli import _sweep_verdict

    args = Namespace(suite="s.yaml", results="results")
    assert _sweep_verdict(["done", "diverged", "skipped"], 1, args) == 0  # a measured outcome, reported
    assert (
        "2 runs done or reused, 1 diverged (recorded; the report lists them), 0 failed"
        in capsys.readouterr().out
    )
    assert _sweep_verdict(["done", "failed"], 0, args) == 1  # a fault still fails the sweep
