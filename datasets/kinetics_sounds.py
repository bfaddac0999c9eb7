"""Kinetics-Sounds: the audio-visual subset of Kinetics-400 in OGM-GE's lists (31 classes).

Files under the dataset root (``$MMBALANCE_DATA/kinetics_sounds`` or ``--data-root``):

- ``my_train.txt`` / ``my_test.txt``: GeWu-Lab/OGM-GE_CVPR2022 @ 343dc1d ``data/KineticSound/``, rows
  ``<clip>,10,<label>`` (14,799 / 2,597 rows, labels 0-30); BalanceBenchmark's space-separated
  ``<clip> ... <label>`` lists read the same (``KS_dataset.py`` l.32-40 takes the first and last field);
- ``{split}_spec/<clip>.npy``: the (1024, 128) normalised fbank that OGM-GE's
  ``data/KineticSound/process_audio.py`` saves (``save_path = 'train_spec'``, l.9), written from the clips'
  WAVs by ``scripts/prepare_av_audio.py --kind ks`` (``mmbalance.audio.ks_fbank``: Kaldi fbank, 128 mel
  bins, 10 ms shift, cut / padded to 1024 frames, ``(x + 4.503877) / (2 * 5.141276)``);
- ``{split}_frames/<clip>/*.jpg``: the clip's frames at 1 fps (BalanceBenchmark names them
  ``frame_00001.jpg`` ...; any sorted names work). ``dataset_params.audio_dir`` / ``frames_dir`` rename
  both folders (``{split}`` is ``train`` or ``test``).

Class list: **31 classes**, OGM-GE's (``models/basic_model.py`` l.16 ``n_classes = 31``; the lists' labels
are 0-30) and BalanceBenchmark's (``configs/dataset_config.yaml`` l.75). Shared copies with 32-34
classes need ``dataset_params.num_classes``; the lists carry label indices only, so classes are named by
index. Frames: 3 per clip (OGM-GE ``--use_video_frames 3``, BalanceBenchmark ``pick_num = 3``), one per
segment. Validation: 10% of each train class held out (the release has train and test only).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from torch import Tensor

from mmbalance.datasets._av import AVAdapter, AVParams, read_list
from mmbalance.registry import DATASETS

__all__ = ["KineticsSounds", "KineticsSoundsParams"]

NUM_CLASSES = 31


class KineticsSoundsParams(AVParams):
    num_frames: int = Field(3, ge=1)
    num_classes: int = Field(NUM_CLASSES, ge=2)  # 31: OGM-GE's list; other shared copies have 32-34
    audio_dir: str = "{split}_spec"  # fbank .npy per clip (OGM-GE process_audio.py's save_path)
    frames_dir: str = "{split}_frames"  # one folder of frames per clip


@DATASETS.register
class KineticsSounds(AVAdapter):
    name = "kinetics_sounds"
    description = "Kinetics-Sounds (audio fbank + RGB frames), OGM-GE's 31-class lists"
    Params = KineticsSoundsParams

    @property
    def class_names(self) -> tuple[str, ...]:  # the lists carry indices only
        return tuple(f"class_{i:02d}" for i in range(self.params.num_classes))

    def _dir(self, pattern: str, raw: str) -> Path:
        return self.root / pattern.format(split=raw)

    def expected_files(self) -> list[Path]:
        p = self.params
        dirs = [Path(d.format(split=s)) for s in ("train", "test") for d in (p.audio_dir, p.frames_dir)]
        return [Path("my_train.txt"), Path("my_test.txt"), *dirs]

    def layout_help(self) -> str:
        return (
            "my_train.txt + my_test.txt (rows '<clip>,10,<label>', OGM-GE's data/KineticSound), "
            f"{self.params.audio_dir}/<clip>.npy (scripts/prepare_av_audio.py --kind ks), "
            f"{self.params.frames_dir}/<clip>/*.jpg, for split in train, test"
        )

    def read_rows(self, raw: str) -> list[tuple[str, int]]:
        n = self.params.num_classes

        def parse(f: list[str]) -> tuple[str, int]:
            label = int(f[-1])
            if not 0 <= label < n or len(f) < 2:
                raise ValueError(f"label {label} outside 0..{n - 1} (dataset_params.num_classes={n})")
            return f[0], label

        return read_list(self.root / f"my_{raw}.txt", parse, None, "<clip>,10,<label>")

    def audio_file(self, clip_id: str, raw: str) -> Path:
        return self._dir(self.params.audio_dir, raw) / f"{clip_id}.npy"

    def frame_dir(self, clip_id: str, raw: str) -> Path:
        return self._dir(self.params.frames_dir, raw) / clip_id

    def read_audio(self, path: Path) -> Tensor:
        import torch

        from mmbalance.safe_pickle import load_npy

        return torch.from_numpy(load_npy(path).astype("float32"))
