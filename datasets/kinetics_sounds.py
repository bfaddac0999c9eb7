"""Kinetics-Sounds: the audio-visual subset of Kinetics-400 in OGM-GE's lists (31 classes).

Files under the dataset root (``$MMBALANCE_DATA/kinetics_sounds`` or ``--data-root``):

- ``my_train.txt`` / ``my_test.txt``: GeWu-Lab/OGM-GE_CVPR2022 @ 343dc1d ``data/KineticSound/``, rows
  ``<clip>,10,<label>`` (14,799 / 2,597 rows, labels 0-30); BalanceBenchmark's space-separated
  ``<clip> ... <label>`` lists read the same (``KS_dataset.py`` l.32-40 takes the first and last field);
- ``{split}_spec/<clip>.npy``: the (1024, 128) normalised fbank that OGM-GE's
  ``data/KineticSound/process_audio.py`` saves (``save_path = 'train_spec'``, l.9), written from the clips'
  WAVs by ``scripts/prepare_av_audio.py --kind ks`` (``mmbalance.training.audio.ks_fbank``: Kaldi fbank, 128 mel
  bins, 10 ms shift, cut / padded to 1024 frames, ``(x + 4.503877) / (2 * 5.141276)``);
- ``{split}_frames/<clip>/*.jpg``: the clip's frames at 1 fps (BalanceBenchmark names them
  ``frame_00001.jpg`` ...; any sorted names work). ``dataset_params.audio_dir`` / ``frames_dir`` rename
  both folders (``{split}`` is ``train`` or ``test``), ``list_file`` the lists (``my_{split}.txt``).

``layout: audio_spec_pkl`` reads the layout of OGM-GE's own ``AVDataset`` (``dataset/dataset.py`` l.21-52,
l.69-70): ``stat.txt`` (class names, the first field of each line, sorted), lists of ``<class>,<clip>``
rows, ``audio_spec/<clip>.pkl`` (a pickled 2-D spectrogram, through the restricted unpickler) and
``visual/<clip>/*.jpg`` for both splits.

Class list: **31 classes**, OGM-GE's (``models/basic_model.py`` l.16 ``n_classes = 31``; the lists' labels
are 0-30) and BalanceBenchmark's (``configs/dataset_config.yaml`` l.75). Shared copies with 32-34
classes need ``dataset_params.num_classes``; the lists carry label indices only, so classes are named by
index. Frames: 3 per clip (OGM-GE ``--use_video_frames 3``, BalanceBenchmark ``pick_num = 3``), one per
segment. Validation: 10% of each train class held out (the release has train and test only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from torch import Tensor

from mmbalance.common.registry import DATASETS
from mmbalance.datasets._av import AVAdapter, AVParams, read_list, read_pickled_spectrogram

__all__ = ["KineticsSounds", "KineticsSoundsParams"]

NUM_CLASSES = 31


class KineticsSoundsParams(AVParams):
    num_frames: int = Field(3, ge=1)
    num_classes: int = Field(NUM_CLASSES, ge=2)  # spec_npy: 31, OGM-GE's list; other shared copies have 32-34
    layout: Literal["spec_npy", "audio_spec_pkl"] = "spec_npy"  # see the module docstring
    list_file: str = "my_{split}.txt"  # the split lists ({split}: train, test)
    audio_dir: str | None = None  # default: {split}_spec (spec_npy), audio_spec (audio_spec_pkl)
    frames_dir: str | None = None  # default: {split}_frames (spec_npy), visual (audio_spec_pkl)
    stat_file: str = "stat.txt"  # audio_spec_pkl: the class names, first field of each line


DEFAULT_DIRS = {"spec_npy": ("{split}_spec", "{split}_frames"), "audio_spec_pkl": ("audio_spec", "visual")}


@DATASETS.register
class KineticsSounds(AVAdapter):
    name = "kinetics_sounds"
    description = "Kinetics-Sounds (audio fbank + RGB frames), OGM-GE's 31-class lists"
    access = (  # where to get it, its licence or access terms (`datasets`, missing-data message)
        "Kinetics-Sounds: 31 classes of Kinetics-400 (DeepMind; YouTube videos under their owners' terms), "
        "OGM-GE's lists; fetch clips from YouTube"
    )
    Params = KineticsSoundsParams

    @property
    def audio_pattern(self) -> str:
        return self.params.audio_dir or DEFAULT_DIRS[self.params.layout][0]

    @property
    def frames_pattern(self) -> str:
        return self.params.frames_dir or DEFAULT_DIRS[self.params.layout][1]

    @property
    def class_names(self) -> tuple[str, ...]:
        if self.params.layout == "audio_spec_pkl":  # OGM-GE's AVDataset: sorted names of stat.txt
            path = self.root / self.params.stat_file
            if path.is_file():
                return tuple(sorted({r[0] for r in read_list(path, lambda f: (f[0], 0), ",", "<class>")}))
        return tuple(f"class_{i:02d}" for i in range(self.params.num_classes))  # the lists carry indices

    def _dir(self, pattern: str, raw: str) -> Path:
        return self.root / pattern.format(split=raw)

    def _list(self, raw: str) -> Path:
        return self._dir(self.params.list_file, raw)

    def expected_files(self) -> list[Path]:
        lists = [self._list(s).relative_to(self.root) for s in ("train", "test")]
        dirs = {
            Path(d.format(split=s))
            for s in ("train", "test")
            for d in (self.audio_pattern, self.frames_pattern)
        }
        stat = [Path(self.params.stat_file)] if self.params.layout == "audio_spec_pkl" else []
        return [*stat, *lists, *sorted(dirs)]

    def layout_help(self) -> str:
        lists = self.params.list_file
        if self.params.layout == "audio_spec_pkl":
            return (f"{self.params.stat_file} (class names), {lists} (rows '<class>,<clip>', OGM-GE's "
                    f"dataset/dataset.py), {self.audio_pattern}/<clip>.pkl, {self.frames_pattern}/<clip>/*.jpg")  # fmt: skip
        return (
            f"{lists} (rows '<clip>,10,<label>', OGM-GE's data/KineticSound), "
            f"{self.audio_pattern}/<clip>.npy (scripts/prepare_av_audio.py --kind ks), "
            f"{self.frames_pattern}/<clip>/*.jpg, for split in train, test"
        )

    def read_rows(self, raw: str) -> list[tuple[str, int]]:
        if self.params.layout == "audio_spec_pkl":
            index = {c: i for i, c in enumerate(self.class_names)}

            def parse_named(f: list[str]) -> tuple[str, int]:
                if f[0] not in index:
                    raise ValueError(f"class {f[0]!r} is not in {self.params.stat_file}")
                return f[1], index[f[0]]

            return read_list(self._list(raw), parse_named, ",", "<class>,<clip>")
        n = self.params.num_classes

        def parse(f: list[str]) -> tuple[str, int]:
            label = int(f[-1])
            if not 0 <= label < n or len(f) < 2:
                raise ValueError(f"label {label} outside 0..{n - 1} (dataset_params.num_classes={n})")
            return f[0], label

        return read_list(self._list(raw), parse, None, "<clip>,10,<label>")

    def audio_file(self, clip_id: str, raw: str) -> Path:
        suffix = ".pkl" if self.params.layout == "audio_spec_pkl" else ".npy"
        return self._dir(self.audio_pattern, raw) / f"{clip_id}{suffix}"

    def frame_dir(self, clip_id: str, raw: str) -> Path:
        return self._dir(self.frames_pattern, raw) / clip_id

    def read_audio(self, path: Path) -> Tensor:
        import torch

        from mmbalance.training.safe_pickle import load_npy

        if path.suffix == ".pkl":
            return read_pickled_spectrogram(path)
        return torch.from_numpy(load_npy(path).astype("float32"))
