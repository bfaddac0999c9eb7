"""Cache UPMC-Food101 BERT per-token and ViT per-patch features to h5 (the ``food101`` features mode).

Real weights (download them once; nothing is downloaded unless --allow-download is given)::

    hf download bert-base-uncased && hf download google/vit-base-patch16-224
    python scripts/extract_food101_features.py data/food101 \\
        --text-model bert-base-uncased --image-model google/vit-base-patch16-224 --device cuda

This writes ``data/food101/features_<layout>.h5`` (the name the adapter reads by default): for
``train`` and ``test``, ``text`` (N, 50, 768) and ``image`` (N, 197, 768) in float16, ``text_mask``,
``ids`` and ``labels``. An interrupted run resumes from ``<out>.partial``. Local folders work the same
way (``--text-model /models/bert``); the tests use tiny random BERT/ViT folders from
``mmbalance.fixtures.food101.write_tiny_encoders``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mmbalance.datasets.food101 import detect_layout, extract_features
from mmbalance.training.data import DataError


def download(loader, name: str) -> None:
    """Fill the local cache with ``name``; no network or an unknown name is one ``DataError``."""
    try:
        loader.from_pretrained(name)
    except Exception as e:  # transformers raises OSError, the HTTP client its own errors
        first = next((line for line in str(e).splitlines() if line.strip()), "")[:200]
        raise DataError(
            f"cannot download {name!r} ({type(e).__name__}: {first}); without network, fetch it once "
            f"elsewhere (hf download {name}) and pass the local folder, or its cached name without "
            "--allow-download"
        ) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", type=Path, help="the food101 dataset folder")
    parser.add_argument("--layout", choices=["auto", "json", "texts_txt", "titles_csv"], default="auto")
    parser.add_argument("--text-model", default="bert-base-uncased", help="BERT folder or hub name")
    parser.add_argument("--image-model", default="google/vit-base-patch16-224", help="ViT folder or hub name")
    parser.add_argument("--out", type=Path, help="default: ROOT/features_<layout>.h5")
    parser.add_argument("--max-text-length", type=int, default=50, help="BERT tokens (CGGM: 50)")
    parser.add_argument("--txt-text", choices=["ingredients", "full"], default="ingredients")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--allow-download", action="store_true", help="let transformers fetch missing weights"
    )
    args = parser.parse_args(argv)
    try:
        layout = detect_layout(args.root) if args.layout == "auto" else args.layout
        out = args.out or args.root / f"features_{layout}.h5"
        if args.allow_download:
            from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

            for name, loaders in ((args.text_model, (AutoTokenizer, AutoModel)),
                                  (args.image_model, (AutoImageProcessor, AutoModel))):  # fmt: skip
                for loader in loaders:
                    download(loader, name)
        elif "HF_HUB_OFFLINE" not in os.environ:
            os.environ["HF_HUB_OFFLINE"] = "1"
        extract_features(args.root, layout, args.text_model, args.image_model, out, args.max_text_length,
                         args.txt_text, args.batch_size, args.device)  # fmt: skip
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"features -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
