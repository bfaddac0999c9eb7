"""``scripts/compare_official_cggm.py``: the three CPU patches, and its MOSI pickle in the real schema."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from mmbalance.common.spec import validate_spec

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location(
    "compare_official_cggm", REPO / "scripts/compare_official_cggm.py"
)
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)

# The lines the patches target, as in zrguo/CGGM@21e428c.
OFFICIAL = {
    "run/mosi_run.py": "    torch.set_default_tensor_type('torch.FloatTensor')\n    if torch.cuda.is_available():\n"
    "        use_cuda = True\n",
    "datasets/dataloader.py": "DataLoader(data[ds], batch_size=batch_size, num_workers=8)\n",
    "src/msatrain.py": "scheduler = ReduceLROnPlateau(optimizer, mode='min', patience=10, factor=0.1, verbose=True)\n",
}


def fake_checkout(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_patches_apply_to_a_copy_and_leave_the_checkout_alone(tmp_path):
    official = fake_checkout(tmp_path / "CGGM", OFFICIAL)
    copy = compare.patched_copy(official, tmp_path / "work")
    assert "use_cuda = False" in (copy / "run/mosi_run.py").read_text()
    assert "num_workers=0" in (copy / "datasets/dataloader.py").read_text()
    assert "verbose" not in (copy / "src/msatrain.py").read_text()
    assert {rel: (official / rel).read_text() for rel in OFFICIAL} == OFFICIAL  # the checkout is untouched


def test_a_missing_patch_target_names_the_file(tmp_path, capsys):
    official = fake_checkout(tmp_path / "CGGM", {**OFFICIAL, "datasets/dataloader.py": "num_workers=4\n"})
    with pytest.raises(SystemExit) as exit_:
        compare.patched_copy(official, tmp_path / "work")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "datasets/dataloader.py" in err and "num_workers=8" in err


def test_the_generated_pickle_is_read_by_the_mosi_adapter(tmp_path):
    """The pickle the official loader reads is MulT's ``mosi_data.pkl``; our adapter reads the same file."""
    from mmbalance.training.runner import make_adapter

    (tmp_path / "mosi").mkdir()
    compare.write_mosi_pickle(tmp_path / "mosi" / "mosi_data.pkl", seed=0)
    adapter = make_adapter(validate_spec({"dataset": "mosi", "dataset_params": {"source": "mult"}}), tmp_path)
    assert [len(adapter.split(s)) for s in ("train", "valid", "test")] == list(compare.SIZES.values())
    inputs, target, _ = adapter.split("train")[0]
    assert {m: tuple(x.shape) for m, x in inputs.items()} == {m: (50, d) for m, d in compare.DIMS.items()}
    assert -3 <= float(target.reshape(-1)[0]) <= 3
