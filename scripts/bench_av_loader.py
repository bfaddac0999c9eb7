"""Is data loading the bottleneck on CREMA-D / Kinetics-Sounds / AVE? Loader clips/s against the paper model's
training step, both as CPU time of this process (``time.process_time``: other users of a shared CPU do not
count).

``python scripts/bench_av_loader.py [--batch-size 16] [--clips 64] [--steps 3] [--threads 1]``

Writes real-size files in each released layout to a temporary folder -- CREMA-D: 2.5 s 16 kHz WAVs and
480x360 JPEG frames (the spectrogram is computed per item, as OGM-GE's loader does); Kinetics-Sounds:
(1024, 128) float32 fbank ``.npy`` and 340x256 frames; AVE: pickled (257, 1004) float32 spectrograms and
340x256 frames -- and measures:

- loader: clips per CPU-second of the adapter's train split through a ``DataLoader`` without workers
  (decode, random-resized crop to 224, normalise), with the presets' frames per clip (1 / 3 / 4);
- step: clips per CPU-second of one training step (forward, CE, backward, SGD step) of the OGM-GE
  ResNet-18 late-fusion model on batches of those shapes.

The ratio loader/step above 1 means one loader process keeps up with the model on this CPU; the number of
DataLoader workers a GPU run needs is roughly (GPU step rate) / (loader rate).
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mmbalance.datasets.ave import Ave, AveParams
from mmbalance.datasets.cremad import Cremad, CremadParams
from mmbalance.datasets.kinetics_sounds import KineticsSounds, KineticsSoundsParams
from mmbalance.fixtures._media import tone, write_wav
from mmbalance.models.resnet_av import ResNetAVParams, build_resnet_av
from mmbalance.training.data import collate


def frames(folder: Path, count: int, size: tuple[int, int], rng: np.random.Generator) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        pixels = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"frame_{k + 1:05d}.jpg", quality=90)


def write_real_size(root: Path, clips: int) -> None:
    rng = np.random.default_rng(0)
    c, k, a = root / "cremad", root / "kinetics_sounds", root / "ave"
    for d in (c, k / "train_spec", a / "Audio-1004-SE"):
        d.mkdir(parents=True, exist_ok=True)
    cremad_rows, ks_rows, ave_rows = [], [], []
    for i in range(clips):
        name = f"{1001 + i}_IEO_NEU_XX"
        write_wav(c / "AudioWAV" / f"{name}.wav", tone(i % 6, 2.5))
        frames(c / "Image-01-FPS" / name, 3, (480, 360), rng)
        cremad_rows.append(f"{name},NEU")
        np.save(k / "train_spec" / f"ks{i}.npy", rng.normal(size=(1024, 128)).astype(np.float32))
        frames(k / "train_frames" / f"ks{i}", 10, (340, 256), rng)
        ks_rows.append(f"ks{i},10,{i % 31}")
        (a / "Audio-1004-SE" / f"v{i}.pkl").write_bytes(
            pickle.dumps(rng.normal(size=(257, 1004)).astype(np.float32))
        )
        frames(a / "Image-01-FPS-SE" / f"v{i}", 10, (340, 256), rng)
        ave_rows.append(f"Church bell&v{i}&good&0&10")
    for name in ("train.csv", "test.csv"):
        (c / name).write_text("\n".join(cremad_rows) + "\n")
    (k / "test_spec").mkdir()
    (k / "test_frames").mkdir()
    for name in ("my_train.txt", "my_test.txt"):
        (k / name).write_text("\n".join(ks_rows) + "\n")
    for name in ("trainSet.txt", "valSet.txt", "testSet.txt"):
        (a / name).write_text("\n".join(ave_rows) + "\n")


def loader_rate(ds, batch_size: int) -> tuple[float, dict[str, tuple[int, ...]]]:
    t0 = time.process_time()
    n, shapes = 0, {}
    for batch in DataLoader(ds, batch_size=batch_size, shuffle=True, collate_fn=collate):
        n += len(batch)
        shapes = {m: tuple(x.shape[1:]) for m, x in batch.inputs.items()}
    return n / (time.process_time() - t0), shapes


def step_rate(shapes: dict[str, tuple[int, ...]], classes: int, batch_size: int, steps: int) -> float:
    torch.manual_seed(0)
    model = build_resnet_av(
        {"audio": 1, "visual": 3}, {"audio": False, "visual": True}, classes, ResNetAVParams()
    )
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    x = {m: torch.randn(batch_size, *s) for m, s in shapes.items()}
    y = torch.randint(0, classes, (batch_size,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x).pred, y).backward()
        opt.step()

    step()  # warm-up
    t0 = time.process_time()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.process_time() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--clips", type=int, default=64, help="clips written per dataset and read once")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_real_size(root, args.clips)
        datasets = {
            "CREMA-D (WAV -> STFT per item, 1 frame)": Cremad(
                CremadParams(protocol="test_as_valid"), root / "cremad"
            ),
            "Kinetics-Sounds (fbank .npy, 3 frames)": KineticsSounds(
                KineticsSoundsParams(protocol="test_as_valid"), root / "kinetics_sounds"
            ),
            "AVE (spectrogram .pkl, 4 frames)": Ave(AveParams(), root / "ave"),
        }
        print(f"CPU time, {args.threads} torch thread(s), batch {args.batch_size}, {args.clips} clips")
        print(f"{'dataset':45s} {'loader clips/s':>15s} {'step clips/s':>13s} {'loader/step':>12s}")
        for label, adapter in datasets.items():
            load, shapes = loader_rate(adapter.split("train"), args.batch_size)
            step = step_rate(shapes, adapter.task.num_classes, args.batch_size, args.steps)
            print(f"{label:45s} {load:15.1f} {step:13.2f} {load / step:12.1f}   shapes {shapes}")


if __name__ == "__main__":
    main()
