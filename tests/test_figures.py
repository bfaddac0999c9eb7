"""Every figure kind is written (PNG + PDF, stable names) from a tiny record set."""

from __future__ import annotations

import numpy as np
import pytest
from _report_records import make_run
from conftest import small_spec

from mmbalance.common.records import RunDir
from mmbalance.reporting.figures import (
    CURVE_KINDS,
    balancing_terms,
    curve_frame,
    param_bars,
    suite_figures,
    training_curves,
    tsne_gradients,
)
from mmbalance.reporting.report import load_runs


def _written(paths, stem):
    assert [p.name for p in paths] == [f"{stem}.png", f"{stem}.pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"


@pytest.mark.parametrize("kind", list(CURVE_KINDS))
def test_training_curves_side_by_side(tmp_path, kind):
    joint = [make_run(tmp_path / "r", "joint", s) for s in (0, 1)]
    cggm = [make_run(tmp_path / "r", "cggm", s, diag=True) for s in (0, 1)]
    paths = training_curves({"joint": joint, "cggm": cggm}, kind, tmp_path / "f" / kind, title="synthetic")
    _written(paths, kind)


def test_curve_frame_reads_probe_epochs_and_smoothed_steps(tmp_path):
    rd = make_run(tmp_path, "joint", 0, epochs=3)
    probe = curve_frame([rd], "probe_acc")
    # metrics.jsonl: valid probe of m1 (i = 1) is 30 + 2 * epoch, plotted at epoch + 1
    assert probe[probe["modality"] == "m1"].set_index("x")["value"].to_dict() == {1: 30.0, 2: 32.0, 3: 34.0}
    cos = curve_frame([rd], "grad_cos")
    m0 = cos[cos["modality"] == "m0"]["value"].tolist()
    # curves.csv: grad_cos/m0 = step / 100 at steps 0, 10, 20, ...; rolling mean over 5 logged steps
    assert m0[:3] == pytest.approx([0.0, 0.05, 0.1]) and m0[5] == pytest.approx(
        np.mean([0.1, 0.2, 0.3, 0.4, 0.5])
    )


def test_balancing_terms_one_panel_per_term(tmp_path):
    runs = [make_run(tmp_path / "r", "cggm", s, diag=True) for s in (0, 1)]
    _written(balancing_terms(runs, tmp_path / "balancing"), "balancing")
    assert (
        balancing_terms([make_run(tmp_path / "r", "joint", 0)], tmp_path / "none") == []
    )  # no diag/ columns


def test_param_bars_against_joint(tmp_path):
    for s in (0, 1):
        make_run(tmp_path / "r", "joint", s, test={"accuracy": 70.0 + s})
        for rho, acc in ((0.5, 68.0), (1.0, 72.0), (1.5, 71.0)):
            make_run(
                tmp_path / "r", "cggm", s, method_params={"rho": rho, "lam": 0.1}, test={"accuracy": acc + s}
            )
    runs = load_runs(tmp_path / "r")
    _written(param_bars(runs, "cggm", "rho", "accuracy", tmp_path / "bars"), "bars")


def test_tsne_of_gradient_samples(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {f"{kind}/{m}": rng.normal(size=(12, 16)) + shift for m in ("m0", "m1")
              for kind, shift in (("fused", 0.0), ("classifier", 3.0))}  # fmt: skip
    np.savez(tmp_path / "grads.npz", **arrays)
    _written(tsne_gradients(tmp_path / "grads.npz", tmp_path / "tsne"), "tsne")


def test_suite_figures_from_real_runs(tmp_path):
    """Records written by the runner itself (two 1-second runs) give every figure, with stable names."""
    from mmbalance.training.runner import train

    results = tmp_path / "results"
    for method, params in (("joint", {}), ("ogm_ge", {"alpha": 0.5}), ("ogm_ge", {"alpha": 1.0})):
        train(small_spec(method=method, method_params=params), results, device="cpu", progress=False)
    rd = RunDir(next(p for p in (results / "runs").iterdir()))
    rng = np.random.default_rng(0)
    np.savez(rd.file("grads.npz"), **{f"fused/{m}": rng.normal(size=(8, 4)) for m in ("m0", "m1", "m2")})
    method = rd.spec()["method"]
    paths = suite_figures(load_runs(results), tmp_path / "figures", "mini")
    names = {p.name for p in paths if p.suffix == ".png"}
    prefix = "mini-synthetic-classification"
    assert {f"{prefix}-{k}.png" for k in CURVE_KINDS} <= names
    assert f"{prefix}-balancing-ogm_ge.png" in names  # OGM-GE logs ratio/ and coeff/ per modality
    assert f"{prefix}-ablation-ogm_ge-alpha.png" in names
    assert any(n.startswith(f"{prefix}-tsne-{method}-seed0") for n in names)
    assert len(paths) == 2 * len(names)  # each PNG has its PDF
    # Drawn in two processes: the same files, in the same order, and the same PDFs (no dates in them).
    parallel = suite_figures(load_runs(results), tmp_path / "figures-2", "mini", jobs=2)
    assert [p.name for p in parallel] == [p.name for p in paths]
    pdfs = [(a, b) for a, b in zip(paths, parallel, strict=True) if a.suffix == ".pdf"]
    assert all(a.read_bytes() == b.read_bytes() for a, b in pdfs)
