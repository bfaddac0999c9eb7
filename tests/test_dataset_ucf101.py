"""UCF-101 in BalanceBenchmark's layout: RGB + flow clips, class list, split lists, malformed files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from mmbalance.datasets.ucf101 import Ucf101, Ucf101Params, pick_ucf_frames
from mmbalance.fixtures import ucf101 as fixture
from mmbalance.models.resnet_av import ResNetAVParams
from mmbalance.training.data import DataError, DataMissingError, collate


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return fixture.write(tmp_path_factory.mktemp("data"))


def adapter(folder: Path, **params) -> Ucf101:
    return Ucf101(Ucf101Params(image_size=32, **params), folder)


def test_clips_classes_and_model(root):
    a = adapter(root)
    assert a.class_names == fixture.CLASSES  # sorted names of classInd.txt
    assert [len(a.split(s)) for s in ("train", "valid", "test")] == [6, 3, 3]
    inputs, label, clip = a.split("test")[0]
    assert tuple(inputs["visual"].shape) == (3, 3, 32, 32) and tuple(inputs["flow"].shape) == (2, 3, 32, 32)
    assert clip.startswith(f"v_{a.class_names[int(label)]}_")
    # evaluation: BalanceBenchmark's frames 1, 3, 5 of 6 (k = 0, 2, 4 -> frame000001/3/5.jpg; before
    # issue 29: 2, 4, 6); the fixture's u frames are flat grey levels 100 + 40 * label + k
    u = inputs["flow"][0, :, 0, 0] * 255
    torch.testing.assert_close(u.round(), torch.tensor([100.0, 102.0, 104.0]) + 40 * int(label))
    model = a.build_model(ResNetAVParams(width=8), ["visual", "flow"])
    assert model.encoders["flow"].body[0].in_channels == 2
    batch = collate([a.split("train")[i] for i in range(2)])
    assert model(batch.inputs).pred.shape == (2, 3)


def test_missing_files_and_bad_lines(root, tmp_path):
    with pytest.raises(DataMissingError, match="classInd.txt"):
        adapter(tmp_path / "ucf101").verify()
    folder = Path(shutil.copytree(root, tmp_path / "copy"))
    (folder / "testlist01.txt").write_text("Bowling/v_Bowling_g01_c01.avi\n")
    with pytest.raises(DataError, match=r"testlist01.txt: line 1 .*class 'Bowling' is not in classInd.txt"):
        adapter(folder).split("test")
    (folder / "testlist01.txt").write_text("v_Archery_g01_c01.avi\n")
    with pytest.raises(DataError, match="no '<ClassName>/'"):
        adapter(folder).split("test")
    shutil.rmtree(folder / "flow_v" / "v_Archery_g08_c01")
    with pytest.raises(DataMissingError, match="1 frame folder"):
        adapter(folder).split("train")
    assert (
        len(adapter(folder, skip_missing=True).split("train"))
        + len(adapter(folder, skip_missing=True).split("valid"))
        == 8
    )


@pytest.mark.parametrize("n", [3, 4, 6, 7, 9, 10, 25])
def test_frame_picks_are_balancebenchmarks(n):
    """``ucf101_dataset.py`` l.109-116: ``chosen_index`` is 1-based; evaluation ``i*seg + max(seg//2, 1)``,
    training ``random.randint(i*seg + 1, i*seg + seg)``."""
    seg = n // 3
    official = [i * seg + max(int(seg / 2), 1) for i in range(3)]
    assert [k + 1 for k in pick_ucf_frames(n, 3, train=False)] == official
    for _ in range(20):
        picks = pick_ucf_frames(n, 3, train=True)
        assert all(i * seg + 1 <= k + 1 <= i * seg + seg for i, k in enumerate(picks))
