"""Specs, records and command-line options under attack (issue 30): every hostile input below is
built for real and fed to the real ``main()``; each gives exit code 2 (bad input) and one line naming
the file, field or value, within a second, never a hang or a traceback, and writes nothing.
Damaged records of a finished run are named, never taken as done, and rebuilt by the next run.
The leaderboard's attacks (forged entries, ``verify``) are in ``test_leaderboard.py``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
import yaml
from conftest import small_spec

from mmbalance.cli import main
from mmbalance.common import records
from mmbalance.common.records import RunDir
from mmbalance.common.status import sweep_status
from mmbalance.training.runner import prepare, train

REPO = Path(__file__).resolve().parent.parent
SMALL = {"epochs": 2, "batch_size": 32, "probe_every": 2,
         "dataset_params": {"n_train": 64, "n_valid": 16, "n_test": 16}}  # fmt: skip


def bomb(levels: int = 9) -> str:
    """A ~600-byte "billion laughs": 9 ** levels strings once its aliases are expanded."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    last = f"*a{levels - 1}"
    return "\n".join([*lines, f"seed: {last}", f"seeds: {last}"]) + "\n"  # fields whose values are validated


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def run_main(argv: list[str], capsys, code: int = 2, cpu_seconds: float | None = None) -> str:
    """``main(argv)``, its exit code checked (and its CPU time, which a hang burns but a loaded machine
    does not inflate); the one error line (code 2) or stdout."""
    t0 = time.process_time()
    assert main(argv) == code
    assert cpu_seconds is None or time.process_time() - t0 < cpu_seconds
    return error_line(capsys) if code == 2 else capsys.readouterr().out


# --- YAML: alias bombs and deep nesting --------------------------------------------------------------
@pytest.mark.parametrize("where", ["run --spec", "run --preset", "sweep", "status --suite", "run --set"])
def test_alias_bomb_is_refused_at_once(tmp_path, capsys, where):
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb())
    results = tmp_path / "results"
    argv = {
        "run --spec": ["run", "--spec", str(path), "--results", str(results)],
        "run --preset": ["run", "--preset", str(path), "--results", str(results)],
        "sweep": ["sweep", str(path), "--results", str(results)],
        "status --suite": ["status", str(results), "--suite", str(path)],
        "run --set": [
            "run",
            "--set",
            "method_params=" + bomb(7).replace("\n", ", ").join("{}"),
            "--results",
            str(results),
        ],  # fmt: skip
    }[where]
    assert len(path.read_bytes()) < 700
    err = run_main(argv, capsys, cpu_seconds=2.0)
    assert "alias bomb" in err and len(err) < 400
    assert not results.exists()


@pytest.mark.parametrize("depth", [100, 900, 20_000])
def test_deeply_nested_yaml_is_one_line(tmp_path, capsys, depth):
    path = tmp_path / "deep.yaml"
    path.write_text("method_params: " + "[" * depth + "]" * depth + "\n")
    err = run_main(["run", "--spec", str(path), "--results", str(tmp_path / "r")], capsys)
    assert f"{path}: nested deeper than 64 levels" in err


def test_aliases_that_stack_depth_are_counted(tmp_path, capsys):
    # Each anchor is 40 deep and holds the previous one: shallow in the file, 400 deep once built.
    lines = ["a0: &a0 " + "[" * 40 + "1" + "]" * 40]
    lines += [f"a{i}: &a{i} " + "[" * 40 + f"*a{i - 1}" + "]" * 40 for i in range(1, 10)]
    path = tmp_path / "stacked.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert "nested deeper than 64 levels" in run_main(["run", "--spec", str(path)], capsys)


def test_an_ordinary_spec_with_anchors_still_loads(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text("optim: &o {name: sgd, lr: 0.05}\nschedule: {name: step, step_size: 3}\nepochs: 4\n")
    out = run_main(["run", "--spec", str(path), "--dry-run"], capsys, code=0)
    assert yaml.safe_load(out)["optim"]["lr"] == 0.05


# --- numbers and names in a spec -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ("optim.lr=1e308", "optim.lr: Input should be less than or equal to 10 (got '1e308')"),
        ("optim.lr=-1", "optim.lr: Input should be greater than 0"),
        ("dataset_params.n_train=100000000000", "dataset_params.n_train: Input should be less than or equal"),
        (
            "model_params.feature_dim=100000000",
            "model_params.feature_dim: Input should be less than or equal",
        ),
        ("dataset_params.dim=60000", "more than 268435456 (1 GiB of float32)"),
        (
            "epochs=" + "9" * 500,
            "epochs: Input should be less than or equal to 100000 (got a 500-digit number)",
        ),
        ("epochs=1000000", "epochs: Input should be less than or equal to 100000"),
        ("seed=true", "seed: Input should be a valid integer (got True)"),
        ("seed=1.0", "seed: Input should be a valid integer"),
        (
            "dataset_params.data_seed=10000000000",
            "dataset_params.data_seed: 10000000000 is beyond 4294967295",
        ),
        ("preset=../../etc/passwd", "preset '../../etc/passwd': a name is letters"),
    ],
)
def test_spec_numbers_are_bounded_before_anything_is_written(tmp_path, capsys, setting, needle):
    results = tmp_path / "results"
    argv = ["run", "--set", setting, "--results", str(results), "--quiet", "--device", "cpu"]
    assert needle in run_main(argv, capsys)
    assert not results.exists()  # no failed record of a spec that is not valid


# --- command-line options ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished run (2 epochs on 64 samples), copied by the tests that damage it."""
    import torch

    torch.set_num_threads(1)
    return train(small_spec(**SMALL), tmp_path_factory.mktemp("finished"), progress=False).path


def copy_run(finished: Path, tmp_path: Path) -> tuple[RunDir, Path]:
    """A copy of the finished run under ``tmp_path/results`` and a spec file that names it."""
    rd = RunDir(tmp_path / "results" / "runs" / finished.name)
    shutil.copytree(finished, rd.path)
    spec = {k: v for k, v in rd.spec().items() if k not in ("run_id", "data_fingerprint")}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    return rd, tmp_path / "spec.yaml"


def test_workers_minus_one_never_touches_the_real_run(finished, tmp_path, capsys):
    rd, spec = copy_run(finished, tmp_path)
    before = {f.name: f.read_bytes() for f in rd.path.iterdir()}
    argv = ["run", "--spec", str(spec), "--results", str(tmp_path / "results"), "--workers", "-1"]
    assert "--workers -1: must be 0 or more" in run_main(argv, capsys)
    assert {f.name: f.read_bytes() for f in rd.path.iterdir()} == before
    with pytest.raises(ValueError, match="--workers -1"):  # the library refuses it too, before reading
        train(small_spec(**SMALL), tmp_path / "results", workers=-1, progress=False)
    assert rd.status() == "done"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["sweep", "{suite}", "--jobs", "0"], "--jobs 0: must be 1 or more"),
        (["sweep", "{suite}", "--threads", "-2"], "--threads -2: must be 1 or more"),
        (["sweep", "{suite}", "--mem-gb", "-1"], "--mem-gb -1.0: must be more than 0"),
        (["leaderboard", "verify", "{suite}", "--seeds", "x"], "--seeds x: expected seed numbers or 'all'"),
    ],
)
def test_counts_are_checked_before_anything_runs(tmp_path, capsys, argv, needle):
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "s", "seeds": [0], "base": SMALL, "datasets": [{"dataset": "synthetic"}],
                                     "methods": [{"method": "joint"}]}))  # fmt: skip
    argv = [a.replace("{suite}", str(suite)) for a in argv] + ["--results", str(tmp_path / "results")]
    if argv[0] == "leaderboard":  # the entry is checked first: a valid one, to reach --seeds
        argv[2] = str(REPO / "results/leaderboard/entries/synthetic-classification-joint.json")
    assert needle in run_main(argv, capsys)
    assert not (tmp_path / "results" / "runs").exists()


@pytest.mark.parametrize("device", ["foo", "cuda:x", "mps", "cuda"])
def test_a_device_that_is_not_here_is_one_line(tmp_path, capsys, monkeypatch, device):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    results = tmp_path / "results"
    for argv in (["run", "--set", "epochs=1"], ["sweep", str(REPO / "benchmarks/all.yaml")]):
        err = run_main([*argv, "--device", device, "--results", str(results), "--quiet"], capsys)
        assert f"--device {device}" in err.replace("'", "")
        assert ("no CUDA GPU" in err) == (device == "cuda"), err
    assert not results.exists()


@pytest.mark.parametrize("command", ["run", "sweep", "status", "report"])
def test_results_folder_that_is_a_file_or_too_long_a_name(tmp_path, capsys, command):
    afile = tmp_path / "afile"
    afile.write_text("x")
    suite = str(REPO / "benchmarks/all.yaml")
    for results, needle in ((afile, "is a file, not a folder"), (afile / "sub", "is a file, not a folder"),
                            (tmp_path / ("x" * 300), "300 bytes, more than the 255")):  # fmt: skip
        argv = {"run": ["run", "--results", str(results)], "sweep": ["sweep", suite, "--results", str(results)],
                "status": ["status", str(results)], "report": ["report", str(results)]}[command]  # fmt: skip
        assert needle in run_main(argv, capsys)
    assert afile.read_text() == "x"


def test_run_folder_that_is_a_file(tmp_path, capsys):
    spec = small_spec(**SMALL)
    _, _, rd = prepare(spec, tmp_path / "results")
    rd.path.parent.mkdir(parents=True)
    rd.path.write_text("not a folder")
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec.canonical()))
    err = run_main(["run", "--spec", str(spec_file), "--results", str(tmp_path / "results")], capsys)
    assert f"{rd.path}: a file where a folder of run records should be" in err
    assert rd.path.read_text() == "not a folder"


def test_disk_full_names_the_file(tmp_path, monkeypatch):
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")  # what write()/fsync() say: no file name

    monkeypatch.setattr(records.os, "fsync", full)
    with pytest.raises(OSError) as err:
        records.atomic_write_json(tmp_path / "final.json", {})
    assert err.value.filename == str(tmp_path / "final.json") and err.value.errno == errno.ENOSPC
    assert not list(tmp_path.iterdir())


# --- suites --------------------------------------------------------------------------------------------
def write_suite(tmp_path: Path, **overrides) -> Path:
    doc = {"name": "attack", "seeds": [0], "base": SMALL, "datasets": [{"dataset": "synthetic"}],
           "methods": [{"method": "joint"}], **overrides}  # fmt: skip
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"name": "../../x"}, "name: String should match pattern"),
        ({"methods": []}, "methods: List should have at least 1 item"),
        ({"datasets": []}, "datasets: List should have at least 1 item"),
        ({"seeds": []}, "seeds: List should have at least 1 item"),
        ({"seeds": [True]}, "seeds.0: Input should be a valid integer"),
    ],
)
@pytest.mark.parametrize("command", ["sweep", "report"])
def test_bad_suites_exit_2_and_write_nothing(tmp_path, capsys, overrides, needle, command):
    suite = write_suite(tmp_path, **overrides)
    out = tmp_path / "out" / "a" / "b"
    argv = ["sweep", str(suite), "--results", str(out)] if command == "sweep" else \
        ["report", str(tmp_path), "--suite", str(suite), "--out", str(out)]  # fmt: skip
    assert needle in run_main(argv, capsys)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("x.*"))


def test_a_run_listed_twice_is_planned_once(tmp_path):
    from mmbalance.scaleout.sweep import load_suite, plan

    suite = write_suite(tmp_path, seeds=[0, 1, 0], methods=[{"method": "joint"}, {"method": "joint"}])
    planned = plan(load_suite(suite))
    assert [p.spec.seed for p in planned] == [0, 1]


# --- damaged records of a finished run -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"[]", "expected a JSON object, got list"),
        (b'{"test": "x"}', "'test' is not a mapping"),
        (b'{"test": {}, "selection_metric": "accuracy"}', "does not name a number"),
        (b"[" * 30_000, "nested deeper than 64 levels"),
        (b"\xff\xfe", "not UTF-8"),
    ],  # fmt: skip
)
def test_damaged_final_json_is_never_done_and_is_rebuilt(finished, tmp_path, capsys, content, needle):
    rd, spec = copy_run(finished, tmp_path)
    good = rd.final()
    rd.file("final.json").write_bytes(content)
    with pytest.raises(records.DamagedRecordError, match=needle):
        rd.final()
    assert rd.finished() is None
    assert sweep_status(tmp_path / "results").runs[0].state == "interrupted"
    assert "0 done, 0 running, 1 interrupted" in run_main(
        ["status", str(tmp_path / "results")], capsys, code=0
    )
    out = run_main(
        ["run", "--spec", str(spec), "--results", str(tmp_path / "results"), "--quiet"], capsys, code=0
    )
    assert out.startswith("done ") and rd.final() == good and rd.status() == "done"


@pytest.mark.parametrize("content", [b"\xff\xfe\x00done", b"finished\n", b"do" * 10_000])
def test_damaged_status_reads_as_interrupted_and_the_run_resumes(finished, tmp_path, capsys, content):
    rd, spec = copy_run(finished, tmp_path)
    good = rd.final()
    rd.file("status").write_bytes(content)
    assert rd.status() == "running"
    assert "1 interrupted" in run_main(["status", str(tmp_path / "results")], capsys, code=0)
    assert "status is damaged" in sweep_status(tmp_path / "results").runs[0].detail
    assert run_main(
        ["run", "--spec", str(spec), "--results", str(tmp_path / "results"), "--quiet"], capsys, code=0
    )
    assert rd.status() == "done" and rd.final() == good


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("final.json", b"[]", "final.json: expected a JSON object"),
        ("final.json", b'{"test": "x"}', "final.json: 'test' is not a mapping"),
        ("env.json", b"{not json", "env.json: not valid JSON"),
        ("env.json", b"{}", "env.json: 'code_version' is missing"),
        ("spec.yaml", b"- a list\n", "spec.yaml: expected a mapping, got list"),
        ("spec.yaml", b"{seed: [", "spec.yaml: not valid YAML"),
        ("status", b"\xff\xfe", "status is 'running'; only finished runs"),
    ],  # fmt: skip
)
def test_submit_names_a_damaged_record(finished, tmp_path, capsys, name, content, needle):
    rd, _ = copy_run(finished, tmp_path)
    rd.file(name).write_bytes(content)
    out = tmp_path / "entry.json"
    code = main(["submit", str(rd.path), str(rd.path), str(rd.path), "--name", "n", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("spec.yaml", b"{seed: [", "spec.yaml: not valid YAML"),
        ("spec.yaml", b"- 1\n", "expected a mapping"),
        ("best.pt", bytes(4096), "best.pt: damaged"),
        ("env.json", b"[1]", "env.json: expected a mapping"),
    ],  # fmt: skip
)
def test_evaluate_names_a_damaged_record(finished, tmp_path, capsys, name, content, needle):
    rd, _ = copy_run(finished, tmp_path)
    rd.file(name).write_bytes(content)
    assert main(["evaluate", str(rd.path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and str(rd.path) in err and "Traceback" not in err, err


def test_evaluate_of_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "x").write_text("")
    assert "not a run record" in run_main(["evaluate", str(tmp_path / "x")], capsys)


def test_leftovers_of_killed_processes_in_a_finished_run_are_removed(finished, tmp_path, capsys):
    rd, spec = copy_run(finished, tmp_path)
    old = time.time() - 3600
    for name in (".final.json.abc.tmp", ".status.def.tmp"):
        rd.file(name).write_text("{")
        os.utime(rd.file(name), (old, old))
    rd.file(".env.json.fresh.tmp").write_text("{")  # a live writer's: left alone
    rd.file("lock").write_text(json.dumps({"pid": 2**22 + 7, "host": socket.gethostname(), "token": "t",
                                           "started": old}))  # its owner died releasing it  # fmt: skip
    run_main(["status", str(tmp_path / "results")], capsys, code=0)
    assert sorted(f.name for f in rd.path.glob(".*")) == [".env.json.fresh.tmp"]
    assert not rd.file("lock").exists() and rd.status() == "done"


def test_a_forged_lock_is_unreadable_not_a_crash(finished, tmp_path, capsys):
    rd, _ = copy_run(finished, tmp_path)
    rd.set_status("running")
    rd.file("lock").write_text("[" * 30_000)
    old = time.time() - 60
    os.utime(rd.file("lock"), (old, old))
    assert "1 interrupted" in run_main(["status", str(tmp_path / "results")], capsys, code=0)


def test_a_lock_is_never_seen_empty_and_a_dead_creators_file_is_removed(tmp_path, monkeypatch):
    from mmbalance.common import locks
    from mmbalance.common.locks import RunLock, read_lock

    def killed(src: str, dst: str) -> None:  # killed after writing its file, before linking it
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(locks.os, "link", killed)
        with pytest.raises(KeyboardInterrupt):
            RunLock(tmp_path / "lock").acquire()
    assert not (tmp_path / "lock").exists()  # no empty lock for a retry to wait on
    leftover = tmp_path / ".lock.dead.new"  # what a SIGKILL at that moment leaves
    leftover.write_text("{}")
    os.utime(leftover, (time.time() - 60, time.time() - 60))
    with RunLock(tmp_path / "lock") as lock:
        assert lock.acquired and read_lock(tmp_path / "lock").pid == os.getpid()
        assert not leftover.exists()


def test_report_method_names_are_registered_names_not_paths(tmp_path, capsys):
    argv = ["report", str(tmp_path), "--method", "../../../x", "--no-figures"]
    assert "--method ../../../x: not a method; valid choices: agm" in run_main(argv, capsys)
    assert not list(tmp_path.parent.parent.glob("x.*"))
