"""Open the built leaderboard page in headless Chromium: take a screenshot and check that sorting works.

Without ``--results`` it first makes a small demo board in a temporary folder: two tracks on a small
synthetic set (SGD at lr 0.05 and at lr 0.01), three seeds each of joint training, CGGM and PMR in the
first and of joint training and CGGM in the second, and the unimodal ensemble as a reference (shown
apart, never ranked), with a fingerprint registry for that set.
Sorting is checked through the page's own script: the page is loaded with ``#sort=t0.<col>.asc`` and
``.desc`` (the address a header click writes); the row order of Chromium's DOM dump must follow the
cells' values and the ``#`` column the ranks of that order. Needs ``chromium`` (Debian: ``apt-get
install chromium``).

Usage::

    .venv/bin/python scripts/screenshot_leaderboard.py --out /tmp/shot             # demo board
    .venv/bin/python scripts/screenshot_leaderboard.py --results results --out /tmp/shot
"""

from __future__ import annotations

import argparse
import itertools
import math
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import yaml

from mmbalance.leaderboard import leaderboard as lb
from mmbalance.leaderboard.leaderboard_page import build

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]  # fmt: skip


def demo_board(root: Path) -> tuple[Path, Path]:
    """A results folder with two entries made from real small runs, and its fingerprint registry."""
    import torch

    from mmbalance.common.spec import validate_spec
    from mmbalance.training.runner import data_fingerprint, make_adapter, train

    torch.set_num_threads(1)
    base = {"dataset_params": {"n_train": 256, "n_valid": 128, "n_test": 128}, "epochs": 3, "batch_size": 32,
            "optim": {"lr": 0.05}}  # fmt: skip
    results = root / "results"
    slow = {"optim": {"lr": 0.01}}  # another track: never ranked beside the lr 0.05 entries
    variants = {
        "joint": {"method": "joint"},
        "cggm": {"method": "cggm"},
        "pmr": {"method": "pmr"},
        "ensemble": {"method": "unimodal_ensemble"},
        "joint-lr0.01": {"method": "joint", **slow},
        "cggm-lr0.01": {"method": "cggm", **slow},
    }
    spec = validate_spec(base)
    fingerprints = root / "fingerprints.yaml"
    split = {"dataset": "synthetic", "config": "synthetic classification (demo: 256 train samples)",
             "task": "classification", "params_hash": lb.params_hash(spec.dataset_params),
             "fingerprint": data_fingerprint(make_adapter(spec))}  # fmt: skip
    fingerprints.write_text(yaml.safe_dump({"version": 1, "splits": [split]}))
    for name, fields in variants.items():
        paths = [
            train(validate_spec({**base, **fields, "seed": s}), results, progress=False).path
            for s in range(3)
        ]
        out = results / "leaderboard" / "entries" / f"{name}.json"
        lb.submit(paths, "mmbalance demo", out, url="https://example.org/paper", fingerprints=fingerprints)
    return results, fingerprints


class Rows(HTMLParser):
    """``data-value`` of column ``col`` and the text of the ``#`` column of each body row of table
    ``table_id``, in DOM order."""

    def __init__(self, table_id: str, col: int) -> None:
        super().__init__()
        self.table_id, self.col = table_id, col
        self.inside, self.in_body, self.cell, self.values, self.ranks = False, False, -1, [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.inside = a.get("id") == self.table_id
        elif self.inside and tag == "tbody":
            self.in_body = True
        elif self.in_body and tag == "tr":
            self.cell = -1
        elif self.in_body and tag == "td":
            self.cell += 1
            if self.cell == self.col:
                self.values.append(float(a.get("data-value", "nan")))

    def handle_data(self, data):
        if self.in_body and self.cell == 0 and data.strip():
            self.ranks.append(data.strip())

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = self.in_body = False


def chromium(args: list[str], profile: Path) -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        raise SystemExit("chromium not found (Debian: apt-get install chromium)")
    cmd = [exe, *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=None, help="results folder (default: a demo board)")
    parser.add_argument("--fingerprints", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True, help="folder for the screenshots (PNG)")
    parser.add_argument("--column", type=int, default=3, help="column to sort (3: the first metric)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results, fingerprints = (args.results, args.fingerprints) if args.results else demo_board(tmp)
        built = build(results, fingerprints=fingerprints)
        url = built.html.resolve().as_uri()
        shot = args.out / "leaderboard.png"
        sorted_shot = args.out / "leaderboard-sorted.png"
        chromium([f"--screenshot={shot}", "--window-size=1600,2300", url], tmp / "profile")
        col = args.column
        chromium(
            [f"--screenshot={sorted_shot}", "--window-size=1600,2300", f"{url}#sort=t0.{col}.asc"],
            tmp / "profile",
        )
        print(f"{len(built.entries)} entries; screenshots {shot} (ranked), {sorted_shot} (column {col} asc)")
        ok = True
        for direction in ("asc", "desc"):
            dump = ["--virtual-time-budget=2000", "--dump-dom", f"{url}#sort=t0.{col}.{direction}"]
            dom = chromium(dump, tmp / "profile")
            rows = Rows("t0", col)
            rows.feed(dom)
            values = [v for v in rows.values if not math.isnan(v)]

            # As the page: means equal but for summation order (the last bits) are equal.
            def same(w: float, v: float) -> bool:
                return math.isclose(w, v, rel_tol=1e-9, abs_tol=1e-9)

            sign = 1 if direction == "asc" else -1
            in_order = all(same(a, b) or sign * a < sign * b for a, b in itertools.pairwise(values))
            ranks = [str(1 + sum(sign * w < sign * v and not same(w, v) for w in values)) for v in values]
            sorted_ok = len(values) >= 2 and in_order and 'aria-sort="' in dom
            ranks_ok = rows.ranks[: len(values)] == ranks
            ok &= sorted_ok and ranks_ok
            print(
                f"sort column {col} {direction}: {values} -> {'ok' if sorted_ok else 'NOT SORTED'}; "
                f"ranks {rows.ranks} -> {'follow the sort' if ranks_ok else 'DO NOT FOLLOW'}"
            )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
