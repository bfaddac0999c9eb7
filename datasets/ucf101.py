"""UCF-101: 13,320 action videos, 101 classes, RGB frames + optical flow (u, v), in BalanceBenchmark's layout.

Files under the dataset root (``$MMBALANCE_DATA/ucf101`` or ``--data-root``), as GeWu-Lab/BalanceBenchmark
@ 4c1482f ``balancemm/datasets/ucf101_dataset.py`` reads them:

- ``classInd.txt``: UCF-101's ``<index> <ClassName>`` lines (``stat_path``, l.45-48; classes sorted, l.56);
- ``trainlist01.txt`` / ``testlist01.txt``: UCF-101's split-1 lists, ``<ClassName>/v_<...>.avi [index]``
  (l.49-55: the class is the part before ``/``, the clip name the file name without extension);
- ``rgb/<clip>/frame_0000{k}.jpg``: RGB frames, k = 1..6 (l.106-118: ``file_num = 6``, 3 picked);
- ``flow_u/<clip>/frame00{k:04d}.jpg`` and ``flow_v/<clip>/...``: the two optical-flow components as
  grayscale JPEGs (l.123-137). Folder names: ``dataset_params.rgb_dir`` / ``flow_u_dir`` / ``flow_v_dir``
  (BalanceBenchmark leaves the paths to its config).

Items: ``visual`` (3, 3, H, W) RGB frames normalised with ImageNet statistics, ``flow`` (2, 3, H, W) u/v
stacked as channels, unnormalised (``a_norm=False``, l.98-99); 3 of each per clip, one per equal segment
(random in training, frames 1, 3, 5 of 6 in evaluation as BalanceBenchmark's ``i*seg + max(seg//2, 1)``
with 1-based names, l.112-132). Training flips the frames horizontally
(l.72-83); where BalanceBenchmark draws a separate flip for u and for v, one flip is drawn per u/v pair here,
and the flow frames are returned channels-first (C, T, H, W) like the RGB clip. Model: a ResNet-18 per
modality (2-channel ``conv1`` for flow, BalanceBenchmark ``resnet18_encoder.py`` l.81-82), late concat.
Validation: 10% of each train class held out (the lists have train and test only).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from pydantic import Field
from torch import Tensor
from torch.utils.data import Dataset

from mmbalance.common.registry import DATASETS
from mmbalance.datasets._av import (
    AVParams,
    holdout,
    ids_labels_fingerprint,
    image_transform,
    load_image,
    pick_frames,
    read_list,
)
from mmbalance.models.base import MultimodalModel
from mmbalance.models.resnet_av import ResNetAVParams, build_resnet_av
from mmbalance.training.data import SPLITS, DataError, DataMissingError, DatasetAdapter, TaskInfo

__all__ = ["Ucf101", "Ucf101Params"]

MODALITIES = ("visual", "flow")
NUM_CLASSES = 101


class Ucf101Params(AVParams):
    num_frames: int = Field(3, ge=1)  # pick_num = 3 for RGB and for flow
    rgb_frames: int = Field(6, ge=1)  # file_num = 6: RGB frames stored per clip
    split_list: int = Field(1, ge=1, le=3)  # UCF-101's official train/test split number
    rgb_dir: str = "rgb"
    flow_u_dir: str = "flow_u"
    flow_v_dir: str = "flow_v"


def pick_ucf_frames(n: int, count: int, train: bool) -> list[int]:
    """0-based indices of ``count`` frames out of ``n``, as BalanceBenchmark picks UCF-101's (l.109-116,
    l.126-132): 1-based frame ``randint(i*seg + 1, i*seg + seg)`` in training (``pick_frames``'s random
    frame per segment), ``i*seg + max(seg // 2, 1)`` in evaluation: frames 1, 3, 5 of 6, one before the
    middle frame the CREMA-D / Kinetics-Sounds loaders take (``seg // 2`` into a 0-based list)."""
    if train:
        return pick_frames(n, count, train=True)
    seg = n // count
    return [i * seg + max(seg // 2, 1) - 1 for i in range(count)]


class Ucf101Split(Dataset):
    def __init__(self, adapter: Ucf101, rows: Sequence[tuple[str, int]], train: bool) -> None:
        p = adapter.params
        self.ids = [r[0] for r in rows]
        self.target = torch.tensor([r[1] for r in rows], dtype=torch.long)
        self.root, self.p, self.train = adapter.root, p, train
        self.rgb_transform = image_transform(train, p.image_size)
        from torchvision import transforms as T

        self.flow_transform = T.Compose([T.Resize((p.image_size, p.image_size)), T.ToTensor()])

    def __len__(self) -> int:
        return len(self.ids)

    def _flow_frames(self, clip: str) -> tuple[Path, Path, int]:
        u, v = self.root / self.p.flow_u_dir / clip, self.root / self.p.flow_v_dir / clip
        n = len([f for f in u.iterdir() if f.suffix.lower() == ".jpg"]) if u.is_dir() else 0
        if n < self.p.num_frames:
            raise DataError(f"{u}: {n} flow frame(s), need {self.p.num_frames}")
        return u, v, n

    def __getitem__(self, i: int) -> tuple[dict[str, Tensor], Tensor, str]:
        clip, p = self.ids[i], self.p
        rgb = [self.root / p.rgb_dir / clip / f"frame_{k + 1:05d}.jpg"
               for k in pick_ucf_frames(p.rgb_frames, p.num_frames, self.train)]  # fmt: skip
        visual = torch.stack([self.rgb_transform(load_image(f)) for f in rgb], dim=1)
        u_dir, v_dir, n = self._flow_frames(clip)
        flow = []
        for k in pick_ucf_frames(n, p.num_frames, self.train):
            name = f"frame{k + 1:06d}.jpg"
            pair = torch.cat([self.flow_transform(load_image(d / name).convert("L")) for d in (u_dir, v_dir)])
            flip = self.train and bool(torch.rand(()) < 0.5)
            flow.append(pair.flip(-1) if flip else pair)
        return {"visual": visual, "flow": torch.stack(flow, dim=1)}, self.target[i], clip


@DATASETS.register
class Ucf101(DatasetAdapter):
    name = "ucf101"
    description = "UCF-101 actions (RGB frames + optical flow u/v), BalanceBenchmark's layout"
    access = (  # where to get it, its licence or access terms (`datasets`, missing-data message)
        "UCF101 (Soomro et al. 2012): crcv.ucf.edu/data/UCF101.php (research use); RGB frames and TV-L1 flow "
        "as BalanceBenchmark extracts them"
    )
    Params = Ucf101Params
    ModelParams = ResNetAVParams

    def __init__(self, params: Ucf101Params, root: Path | None = None) -> None:
        super().__init__(params, root)
        self._rows: dict[str, list[tuple[str, int]]] = {}
        self._splits: dict[str, Ucf101Split] = {}

    def _list(self, raw: str) -> Path:
        return self.root / f"{raw}list{self.params.split_list:02d}.txt"

    @property
    def class_names(self) -> tuple[str, ...]:
        path = self.root / "classInd.txt"
        if not path.is_file():
            return tuple(f"class_{i:03d}" for i in range(NUM_CLASSES))
        rows = read_list(path, lambda f: (f[1], int(f[0])), None, "<index> <ClassName>")
        return tuple(sorted(name for name, _ in rows))  # BalanceBenchmark sorts the names (l.56)

    @property
    def task(self) -> TaskInfo:
        names = self.class_names
        return TaskInfo("classification", MODALITIES, len(names), names)

    def expected_files(self) -> list[Path]:
        p = self.params
        lists = [self._list(r).relative_to(self.root) for r in ("train", "test")]
        return [Path("classInd.txt"), *lists, Path(p.rgb_dir), Path(p.flow_u_dir), Path(p.flow_v_dir)]

    def layout_help(self) -> str:
        p = self.params
        return (
            f"classInd.txt, trainlist0N.txt + testlist0N.txt (UCF-101's split lists), {p.rgb_dir}/<clip>/"
            f"frame_00001.jpg.., {p.flow_u_dir}/<clip>/frame000001.jpg.., {p.flow_v_dir}/<clip>/..."
        )

    def rows(self, raw: str) -> list[tuple[str, int]]:
        if raw not in self._rows:
            index = {c: i for i, c in enumerate(self.class_names)}

            def parse(f: list[str]) -> tuple[str, int]:
                cls, _, file = f[0].partition("/")
                if not file:
                    raise ValueError("no '<ClassName>/' before the clip file")
                if cls not in index:
                    raise ValueError(f"class {cls!r} is not in classInd.txt")
                return file.split(".")[0], index[cls]

            rows = read_list(self._list(raw), parse, None, "<ClassName>/v_<...>.avi [index]")
            p = self.params
            dirs = [
                (r, [self.root / d / r[0] for d in (p.rgb_dir, p.flow_u_dir, p.flow_v_dir)]) for r in rows
            ]
            missing = [d for _, ds in dirs for d in ds if not d.is_dir()]
            if missing and not p.skip_missing:
                raise DataMissingError(f"ucf101: {len(missing)} frame folder(s) of {self._list(raw).name} missing, "
                                       f"e.g. {missing[0]} (dataset_params.skip_missing=true leaves those clips "
                                       "out, as BalanceBenchmark's loader does)")  # fmt: skip
            self._rows[raw] = [r for r, ds in dirs if all(d.is_dir() for d in ds)]
        return self._rows[raw]

    def split(self, name: str) -> Ucf101Split:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid: {', '.join(SPLITS)}")
        if name not in self._splits:
            self.verify()
            p = self.params
            if name == "test" or p.protocol == "test_as_valid":
                rows = self.rows("test" if name != "train" else "train")
            else:
                train, valid = holdout(self.rows("train"), p.valid_fraction, p.split_seed)
                rows = train if name == "train" else valid
            self._splits[name] = Ucf101Split(self, rows, train=name == "train")
        return self._splits[name]

    def reads_items(self) -> bool:
        """Whether items are read from files as they are drawn (so loader workers pay off on a GPU)."""
        return True

    def fingerprint(self, name: str) -> str:
        return ids_labels_fingerprint(self.split(name))

    def build_model(self, model_params: ResNetAVParams, modalities: Sequence[str]) -> MultimodalModel:
        channels = {"visual": 3, "flow": 2}
        return build_resnet_av(
            {m: channels[m] for m in modalities},
            dict.fromkeys(MODALITIES, True),
            self.task.num_classes,
            model_params,
        )
