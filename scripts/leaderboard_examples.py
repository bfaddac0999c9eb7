"""Write the leaderboard's example entries: one per method on the default classification scenario.

    python scripts/leaderboard_examples.py [--results results]

Reads the finished runs of `make bench-all` that belong to its suite (``benchmarks/all.yaml``; ad-hoc runs
in the same folder are left out) on synthetic classification, scenario ``lazy`` at imbalance degree 1, under the tuned protocol, groups them by method and
method params (all seeds of one spec), and calls ``mmbalance submit`` for each group, writing
``results/leaderboard/entries/synthetic-classification-<method>.json``. Unimodal runs (one entry per
modality would be a different model each) are left out; the unimodal ensemble is a reference, kept (the
page shows it apart, never ranked).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from mmbalance.reporting.report import select_suite
from mmbalance.reporting.results import load
from mmbalance.scaleout.sweep import load_suite

SUITE = Path(__file__).resolve().parent.parent / "benchmarks" / "all.yaml"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=Path("results"))
    args = ap.parse_args()
    runs = select_suite(load(args.results), load_suite(SUITE), args.results)
    runs = runs[(runs["status"] == "done") & (runs["dataset"] == "synthetic")]
    runs = runs[  # the lazy scenario itself (imbalance degree 1), as the suite's protocol ran it
        (runs["dataset_params.task"] == "classification") & (runs["dataset_params.scenario"] == "lazy")
        & (runs["dataset_params.imbalance"] == 1.0) & (runs["spec"].map(lambda s: bool(s.get("tuned"))))
    ]  # fmt: skip
    runs = runs[runs["method"] != "unimodal"]
    out_dir = args.results / "leaderboard" / "entries"
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("synthetic-classification-*.json"):
        old.unlink()
    failed = 0
    for (method, _), group in runs.groupby(
        ["method", runs["spec"].map(lambda s: json.dumps(s["method_params"], sort_keys=True))]
    ):
        out = out_dir / f"synthetic-classification-{method}.json"
        cmd = [str(Path(sys.executable).parent / "mmbalance"), "submit", *group["path"].astype(str), "--name", "mmbalance maintainers",
               "--out", str(out)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        print(f"{method}: {'ok' if done.returncode == 0 else done.stderr.strip()}")
        failed += done.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
