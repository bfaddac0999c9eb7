"""Hand-built run records (the files ``runner.train`` writes), for the report and figure tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from mmbalance.common.records import RunDir, rows_to_csv
from mmbalance.reporting.report import config_key

MODALITIES = ("m0", "m1", "m2")


def make_run(
    results: Path,
    method: str = "joint",
    seed: int = 0,
    test: dict[str, float] | None = None,
    valid: dict[str, float] | None = None,
    best_valid: dict[str, float] | None = None,
    probe: dict[str, float] | None = None,
    method_params: dict[str, Any] | None = None,
    modalities: tuple[str, ...] = MODALITIES,
    task: str = "classification",
    dataset: str = "synthetic",
    diag: bool = False,
    epochs: int = 3,
    status: str = "done",
    spec: dict[str, Any] | None = None,
    fingerprint: str | None = None,
    fixture: bool = False,
) -> RunDir:
    """Write one run; metrics default to an accuracy of 50. ``status``: ``done``, ``failed: <reason>``
    (no final.json) or ``running`` (no final.json, no lock: an interrupted run). ``spec``: further spec
    fields (``optim``, ``tuned``, ...); ``fingerprint`` and ``fixture`` go to spec.yaml as the runner's."""
    spec = {"dataset": dataset, "dataset_params": {"task": task}, "method": method,
            "method_params": method_params or {}, "epochs": epochs, "seed": seed, **(spec or {})}  # fmt: skip
    primary = {"classification": "accuracy", "regression": "mae", "segmentation": "dice_mean"}[task]
    test = test or {primary: 50.0}
    valid = valid or dict(test)
    probe = probe if probe is not None else {m: 40.0 + i for i, m in enumerate(modalities)}
    blob = config_key(spec) + (fingerprint or "")
    run_id = f"{method}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}-{seed}"
    rd = RunDir.of(results, run_id)
    rd.path.mkdir(parents=True)
    final = {
        "run_id": run_id, "spec": spec, "task": task, "modalities": list(modalities),
        "selection_metric": primary, "best_epoch": epochs - 1, "epochs": epochs, "protocol": "best valid",
        "test": {**test, "loss": 1.0, "probe": probe}, "valid": {**valid, "loss": 1.0, "probe": probe},
        "best_valid_over_epochs": best_valid or dict(valid),
    }  # fmt: skip
    if status == "done":
        rd.file("final.json").write_text(json.dumps(final))
    origin = {"data_fingerprint": fingerprint} if fingerprint else {}
    origin |= {"data_fixture": True} if fixture else {}
    rd.file("spec.yaml").write_text(yaml.safe_dump({"run_id": run_id, **origin, **spec}))
    history = [{"epoch": e, "valid": {primary: 30.0 + 10 * e, "probe": {m: 30.0 + e * (i + 1) for i, m in
                enumerate(modalities)}}, "test": {}, "seconds": 1.5} for e in range(epochs)]  # fmt: skip
    rd.file("metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    rows = []
    for step in range(0, 30 * epochs, 10):
        row: dict[str, Any] = {"epoch": step // 30, "step": step, "loss": 1.0 / (1 + step)}
        for i, m in enumerate(modalities):
            row |= {f"grad_cos/{m}": 0.1 * i + step / 100, f"grad_norm/{m}": (i + 1) / (1 + step),
                    f"probe_acc/{m}": 30.0 + step / 10}  # fmt: skip
            if diag:
                row |= {f"diag/coeff/{m}": 1.0 - 0.1 * i, f"diag/score/{m}": 0.5 + 0.1 * i}
        if diag:
            row["diag/l_gm"] = 0.3
        rows.append(row)
    rd.file("curves.csv").write_text(rows_to_csv(rows))
    rd.file("status").write_text(status + "\n")
    return rd
