"""Fault injection on the runner, its records and the command line (issue 14): a kill at any moment
resumes to the records of an uninterrupted run, damaged records name their file and the way out, and
bad input is one line on stderr, exit code 2, with nothing written.

The end-to-end kills (a SIGKILL at every atomic write of a CGGM run, a killed sweep) are marked slow.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import small_spec

from mmbalance.cli import main
from mmbalance.common import records
from mmbalance.common.locks import RunLock
from mmbalance.common.records import DamagedRecordError, RunDir
from mmbalance.common.status import sweep_status
from mmbalance.training.runner import Trainer, prepare, train

SETS = ["epochs=3", "batch_size=32", "probe_every=2", "optim.lr=0.01", "dataset_params.n_train=128",
        "dataset_params.n_valid=32", "dataset_params.n_test=32"]  # fmt: skip


def spec3(**overrides):
    """The run of ``mmbalance run`` with ``SETS`` (3 epochs of 4 steps)."""
    return small_spec(
        **{"epochs": 3, "dataset_params": {"n_train": 128, "n_valid": 32, "n_test": 32}, **overrides}
    )


def interrupted(tmp_path: Path, monkeypatch, spec, after_epoch: int) -> RunDir:
    """A run stopped like Ctrl-C right after epoch ``after_epoch``'s checkpoint."""
    save = Trainer.save_checkpoint

    def save_then_stop(self, e: int) -> None:
        save(self, e)
        if e == after_epoch:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Trainer, "save_checkpoint", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            train(spec, tmp_path, progress=False)
    return prepare(spec, tmp_path)[2]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


# --- records and resume -------------------------------------------------------------------------------
def test_kill_after_the_last_checkpoint_resumes_with_every_epoch_recorded(tmp_path, monkeypatch):
    spec = spec3()
    reference = train(spec, tmp_path / "ref", progress=False)
    rd = interrupted(tmp_path / "res", monkeypatch, spec, after_epoch=2)  # before its records were written
    assert [r["epoch"] for r in rd.epochs()] == [0, 1]
    assert train(spec, tmp_path / "res", progress=False).final == reference.final
    assert [r["epoch"] for r in rd.epochs()] == [0, 1, 2]
    ref = RunDir(reference.path)
    assert rd.file("curves.csv").read_text() == ref.file("curves.csv").read_text()
    strip = [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in ref.epochs()]
    assert [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rd.epochs()] == strip


def test_temp_files_of_a_killed_writer_are_removed_on_resume(tmp_path, monkeypatch):
    spec = spec3()
    rd = interrupted(tmp_path, monkeypatch, spec, after_epoch=0)
    for name in (".checkpoint.pt.k1ll3d.tmp", ".metrics.jsonl.x.tmp", ".status.y.tmp"):
        rd.file(name).write_bytes(b"half")
    assert train(spec, tmp_path, progress=False).status == "done"
    assert not list(rd.path.glob(".*")), sorted(p.name for p in rd.path.iterdir())


def test_damaged_checkpoint_names_the_file_and_restart_retrains(tmp_path, monkeypatch, capsys):
    spec = spec3()
    reference = train(spec, tmp_path / "ref", progress=False)
    results = tmp_path / "res"
    rd = interrupted(results, monkeypatch, spec, after_epoch=1)
    data = rd.file("checkpoint.pt").read_bytes()
    rd.file("checkpoint.pt").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(DamagedRecordError, match="checkpoint.pt: damaged checkpoint.*--restart"):
        train(spec, results, progress=False)
    assert rd.status() == "running"  # not marked failed: the run is fine, its checkpoint is not
    argv = [
        "run",
        "--results",
        str(results),
        "--device",
        "cpu",
        "--quiet",
        *[a for s in SETS for a in ("--set", s)],
    ]
    assert main(argv) == 2
    assert str(rd.file("checkpoint.pt")) in one_error_line(capsys)
    assert main([*argv, "--restart"]) == 0
    assert rd.final() == reference.final
    assert [r["epoch"] for r in rd.epochs()] == [0, 1, 2]


@pytest.mark.parametrize("damage", ["truncated", "missing", "not an object"])
def test_done_run_with_a_damaged_final_json_is_rebuilt(tmp_path, damage):
    spec = spec3()
    first = train(spec, tmp_path, progress=False)
    rd = RunDir(first.path)
    f = rd.file("final.json")
    if damage == "missing":
        f.unlink()
    else:
        f.write_text('{"run_id": "' if damage == "truncated" else "[1, 2]\n")
    assert rd.finished() is None
    state = sweep_status(tmp_path).runs[0]
    assert state.state == "interrupted" and "final.json" in state.detail
    again = train(spec, tmp_path, progress=False)
    assert again.status == "done" and again.final == first.final and rd.status() == "done"
    assert rd.final() == first.final


def test_empty_lock_of_a_writer_killed_while_writing_it_is_taken_over(tmp_path):
    spec = spec3()
    _, _, rd = prepare(spec, tmp_path)
    rd.path.mkdir(parents=True)
    rd.file("lock").write_bytes(b"")
    old = time.time() - 30  # a live owner writes its lock within microseconds of creating it
    os.utime(rd.file("lock"), (old, old))
    assert train(spec, tmp_path, progress=False).status == "done"


def test_a_fresh_empty_lock_is_still_respected(tmp_path):
    spec = spec3()
    _, _, rd = prepare(spec, tmp_path)
    rd.path.mkdir(parents=True)
    rd.file("lock").write_bytes(b"")  # its owner may be writing it right now
    assert train(spec, tmp_path, progress=False).status == "running elsewhere"


def test_records_get_the_mode_the_umask_allows(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "FILE_MODE", 0o664)  # as with umask 002 (the value is read at import)
    result = train(spec3(epochs=1), tmp_path, progress=False)
    modes = {p.name: p.stat().st_mode & 0o777 for p in result.path.iterdir()}
    assert set(modes) >= {"spec.yaml", "env.json", "metrics.jsonl", "final.json", "checkpoint.pt", "status"}
    assert set(modes.values()) == {0o664}, modes


def test_file_mode_is_read_from_the_umask():
    old = os.umask(0o027)
    try:
        assert records._umask() == 0o027 and os.umask(0o027) == 0o027  # read, and left as it was
    finally:
        os.umask(old)
    assert records.FILE_MODE == 0o666 & ~old


# --- status -------------------------------------------------------------------------------------------
def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("files", [("lock",), ("lock", "spec.yaml")])
def test_status_lists_a_run_killed_before_its_status_file(tmp_path, files):
    rd = RunDir.of(tmp_path, "killedearly")
    rd.path.mkdir(parents=True)
    doc = {"pid": dead_pid(), "host": socket.gethostname(), "token": "t", "started": time.time()}
    rd.file("lock").write_text(json.dumps(doc))
    if "spec.yaml" in files:
        rd.file("spec.yaml").write_text("{}\n")
    report = sweep_status(tmp_path)
    assert [(r.run_id, r.state) for r in report.runs] == [("killedearly", "interrupted")]
    assert sweep_status(tmp_path, {"killedearly": "x"}).counts()["interrupted"] == 1


# --- a model that cannot be built leaves nothing -----------------------------------------------------
def test_error_while_building_the_model_leaves_no_run_folder(tmp_path, monkeypatch):
    from mmbalance.datasets.synthetic import Synthetic
    from mmbalance.training.data import DataError

    def refuse(*_args, **_kwargs):
        raise DataError("x.h5: 3 channels, expected 4")

    monkeypatch.setattr(Synthetic, "build_model", refuse)
    with pytest.raises(DataError):
        train(spec3(), tmp_path, progress=False)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


# --- bad input: one line, exit 2, nothing written -------------------------------------------------------
def non_utf8(path: Path) -> Path:
    path.write_bytes(b"name: caf\xe9\nseeds: [0]\n")
    return path


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "--seed", "4294967296"], "seed"),
        (["run", "--set", "epochs=" + "9" * 5000], "epochs="),
        (["run", "--set", "optim.lr=1.0e+400"], "optim.lr"),
        (["run", "--set", "method_params.alpha=.nan", "--method", "ogm_ge"], "alpha"),
        (["run", "--spec", "{bad}"], "not UTF-8"),
        (["sweep", "{bad}"], "not UTF-8"),
        (["status", "{results}", "--suite", "{bad}"], "not UTF-8"),
        (["report", "{results}", "--suite", "{bad}"], "not UTF-8"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, argv, needle):
    results, bad = tmp_path / "results", non_utf8(tmp_path / "bad.yaml")
    argv = [a.replace("{bad}", str(bad)).replace("{results}", str(results)) for a in argv]
    if argv[0] in ("run", "sweep"):
        argv += ["--results", str(results), "--quiet", "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err and len(err) < 600, err
    assert "Traceback" not in err
    assert not (results / "runs").exists()


def test_unwritable_results_folder_is_one_line(tmp_path, capsys, monkeypatch):
    results = tmp_path / "results"
    mkdir = pathlib.Path.mkdir

    def read_only(self, *args, **kwargs):  # what a read-only folder answers (root ignores chmod)
        if str(self).startswith(str(results)):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    assert main(["run", "--results", str(results), "--quiet", "--set", "epochs=1"]) == 2
    assert "cannot write" in one_error_line(capsys)


def test_full_disk_is_one_line_and_the_run_is_recorded_failed(tmp_path, capsys, monkeypatch):
    from mmbalance.training import checkpoint  # writes checkpoint.pt

    write = checkpoint.atomic_write_bytes

    def full(path, data):
        if path.name == "checkpoint.pt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", full)
    results = tmp_path / "results"
    assert main(["run", "--results", str(results), "--quiet", *[a for s in SETS for a in ("--set", s)]]) == 2
    assert "checkpoint.pt: No space left on device" in one_error_line(capsys)
    (rd,) = [RunDir(p) for p in (results / "runs").iterdir()]
    assert rd.status() == "failed" and "No space left" in rd.failure_reason()
    assert not list(rd.path.glob(".*.tmp")) and not rd.file("final.json").exists()


def test_feature_extraction_without_network_is_one_line(tmp_path, capsys, monkeypatch):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import extract_food101_features as script
    import transformers

    def offline(*_args, **_kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    from mmbalance.fixtures import food101

    root = food101.write(tmp_path / "food101", features=False)
    assert script.main([str(root), "--allow-download", "--text-model", "bert-base-uncased"]) == 2
    err = one_error_line(capsys)
    assert "cannot download 'bert-base-uncased'" in err and "hf download" in err
    assert not list(Path(root).glob("features*"))


# --- sweeps ---------------------------------------------------------------------------------------------
def write_suite(tmp_path: Path, **overrides) -> Path:
    doc = {"name": "faults", "seeds": [0],
           "base": {"epochs": 1, "batch_size": 32, "dataset_params": {"n_train": 64, "n_valid": 16, "n_test": 16}},
           "datasets": [{"dataset": "synthetic"}], "methods": [{"method": "joint"}], **overrides}  # fmt: skip
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_sweep_with_a_run_held_elsewhere_exits_1_and_says_so(tmp_path, capsys):
    from mmbalance.scaleout.sweep import load_suite, plan

    suite = write_suite(tmp_path)
    results = tmp_path / "res"
    (planned,) = plan(load_suite(suite))
    _, _, rd = prepare(planned.spec, results)
    with RunLock(rd.file("lock")):
        assert main(["sweep", str(suite), "--results", str(results), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "1 running elsewhere" in out and "--wait" in out
    assert main(["sweep", str(suite), "--results", str(results), "--quiet"]) == 0


def test_sweep_wait_finishes_a_run_another_process_held(tmp_path, capsys, monkeypatch):
    import threading

    from mmbalance.scaleout import sweep

    monkeypatch.setattr(sweep, "WAIT_POLL_S", 0.05)
    suite = write_suite(tmp_path)
    results = tmp_path / "res"
    (planned,) = sweep.plan(sweep.load_suite(suite))
    _, _, rd = prepare(planned.spec, results)
    lock = RunLock(rd.file("lock"))
    assert lock.acquire()
    threading.Timer(1.0, lock.release).start()  # the other worker ends without finishing the run
    assert main(["sweep", str(suite), "--results", str(results), "--quiet", "--wait"]) == 0
    assert "waiting for 1 run(s)" in capsys.readouterr().out
    assert rd.status() == "done"


def kill_sweep_at(tmp_path: Path, when) -> tuple[subprocess.Popen, str]:
    """Start ``mmbalance sweep --jobs 2`` on 2 runs of 6 epochs; SIGKILL the pid ``when(results, sweep)``
    returns once it returns one."""
    base = {"epochs": 6, "batch_size": 32, "dataset_params": {"n_train": 2048, "n_valid": 64, "n_test": 64}}
    suite = write_suite(tmp_path, seeds=[0, 1], base=base, executor={"jobs": 2, "threads": 1})
    results = tmp_path / "res"
    cmd = [sys.executable, "-m", "mmbalance.cli", "sweep", str(suite), "--results", str(results),
           "--device", "cpu", "--quiet"]  # fmt: skip
    log = (tmp_path / "sweep.log").open("w")  # a file, not a pipe: orphaned workers would hold a pipe open
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        pid = when(results, proc)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            return proc, str(suite)
        time.sleep(0.02)
    raise AssertionError(f"nothing to kill (rc {proc.poll()}):\n{(tmp_path / 'sweep.log').read_text()}")


def mid_run_worker(results: Path, _sweep=None) -> int | None:
    """The pid of a worker whose run has written 1 to 4 of its 6 epochs."""
    from mmbalance.common.locks import read_lock

    for rd in (RunDir(p) for p in sorted((results / "runs").glob("*"))):
        lock = read_lock(rd.file("lock"))
        if lock is not None and lock.pid and 1 <= len(rd.epochs()) <= 4:
            return lock.pid
    return None


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_workers_die_with_a_killed_sweep(tmp_path):
    children: set[int] = set()

    def the_sweep_once_a_worker_trains(results: Path, sweep: subprocess.Popen) -> int | None:
        if mid_run_worker(results) is None:
            return None
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(sweep.pid)], capture_output=True, text=True)
        children.update(int(x) for x in out.stdout.split())  # pool workers and the resource tracker
        return sweep.pid

    proc, _ = kill_sweep_at(tmp_path, the_sweep_once_a_worker_trains)
    proc.wait(timeout=60)
    assert len(children) >= 2, children
    deadline = time.time() + 20
    while time.time() < deadline and any(alive(p) for p in children):
        time.sleep(0.2)
    survivors = [p for p in children if alive(p)]
    for pid in survivors:  # do not leave them running after a failure
        os.kill(pid, signal.SIGKILL)
    assert not survivors, "processes outlived their sweep"


@pytest.mark.slow
def test_killed_worker_is_reported_and_its_runs_retried(tmp_path):
    proc, suite = kill_sweep_at(tmp_path, mid_run_worker)
    proc.wait(timeout=300)
    out = (tmp_path / "sweep.log").read_text()
    assert proc.returncode == 0, out
    assert "a worker process died" in out and "retrying" in out, out
    assert "2 runs done or reused, 0 failed" in out, out
    assert sweep_status(tmp_path / "res").counts()["done"] == 2


# --- SIGKILL at every atomic write --------------------------------------------------------------------
KILLER = """
import os, signal, sys
from mmbalance.common import records
n, phase, calls = int(sys.argv[1]), sys.argv[2], [0]
replace = records.os.replace
def killing_replace(src, dst):
    calls[0] += 1
    if calls[0] == n and phase == "before":
        os.kill(os.getpid(), signal.SIGKILL)  # temp file complete, target not replaced
    replace(src, dst)
    if calls[0] == n and phase == "after":
        os.kill(os.getpid(), signal.SIGKILL)  # target replaced, nothing after it done
records.os.replace = killing_replace
from mmbalance.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.slow
def test_sigkill_at_every_atomic_write_of_a_cggm_run_loses_nothing(tmp_path):
    """Kill a 3-epoch CGGM run at its N-th atomic write, for every N, just before and just after the
    rename; resume it. Every resumed run equals the uninterrupted one: no run lost or duplicated, every
    epoch recorded once, no temp file left."""
    spec = spec3(method="cggm")
    calls, replace = [], os.replace

    def counting_replace(src, dst):
        calls.append(Path(dst).name)
        replace(src, dst)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(records.os, "replace", counting_replace)
        reference = train(spec, tmp_path / "ref", progress=False)
    ref = RunDir(reference.path)
    writes = len(calls)  # spec, env, status; per epoch checkpoint, metrics, curves (, best.pt); final, status
    assert writes >= 3 + 3 * 3 + 2, calls
    tally = {"kills": 0, "lost": 0, "duplicated": 0, "incomplete": 0, "temp_left": 0}
    argv = ["run", "--method", "cggm", "--device", "cpu", "--quiet", *[a for s in SETS for a in ("--set", s)]]
    for n in range(1, writes + 2):  # the last N is past the run's writes: no kill
        for phase in ("before", "after"):
            results = tmp_path / f"k{n}{phase}"
            cmd = [sys.executable, "-c", KILLER, str(n), phase, *argv, "--results", str(results)]
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            tally["kills"] += proc.returncode == -signal.SIGKILL
            assert proc.returncode in (0, -signal.SIGKILL), (n, phase, proc.stdout, proc.stderr)
            resumed = train(spec, results, progress=False)
            runs = list((results / "runs").iterdir())
            tally["duplicated"] += len(runs) > 1
            tally["lost"] += resumed.status not in ("done", "skipped") or resumed.final != reference.final
            rd = RunDir(resumed.path)
            tally["incomplete"] += (
                [r["epoch"] for r in rd.epochs()] != [0, 1, 2]
                or rd.file("curves.csv").read_text() != ref.file("curves.csv").read_text()
                or rd.status() != "done"
            )
            tally["temp_left"] += len(list(rd.path.glob(".*.tmp")))
    print(f"SIGKILL at every write: {tally}")
    assert tally["kills"] == 2 * writes
    assert {k: v for k, v in tally.items() if k != "kills"} == dict.fromkeys(
        ("lost", "duplicated", "incomplete", "temp_left"), 0
    )
