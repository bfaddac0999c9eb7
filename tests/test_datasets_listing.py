"""`mmbalance datasets` finds the balancing literature's datasets in their fixtures; `reproduce` of their
paper tables on missing data names every missing file."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmbalance.cli import main
from mmbalance.fixtures import ave, cremad, kinetics_sounds, mosei, sims, ucf101
from mmbalance.reporting.paper import load_table, missing_data, table_suite

NEW = {"cremad": cremad, "kinetics_sounds": kinetics_sounds, "ave": ave, "mosei": mosei, "ucf101": ucf101,
       "sims": sims}  # fmt: skip


def test_datasets_command_finds_every_fixture(tmp_path, capsys):
    for fixture in NEW.values():
        fixture.write(tmp_path)
    assert main(["datasets", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mosi: none of" in out  # the datasets without fixtures here are reported missing ...
    for name in NEW:  # ... and each of these is found: no missing-file report names it
        assert f"{name}: missing" not in out and f"{name}: none of" not in out, name
    from mmbalance.common.registry import DATASETS

    for name in NEW:
        cls = DATASETS.get(name)
        cls(cls.Params(), tmp_path / name).verify()


@pytest.mark.parametrize(
    "table", ["balancebenchmark-table", "ogm-ge-table", "pmr-table", "mla-table", "lnln-sims-table"]
)
def test_reproduce_on_missing_data_lists_every_file(table, tmp_path):
    spec, path = load_table(table)
    problems = "\n".join(missing_data(table_suite(spec, path), tmp_path))
    expected = {
        "cremad": ["train.csv", "test.csv", "AudioWAV", "Image-01-FPS"],
        "kinetics_sounds": [
            "my_train.txt",
            "my_test.txt",
            "train_spec",
            "train_frames",
            "test_spec",
            "test_frames",
        ],
        "ave": ["trainSet.txt", "valSet.txt", "testSet.txt", "Audio-1004-SE", "Image-01-FPS-SE"],
        "ucf101": ["classInd.txt", "trainlist01.txt", "testlist01.txt", "rgb", "flow_u", "flow_v"],
        "mosei": ["mosei_senti_data_noalign.pkl", "MOSEI/Processed/unaligned_50.pkl"],
        "sims": ["unaligned_39.pkl", "SIMS/Processed/unaligned_39.pkl"],
    }
    datasets = {d["dataset"] for d in table_suite(spec, path).datasets}
    assert datasets and datasets <= set(expected)
    for name in datasets:
        for file in expected[name]:
            assert str(Path(tmp_path) / name / file) in problems or f"{file}" in problems, (name, file)
