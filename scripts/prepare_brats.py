"""Convert raw BraTS 2021 case folders to the per-volume h5 files and split file the ``brats`` adapter reads.

    python scripts/prepare_brats.py RAW_DIR OUT_DIR [--valid-fraction 0.1 --test-fraction 0.2 --seed 0]

RAW_DIR holds ``BraTS2021_XXXXX/BraTS2021_XXXXX_{flair,t1,t1ce,t2,seg}.nii.gz`` (the RSNA-ASNR-MICCAI
training release); OUT_DIR gets ``h5/BraTS2021_XXXXX.h5`` (``image`` (4, H, W, D) flair, t1ce, t1, t2,
z-scored inside the brain; ``label`` (H, W, D) {0, 1, 2, 4}) and ``splits.json``. Each h5 file is written
atomically, so an interrupted conversion resumes where it stopped. Then train with
``--data-root`` pointing at OUT_DIR's parent folder (OUT_DIR named ``brats``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmbalance.datasets.brats import convert_cases
from mmbalance.training.data import DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("raw_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--valid-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the deterministic case shuffle")
    parser.add_argument("--compression", choices=["gzip", "lzf", "none"], default="gzip",
                        help="h5 compression; none reads slices ~30x faster for 143 MB a volume")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        splits = convert_cases(
            args.raw_dir,
            args.out_dir,
            args.valid_fraction,
            args.test_fraction,
            args.seed,
            progress=True,
            compression=None if args.compression == "none" else args.compression,
        )
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(", ".join(f"{k}: {len(v)} cases" for k, v in splits.items()), f"-> {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
