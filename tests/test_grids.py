"""Grids (``grid.py``), planning without data (``planning.py``), ``sweep --set/--only/--dry-run``, ``run -m``,
and the command line's rough edges: unknown fields, Ctrl-C, SLURM off a cluster, ``status -v`` labels."""

from __future__ import annotations

import pytest

from mmbalance.cli import main
from mmbalance.common.records import RunDir
from mmbalance.common.spec import SpecError, validate_spec
from mmbalance.scaleout.grid import axes, expand, parse_multirun
from mmbalance.scaleout.planning import declared_fingerprint, parse_only, select
from mmbalance.scaleout.sweep import plan, run_ids, suite_from_doc
from mmbalance.training.runner import Trainer, data_fingerprint, make_adapter

TINY = {
    "epochs": 2,
    "batch_size": 32,
    "probe_every": 0,
    "dataset_params": {"n_train": 96, "n_valid": 48, "n_test": 48},
}
SUITE = f"""name: tiny
seeds: [0, 1]
base: {TINY}
datasets:
  - {{dataset: synthetic}}
methods:
  - {{method: [joint, ogm_ge], optim: {{lr: [0.01, 0.05]}}}}
  - {{method: cggm, method_params: {{rho: [1.0, 1.3]}}}}
"""


def test_a_list_is_an_axis_only_where_the_field_takes_one_value():
    doc = {"method": "ogm_ge", "dataset": "synthetic", "optim": {"lr": [0.01, 0.05]}, "epochs": [1, 2],
           "method_params": {"alpha": [0.1, 0.5]},
           "dataset_params": {"noise": [1.5, 1.5, 1.5], "dim": [8, 16, 32], "imbalance": [0.0, 1.0]}}  # fmt: skip
    # noise is list[float] (one value); dim is int | list[int] (both: never an axis); imbalance a float
    assert axes(doc, doc) == {"optim.lr": [0.01, 0.05], "epochs": [1, 2], "method_params.alpha": [0.1, 0.5],
                              "dataset_params.imbalance": [0.0, 1.0]}  # fmt: skip
    points = expand(doc)
    assert len(points) == 16 and points[0][1] == {"optim.lr": 0.01, "epochs": 1, "method_params.alpha": 0.1,
                                                   "dataset_params.imbalance": 0.0}  # fmt: skip
    assert points[-1][0]["optim"] == {"lr": 0.05} and points[-1][0]["dataset_params"]["noise"] == [1.5] * 3
    with pytest.raises(SpecError, match="optim.lr: an empty list"):
        expand({"optim": {"lr": []}})
    assert parse_multirun(["optim.lr=0.01,0.05"]) == ["optim.lr=[0.01,0.05]"]


def test_a_suite_grid_plans_the_product_with_labels_that_tell_the_points_apart():
    suite = suite_from_doc(__import__("yaml").safe_load(SUITE), "tiny")
    planned = plan(suite)
    labels = [p.label for p in planned]
    assert len(planned) == (2 * 2 + 2) * 2 and len(set(labels)) == len(labels)
    assert "synthetic/classification ogm_ge(optim.lr=0.05) seed 1" in labels
    assert "synthetic/classification cggm(rho=1.0) seed 0" in labels  # 1.3 is the default: cggm alone
    lrs = {(p.spec.method, p.spec.optim.lr) for p in planned}
    assert lrs == {("joint", 0.01), ("joint", 0.05), ("ogm_ge", 0.01), ("ogm_ge", 0.05), ("cggm", 0.01)}
    # --set above every entry, a list there a grid too: a data field makes one block per value
    over = plan(suite, overrides={"epochs": 3, "dataset_params": {"imbalance": [0.0, 1.0]}})
    assert {p.spec.epochs for p in over} == {3} and len(over) == 2 * len(planned)
    assert {p.block for p in over} == {
        "synthetic(dataset_params.imbalance=0.0)",
        "synthetic(dataset_params.imbalance=1.0)",
    }


def test_planning_takes_declared_fingerprints_and_they_equal_the_computed_ones():
    spec = validate_spec({"dataset": "synthetic", "seed": 3})  # a declared configuration (fingerprints.yaml)
    adapter = make_adapter(spec)
    assert declared_fingerprint(adapter) == data_fingerprint(adapter)
    assert declared_fingerprint(make_adapter(validate_spec({**TINY, "seed": 3}))) is None  # not declared
    suite = suite_from_doc(__import__("yaml").safe_load(SUITE), "tiny")
    planned = plan(suite)
    assert run_ids(planned, declared=True) == run_ids(planned)  # undeclared: computed, the same ids


def test_only_keeps_the_matching_runs_and_refuses_a_value_the_suite_lacks():
    planned = plan(suite_from_doc(__import__("yaml").safe_load(SUITE), "tiny"))
    kept = select(planned, parse_only(["method=joint,cggm", "seed=1"]))
    assert {(p.spec.method, p.spec.seed) for p in kept} == {("joint", 1), ("cggm", 1)} and len(kept) == 4
    with pytest.raises(
        SpecError, match="--only method=ogm: no run of the suite has it; the suite's: cggm, joint"
    ):
        select(planned, parse_only(["method=ogm"]))
    with pytest.raises(SpecError, match="KEY one of method, dataset, seed, block"):
        parse_only(["lr=0.1"])


def test_sweep_dry_run_lists_ids_and_finished_runs_and_only_runs_a_subset(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    (tmp_path / "tiny.yaml").write_text(SUITE)
    suite, results = str(tmp_path / "tiny.yaml"), str(tmp_path / "r")
    ids = run_ids(plan(suite_from_doc(__import__("yaml").safe_load(SUITE), "tiny")))
    assert main(["sweep", suite, "--results", results, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert all(i in out for i in ids) and "12 runs planned: 12 to run, 0 finished" in out
    assert not (tmp_path / "r").exists()  # a dry run writes nothing
    assert (
        main(["sweep", suite, "--results", results, "--quiet", "--only", "method=cggm", "--only", "seed=0"])
        == 0
    )
    assert "2 runs done or reused" in capsys.readouterr().out
    assert main(["sweep", suite, "--results", results, "--dry-run", "--only", "method=cggm"]) == 0
    out = capsys.readouterr().out
    assert "4 runs planned: 2 to run, 2 finished" in out and out.count("finished") == 3
    # the suite's report still covers all its runs: the .runs file lists the whole plan
    assert set((tmp_path / "r" / "sweeps" / "tiny.runs").read_text().split()) == set(ids)


def test_run_multirun_expands_a_grid_of_specs(capsys):
    assert main(["run", "-m", "optim.lr=0.01,0.05", "-m", "method=joint,ogm_ge", "--dry-run"]) == 0
    docs = [__import__("yaml").safe_load(d) for d in capsys.readouterr().out.split("---\n")]
    assert [(d["method"], d["optim"]["lr"]) for d in docs] == [("joint", 0.01), ("joint", 0.05), ("ogm_ge", 0.01),
                                                                ("ogm_ge", 0.05)]  # fmt: skip
    assert main(["run", "-m", "optim.lr", "--dry-run"]) == 2


def test_an_unknown_field_names_the_nearest_valid_one(capsys):
    assert main(["run", "--method", "cggm", "--set", "method_params.rhoo=1", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "method_params.rhoo: unknown field; did you mean 'rho'? valid: rho, lam," in err
    )
    assert main(["run", "--set", "optim.lrr=0.1", "--dry-run"]) == 2
    assert "did you mean 'lr'? valid: name, lr, momentum" in capsys.readouterr().err
    assert main(["run", "--method", "joint", "--set", "method_params.x=1", "--dry-run"]) == 2
    assert "method_params.x: unknown field; this section takes no fields" in capsys.readouterr().err


def test_methods_name_shows_tasks_modalities_and_types(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["methods", "cggm"]) == 0
    out = capsys.readouterr().out
    assert "tasks: classification, regression, segmentation; modalities: 2 or more" in out
    assert "Literal['weights', 'gradients']" in out and "float | None" in out


def test_ctrl_c_is_one_line_exit_130_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    save = Trainer.save_checkpoint

    def save_then_stop(self, epoch: int) -> None:
        save(self, epoch)
        raise KeyboardInterrupt

    args = ["run", "--quiet", "--results", str(tmp_path), *[f"--set={k}={v}" for k, v in
            {"epochs": 2, "batch_size": 32, "dataset_params.n_train": 96, "dataset_params.n_valid": 48,
             "dataset_params.n_test": 48}.items()]]  # fmt: skip
    with monkeypatch.context() as m:
        m.setattr(Trainer, "save_checkpoint", save_then_stop)
        assert main(args) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("interrupted; rerun `mmbalance run ...` to resume")
    (rd,) = [RunDir(p) for p in (tmp_path / "runs").iterdir()]
    assert rd.status() == "running" and rd.file("checkpoint.pt").is_file()  # epoch 0 saved
    assert main(args) == 0 and rd.status() == "done" and len(rd.epochs()) == 2


def test_slurm_off_a_cluster_is_one_line_or_nothing_to_do(tmp_path, capsys, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    (tmp_path / "tiny.yaml").write_text(SUITE)
    args = ["sweep", str(tmp_path / "tiny.yaml"), "--results", str(tmp_path / "r"), "--only", "method=cggm",
            "--only", "seed=0"]  # fmt: skip
    assert main([*args, "--executor", "slurm"]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "no `sbatch` here (not a SLURM cluster) and 2 of 2 runs are not finished" in err
    )
    assert main([*args, "--quiet"]) == 0
    assert main([*args, "--executor", "slurm"]) == 0
    assert "all 2 runs are finished; nothing to submit" in capsys.readouterr().out


def test_status_verbose_labels_runs_without_a_suite(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    (tmp_path / "tiny.yaml").write_text(SUITE)
    assert main(["sweep", str(tmp_path / "tiny.yaml"), "--results", str(tmp_path), "--quiet", "--only",
                 "method=cggm", "--only", "seed=0"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["status", str(tmp_path), "-v"]) == 0
    out = capsys.readouterr().out
    assert (
        "synthetic/classification cggm(rho=1.0) seed 0" in out
        and "synthetic/classification cggm(rho=1.3) seed 0" in out
    )


def test_datasets_say_where_to_get_the_data(tmp_path, capsys):
    assert main(["datasets", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Where to get each dataset" in out and "cremad: CREMA-D (Cao et al. 2014)" in out
    assert (
        "\nWhere to get it: IEMOCAP (Busso et al. 2008, USC SAIL): access on request" in out
    )  # missing: the note
    assert (
        main(["run", "--dataset", "mosi", "--data-root", str(tmp_path), "--dry-run"]) == 0
    )  # dry: no data read
    assert main(["run", "--dataset", "mosi", "--data-root", str(tmp_path)]) == 2
    assert "Where to get it: CMU-MOSI" in capsys.readouterr().err


def test_a_plan_reads_no_data_file_once_a_sweep_has_fingerprinted_it(tmp_path, monkeypatch):
    """Data read from files: the fingerprint a sweep computed is cached under the content digest of the
    files (hashed once, then stat'ed); a later plan builds nothing, and a changed byte misses the cache."""
    import mmbalance.training.runner
    from mmbalance.fixtures import mosi as fixture

    root = fixture.write(tmp_path / "data").parent
    suite = suite_from_doc({"name": "m", "seeds": [0], "base": {"epochs": 1}, "datasets": [{"dataset": "mosi"}],
                            "methods": [{"method": "joint"}]}, "m")  # fmt: skip
    planned = plan(suite, root)
    computed = run_ids(planned, root)  # what `sweep` computes (and caches)

    def no_data(*args, **kwargs):
        raise AssertionError("planning built the data")

    with monkeypatch.context() as m:
        m.setattr(mmbalance.training.runner, "data_fingerprint", no_data)
        assert run_ids(planned, root, declared=True) == computed
        adapter = make_adapter(planned[0].spec, root)
        (read,) = [adapter.root / f for f in adapter.data_files()]
        read.write_bytes(read.read_bytes() + b"\0")  # another file: its digest, its fingerprint unknown
        with pytest.raises(AssertionError, match="planning built the data"):
            run_ids(planned, root, declared=True)
