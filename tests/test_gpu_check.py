"""``scripts/gpu_check.py`` runs its whole path on the CPU (small shapes), so that it is known to work
before a GPU is used: every table is written and holds what the GPU run would put there."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import gpu_check  # noqa: E402

FAST = [
    "--batch",
    "4",
    "--warmup",
    "1",
    "--steps",
    "1",
    "--repeats",
    "1",
    "--amp-steps",
    "2",
    "--device",
    "cpu",
]


def run(tmp_path: Path, *args: str) -> tuple[dict, str]:
    assert gpu_check.main([*FAST, "--out", str(tmp_path), *args]) == 0
    return json.loads((tmp_path / "gpu-cpu-small.json").read_text()), (
        tmp_path / "gpu-cpu-small.md"
    ).read_text()


def test_gpu_check_cpu_dry_run(tmp_path):
    """MOSI only (its transformer builds fast): the timing, memory, utilisation, skip, CGGM-memory and
    AMP-decision paths; the slow test below runs every model."""
    doc, md = run(tmp_path, "--models", "mosi", "--amp-model", "mosi")
    got = {(r["dataset"], r["method"], r["amp"]) for r in doc["rows"]}
    assert got == {("mosi", m, amp) for m in ("joint", "cggm") for amp in (False, True)}
    assert "regression" in doc["skipped"]["mosi"]["ogm_ge"] and "regression" in doc["skipped"]["mosi"]["pmr"]
    for r in doc["rows"]:
        assert r["ms_per_step"] > 0 and r["samples_per_s"] == pytest.approx(
            r["batch"] / r["ms_per_step"] * 1000
        )
        assert r["batch"] == 4 and r["util_pct"] is None  # no NVML off CUDA: "-", never a made-up number
        assert r["time_x_joint"] == 1 if r["method"] == "joint" else r["time_x_joint"] > 0
    cggm = doc["cggm_extra_mb"]
    assert set(cggm) == {"mosi/fp32", "mosi/amp"}
    assert all(v["classifier_state_mb"] > 0 for v in cggm.values())  # the classifiers and their Adam state
    assert [c["method"] for c in doc["amp_decisions"]] == ["cggm"] and doc["amp_decisions"][0]["finite"]
    assert "| mosi | cggm | 4 |" in md and "| mosi | pmr | - | not applicable:" in md
    assert "CGGM's extra memory" in md and "AMP decisions on the mosi shape" in md


def test_budget_leaves_models_out_and_says_so(tmp_path):
    doc, md = run(tmp_path, "--models", "cremad", "mosi", "--budget", "0", "--amp-steps", "0")
    assert doc["left_out"] == ["cremad", "mosi"] and doc["rows"] == []
    assert "Left out (budget): cremad, mosi" in md


def test_utilisation_drops_the_first_third_of_the_samples():
    class FakeNvml:
        values = iter(range(1000))

        @staticmethod
        def nvmlDeviceGetUtilizationRates(handle):
            return type("Rates", (), {"gpu": next(FakeNvml.values)})

    util = gpu_check.Utilisation(gpu_check.resolve_device("cpu"), seconds=0.3, interval=0.01)
    assert util(lambda n: 0.0) == {"util_pct": None}  # off CUDA: steps run, nothing sampled
    util.nvml, util.handle = FakeNvml, object()
    steps = []
    got = util(lambda n: steps.append(n) or 0.0)
    assert steps[0] == 1 and sum(steps) >= 1
    n = got["util_samples"]
    first = next(FakeNvml.values) - n  # samples were 0, 1, 2, ...: the kept ones are the last n
    assert first == (first + n) // 3  # the first third dropped
    assert got["util_pct"] == pytest.approx(first + (n - 1) / 2)


@pytest.mark.slow
def test_gpu_check_cpu_dry_run_every_model(tmp_path):
    doc, md = run(tmp_path)
    assert {r["dataset"] for r in doc["rows"]} == set(gpu_check.MODELS) and not doc["left_out"]
    assert {r["method"] for r in doc["rows"] if r["dataset"] == "cremad"} == set(gpu_check.METHODS)
    assert [c["method"] for c in doc["amp_decisions"]] == ["ogm_ge", "pmr", "cggm"]
    assert "iemocap/ogm_ge: model_params {'fusion': 'concat'" in md  # the preset's own model, named


def test_classifiers_at_the_presets(tmp_path):
    assert (
        gpu_check.main(["--classifiers", "--models", "mosi", "--device", "cpu", "--out", str(tmp_path)]) == 0
    )
    md = (tmp_path / "cggm-classifiers-presets.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| mosi |"))
    params, grads, optim, total = (float(x) for x in row.split("|")[2:6])
    # Three linear classifiers on the 30-d modality features, trained by Adam (two moments each).
    assert params == grads > 0 and optim == pytest.approx(2 * params, abs=0.02)
    assert total == pytest.approx(params + grads + optim, abs=0.02)  # each rounded to 0.01
