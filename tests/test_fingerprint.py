"""Data fingerprints cover file contents: a changed feature file gives a new run id, a copy of the tree
(new mtimes, same bytes) keeps it, each file is hashed once, and ``datasets --verify`` names the change."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from mmbalance.cli import main
from mmbalance.common.spec import validate_spec
from mmbalance.fixtures import kinetics_sounds
from mmbalance.training import fingerprint
from mmbalance.training.runner import prepare

SPEC = {"dataset": "kinetics_sounds", "dataset_params": {"image_size": 16}, "epochs": 1}


@pytest.fixture
def data(tmp_path):
    kinetics_sounds.write(tmp_path / "data")
    return tmp_path / "data"


def run_id(data_root) -> str:
    return prepare(validate_spec(SPEC), data_root.parent / "results", data_root)[2].run_id


def test_changed_feature_file_gives_a_new_run_id_and_a_copy_keeps_it(data, tmp_path, monkeypatch):
    before = run_id(data)
    assert run_id(data) == before
    copy = tmp_path / "copy" / "data"
    shutil.copytree(data, copy)  # new mtimes and paths, same bytes: same run id on another machine
    assert run_id(copy) == before
    npy = sorted((data / "kinetics_sounds" / "train_spec").iterdir())[0]
    fbank = np.load(npy)
    fbank[0, 0] += 1e-3  # re-extracted: same shape, same size, one value differs
    np.save(npy, fbank)
    assert run_id(data) != before
    # the ids and labels alone did not change: the split fingerprints are the same
    fp_before, fp_after = (prepare(validate_spec(SPEC), tmp_path, d)[1] for d in (copy, data))
    assert fp_before.split("|files:")[0] == fp_after.split("|files:")[0]


def test_each_file_is_hashed_once_then_statted(data, monkeypatch):
    calls = []
    real = fingerprint.file_sha256
    monkeypatch.setattr(fingerprint, "file_sha256", lambda p: calls.append(p) or real(p))
    run_id(data)
    n = len(calls)
    assert n > 10
    run_id(data)
    assert len(calls) == n  # cache hit: size and mtime unchanged
    npy = sorted((data / "kinetics_sounds" / "test_spec").iterdir())[0]
    np.save(npy, np.load(npy) * 2)
    run_id(data)
    assert calls[n:] == [npy]


def test_datasets_verify_names_changed_added_and_removed_files(data, capsys):
    argv = ["datasets", "--data-root", str(data), "--dataset", "kinetics_sounds", "--verify"]
    assert main(argv) == 0
    assert "no fingerprint recorded yet" in capsys.readouterr().out
    run_id(data)  # a run records its fingerprint
    assert main(argv) == 0
    assert "unchanged since the fingerprint of" in capsys.readouterr().out
    spec_dir = data / "kinetics_sounds" / "train_spec"
    first, second = sorted(spec_dir.iterdir())[:2]
    np.save(first, np.load(first) + 1)
    shutil.move(second, spec_dir / "extra.npy")
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "1 changed, 1 added, 1 removed since the fingerprint of" in out
    assert f"changed: train_spec/{first.name}" in out
    assert "added: train_spec/extra.npy" in out and f"removed: train_spec/{second.name}" in out


def test_datasets_honours_renamed_folders_and_list_names(data, capsys):
    ks = data / "kinetics_sounds"
    (ks / "train_spec").rename(ks / "spec_train")
    (ks / "test_spec").rename(ks / "spec_test")
    argv = ["datasets", "--data-root", str(data), "--dataset", "kinetics_sounds"]
    assert main(argv) == 0
    assert "missing" in capsys.readouterr().out
    assert main([*argv, "--set", "dataset_params.audio_dir=spec_{split}"]) == 0
    out = capsys.readouterr().out
    assert "found" in out and "missing" not in out
    assert main(["datasets", "--set", "dataset_params.audio_dir=x"]) == 2
    assert "--set needs --dataset" in capsys.readouterr().err
