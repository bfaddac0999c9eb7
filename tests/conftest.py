from __future__ import annotations

import pytest
import torch

from mmbalance.common.spec import RunSpec, validate_spec


@pytest.fixture(autouse=True)
def _content_hash_cache(tmp_path_factory, monkeypatch):
    # The data fingerprints' hash cache and manifests go to the session's temp folder, not ~/.cache.
    monkeypatch.setenv("MMBALANCE_CACHE", str(tmp_path_factory.getbasetemp() / "mmbalance-cache"))


@pytest.fixture(autouse=True)
def _single_thread():
    # Same numbers on every machine and no oversubscription on CI's 2 cores.
    torch.set_num_threads(1)


def small_spec(**overrides) -> RunSpec:
    """A synthetic run that trains in about a second."""
    data = {
        "dataset": "synthetic",
        "dataset_params": {"n_train": 256, "n_valid": 64, "n_test": 64},
        "epochs": 2,
        "batch_size": 32,
        "probe_every": 2,
    }
    for k, v in overrides.items():
        data[k] = {**data[k], **v} if isinstance(v, dict) and isinstance(data.get(k), dict) else v
    return validate_spec(data)


@pytest.fixture
def spec_factory():
    return small_spec
