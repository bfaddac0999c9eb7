"""What GPU users expect of the loop: page-locked batches copied asynchronously on CUDA, evaluation
loaders whose workers persist across epochs, cuDNN benchmark mode unless ``--deterministic``, and the
choice recorded in env.json."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import small_spec

from mmbalance.common.records import RunDir
from mmbalance.scaleout import executors
from mmbalance.training import runner

TINY = {"n_train": 64, "n_valid": 32, "n_test": 32}


@pytest.fixture
def restore_backends():
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled())  # fmt: skip
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[:2]
    torch.use_deterministic_algorithms(saved[2])


def test_cuda_benchmark_mode_unless_deterministic(restore_backends, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cuda = torch.device("cuda")  # the flags are plain settings: no GPU needed to set them
    assert runner.configure_backends(cuda, deterministic=False) == {
        "deterministic": False,
        "cudnn_benchmark": True,
    }
    assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    assert runner.configure_backends(cuda, deterministic=True) == {
        "deterministic": True,
        "cudnn_benchmark": False,
    }
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    assert torch.are_deterministic_algorithms_enabled()

    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    runner.configure_backends(cuda, deterministic=False)  # a later run in the same process: fast again
    assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()


def test_env_json_records_the_kernel_choice(tmp_path, restore_backends):
    for deterministic in (False, True):
        spec = small_spec(epochs=1, dataset_params=TINY, seed=int(deterministic))
        done = runner.train(spec, results=tmp_path, progress=False, device="cpu", deterministic=deterministic)
        env = json.loads((done.path / "env.json").read_text())
        assert env["deterministic"] is deterministic and env["cudnn_benchmark"] is False  # CPU: no cuDNN


def test_evaluation_workers_persist_and_training_workers_do_not(tmp_path):
    spec = small_spec(dataset_params=TINY)
    tr = runner.Trainer(spec, runner.make_adapter(spec), RunDir.of(tmp_path, "t"), torch.device("cpu"), False,
                        workers=1)  # fmt: skip
    valid = tr.loader("valid", shuffle=False)
    assert valid.persistent_workers and tr.loader("valid", shuffle=False) is valid
    assert tr.loader("test", shuffle=False) is not valid
    train = tr.loader("train", shuffle=True, epoch=1)
    assert not train.persistent_workers and tr.loader("train", shuffle=True, epoch=1) is not train
    assert not tr.loader("train", shuffle=False).persistent_workers  # may augment: fresh workers per pass
    assert not valid.pin_memory  # page-locked memory only where a GPU copies from it
    plain = runner.Trainer(
        spec, runner.make_adapter(spec), RunDir.of(tmp_path, "p"), torch.device("cpu"), False
    )
    want = [b.ids for b in plain.loader("valid", shuffle=False)]
    assert [b.ids for b in valid] == want and [b.ids for b in valid] == want  # twice, same workers


def test_sweeps_pass_deterministic_on():
    assert executors.executor_options({}, {"deterministic": True}).deterministic is True
    assert executors.executor_options({"deterministic": True}, {"deterministic": None}).deterministic is True
    assert executors.executor_options({}, {}).deterministic is False


def test_workers_default_from_the_cpu_count_for_file_backed_data_on_cuda(monkeypatch):
    from mmbalance.common.registry import DATASETS

    def adapter(name: str, **params):
        cls = DATASETS.get(name)
        return cls(cls.Params.model_validate(params))

    files = [adapter("brats"), adapter("cremad"), adapter("food101"), adapter("iemocap")]
    memory = [adapter("synthetic"), adapter("mosi"), adapter("iemocap", format="mult")]
    assert all(a.reads_items() for a in files) and not any(a.reads_items() for a in memory)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for threads, want in ((16, 8), (4, 3), (1, 1)):  # one per thread less one, at least 1, at most 8
        monkeypatch.setattr(torch, "get_num_threads", lambda t=threads: t)
        assert [runner.auto_workers(a, cuda) for a in files] == [want] * len(files)
    assert [runner.auto_workers(a, cuda) for a in memory] == [0, 0, 0]
    assert runner.auto_workers(files[0], cpu) == 0  # the CPU's cores compute the step


def test_a_run_records_the_workers_it_used(tmp_path):
    done = runner.train(
        small_spec(epochs=1, dataset_params=TINY), results=tmp_path, progress=False, device="cpu"
    )
    assert json.loads((done.path / "env.json").read_text())["loader_workers"] == 0  # in-memory data: none
