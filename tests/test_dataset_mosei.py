"""CMU-MOSEI through the MOSI code: MulT and MMSA files (MMSA's ``MOSEI/Processed/`` layout), MOSEI's feature
sizes, the binary task of BalanceBenchmark; MOSI's MMSA files found where MMSA's archive puts them."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmbalance.datasets.mosei import Mosei, MoseiParams
from mmbalance.datasets.mosi import Mosi, MosiParams
from mmbalance.fixtures import mosei as fixture
from mmbalance.fixtures import mosi as mosi_fixture
from mmbalance.training.data import DataError, DataMissingError


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return fixture.write(tmp_path_factory.mktemp("data")).parent


@pytest.mark.parametrize(
    ("params", "file", "text_dim"),
    [
        ({}, "mosei_senti_data.pkl", 300),
        ({"aligned": False}, "mosei_senti_data_noalign.pkl", 300),
        ({"source": "mmsa"}, "MOSEI/Processed/aligned_50.pkl", 768),
        ({"source": "mmsa", "aligned": False}, "MOSEI/Processed/unaligned_50.pkl", 768),
    ],
)
def test_mult_and_mmsa_files(root, params, file, text_dim):
    a = Mosei(MoseiParams(**params), root / "mosei")
    assert a.expected_files() == [Path(file)]
    assert a.input_dims() == {"text": text_dim, "audio": 74, "vision": 35}
    assert a.task.kind == "regression" and len(a.split("train")) == mosi_fixture.SIZES["train"]


def test_binary_target_is_score_at_least_zero(root):
    score = Mosei(MoseiParams(), root / "mosei").split("test").target[:, 0]
    binary = Mosei(MoseiParams(target="binary"), root / "mosei")
    assert binary.task.kind == "classification" and binary.task.num_classes == 2
    y = binary.split("test").target
    assert y.dtype.is_floating_point is False and y.tolist() == (score >= 0).long().tolist()
    assert (score == 0).any() and y[score == 0].eq(1).all()  # BalanceBenchmark's acc2: 0 counts as 1
    model = binary.build_model(binary.ModelParams(proj_dim=8, num_heads=2, layers=2, cls_layers=1),
                               ["text", "audio", "vision"])  # fmt: skip
    assert model.out_layer.out_features == 2


def test_missing_mosei_names_every_candidate(tmp_path):
    with pytest.raises(DataMissingError) as e:
        Mosei(MoseiParams(), tmp_path / "mosei").verify()
    for name in ("mosei_senti_data.pkl", "aligned_50.pkl", "MOSEI/Processed/aligned_50.pkl"):
        assert name in str(e.value)


def test_mmsa_sha256_is_checked_on_the_full_release(root, tmp_path, monkeypatch):
    folder = Path(shutil.copytree(root / "mosei", tmp_path / "mosei"))
    monkeypatch.setattr(Mosei, "mmsa_train_samples", mosi_fixture.SIZES["train"])  # the fixture as "full"
    with pytest.raises(DataError, match="differs from MMSA's published 45eccfb7"):
        Mosei(MoseiParams(source="mmsa"), folder).split("train")
    assert len(Mosei(MoseiParams(source="mmsa", check_sha256=False), folder).split("train")) > 0


@pytest.mark.parametrize("where", ["Processed", "MOSI/Processed", "../MOSI/Processed"])
def test_mosi_mmsa_layouts_are_found(tmp_path, where):
    folder = (tmp_path / "mosi" / where).resolve()
    folder.mkdir(parents=True)
    (folder / "unaligned_50.pkl").write_bytes(pickle.dumps(mosi_fixture.mmsa_pickle(False), protocol=4))
    a = Mosi(MosiParams(aligned=False), tmp_path / "mosi")
    a.verify()
    assert a.expected_files() == [Path(where) / "unaligned_50.pkl"]
    assert np.isfinite(a.split("valid").inputs["audio"].numpy()).all()


def test_datasets_command_lists_mmsa_layout(tmp_path, capsys):
    from mmbalance.cli import main

    processed = tmp_path / "MOSEI" / "Processed"
    processed.mkdir(parents=True)
    (processed / "aligned_50.pkl").write_bytes(pickle.dumps(mosi_fixture.mmsa_pickle(True), protocol=4))
    assert main(["datasets", "--data-root", str(tmp_path)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("│ mosei"))
    assert "found" in row
