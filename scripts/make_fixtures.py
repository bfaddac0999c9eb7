"""Write tiny files in each real dataset's exact schema: ``python scripts/make_fixtures.py OUT_DIR``.

Each ``mmbalance.fixtures.<dataset>`` module writes one dataset under ``OUT_DIR/<dataset>/``; point
``--data-root OUT_DIR`` (or ``$MMBALANCE_DATA``) at the result to run any adapter on it.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from pathlib import Path

import mmbalance.fixtures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    for info in pkgutil.iter_modules(mmbalance.fixtures.__path__):
        if info.name.startswith("_"):  # shared helpers, no dataset of their own
            continue
        module = importlib.import_module(f"mmbalance.fixtures.{info.name}")
        print(f"{info.name}: {module.write(args.out_dir)}")


if __name__ == "__main__":
    main()
