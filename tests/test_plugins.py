"""Plug-in methods and datasets: a distribution outside this repository declares entry points in the groups
``mmbalance.methods`` / ``mmbalance.datasets`` (``registry.py``); its method is listed, swept and reported
like a built-in one. The package is installed into a temporary folder (its ``dist-info`` written as pip
writes it) that only the subprocesses see: the shared venv is never touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN_METHOD = '''
"""Scale every encoder's gradient by one factor (a plug-in's toy method)."""
from pydantic import Field

from mmbalance.training.data import StrictModel
from mmbalance.training.method import Method


class ScaleParams(StrictModel):
    scale: float = Field(0.5, gt=0)


class ScaledGradients(Method):
    name = "scaled_grad"
    reference = "plug-in test method (tests/test_plugins.py)"
    min_modalities = 1
    Params = ScaleParams

    def after_backward(self, model, out, batch, ctx):
        for m in model.encoders:
            for p in model.encoders[m].parameters():
                if p.grad is not None:
                    p.grad.mul_(self.p.scale)
'''

PLUGIN_DATASET = '''
"""The synthetic generator under another name (a plug-in's toy dataset)."""
from mmbalance.datasets.synthetic import Synthetic


class PluginSynthetic(Synthetic):
    name = "plugin_synthetic"
    description = "synthetic data from a plug-in package"
    needs_files = False
'''

ENTRY_POINTS = """[mmbalance.methods]
scaled_grad = mmb_plugin.method:ScaledGradients

[mmbalance.datasets]
plugin_synthetic = mmb_plugin.dataset:PluginSynthetic
"""

SUITE = """name: plugin
seeds: [0]
base: {epochs: 2, batch_size: 32, probe_every: 0, dataset_params: {n_train: 96, n_valid: 48, n_test: 48}}
datasets:
  - {dataset: plugin_synthetic}
methods:
  - {method: joint}
  - {method: scaled_grad, method_params: {scale: [0.5, 0.25]}}
"""


def install_plugin(site: Path) -> None:
    """What ``pip install --target site`` leaves for a wheel with these entry points."""
    pkg = site / "mmb_plugin"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "method.py").write_text(PLUGIN_METHOD)
    (pkg / "dataset.py").write_text(PLUGIN_DATASET)
    info = site / "mmb_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mmb-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    (info / "top_level.txt").write_text("mmb_plugin\n")


def mmbalance(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "PYTHONPATH": path, "COLUMNS": "200", "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mmbalance.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


@pytest.fixture
def site(tmp_path) -> Path:
    install_plugin(tmp_path / "site")
    return tmp_path / "site"


def test_a_plugin_method_and_dataset_are_listed_swept_and_reported(site, tmp_path):
    listed = mmbalance(site, tmp_path, "methods")
    assert (
        listed.returncode == 0 and "scaled_grad" in listed.stdout and "plug-in test method" in listed.stdout
    )
    detail = mmbalance(site, tmp_path, "methods", "scaled_grad")
    assert "scale" in detail.stdout and "0.5" in detail.stdout, detail.stdout + detail.stderr
    assert "plugin_synthetic" in mmbalance(site, tmp_path, "datasets").stdout

    (tmp_path / "plugin.yaml").write_text(SUITE)
    swept = mmbalance(site, tmp_path, "sweep", "plugin.yaml", "--results", "r", "--quiet")
    assert swept.returncode == 0, swept.stdout + swept.stderr
    assert "3 runs done or reused" in swept.stdout and "scaled_grad(scale=0.25)" in swept.stdout

    reported = mmbalance(site, tmp_path, "report", "r", "--suite", "plugin.yaml", "--no-figures")
    assert reported.returncode == 0, reported.stdout + reported.stderr
    table = next((tmp_path / "r" / "tables").glob("plugin*.md")).read_text()
    assert "scaled_grad" in table and "joint" in table, table

    # The scaled gradients trained another model than joint's: the plug-in's hook ran.
    sys.path.insert(0, str(site))
    try:
        from mmbalance.reporting.results import load

        runs = load(tmp_path / "r")
    finally:
        sys.path.remove(str(site))
    assert set(runs["dataset"]) == {"plugin_synthetic"} and len(runs) == 3
    assert runs["loss"].nunique() == 3, runs[["label", "loss"]]


def test_a_plugin_may_not_take_a_builtin_name(site, tmp_path):
    info = site / "mmb_plugin-0.1.dist-info" / "entry_points.txt"
    info.write_text("[mmbalance.methods]\njoint = mmb_plugin.method:ScaledGradients\n")
    done = mmbalance(site, tmp_path, "methods")
    assert done.returncode != 0 and "'joint' is a built-in method" in done.stderr
