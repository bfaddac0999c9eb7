"""CREMA-D: 7,442 acted clips, 6 emotions, audio + face video, in the layout of the OGM-GE code.

Files under the dataset root (``$MMBALANCE_DATA/cremad`` or ``--data-root``), as GeWu-Lab/OGM-GE_CVPR2022
@ 343dc1d reads them (``dataset/CramedDataset.py`` l.29-46):

- ``train.csv`` / ``test.csv``: rows ``<clip>,<EMO>`` without a header, e.g. ``1088_IOM_NEU_XX,NEU``
  (the repository's ``data/CREMAD/*.csv``: 6,698 / 744 rows);
- ``AudioWAV/<clip>.wav``: the release's 16 kHz WAVs (CheyneyComputerScience/CREMA-D);
- ``Image-01-FPS/<clip>/*.jpg``: frames at 1 fps, written from ``VideoFlash/<clip>.flv`` by the
  repository's ``data/CREMAD/video_preprocessing.py`` (``Image-{fps:02d}-FPS``, ``dataset_params.fps``).

BalanceBenchmark's layout (@ 4c1482f ``balancemm/datasets/cremad_dataset.py`` l.35, l.46): the same lists,
``<audio_path>/<clip>.pt`` tensors it ``torch.load``s as the clip's fbank (``audio_format: pt``,
``audio_dir``; read with ``weights_only``), frames in ``<visual_path>/<clip>/`` (``frames_dir``). The
list names are ``list_file`` (``{split}.csv``).

Classes in OGM-GE's order NEU, HAP, SAD, FEA, DIS, ANG (l.24). Audio is computed from the WAV at load
time as the released code does (``mmbalance.training.audio.ogm_ge_spectrogram``: 22050 Hz, 3 s, STFT 512 / hop
353, ``log(|X| + 1e-7)``; (1, 257, 188)). Frames: ``num_frames`` per clip (OGM-GE: ``--fps 1`` frame;
PMR's runs: 3), one per equal segment (see ``_av``). Where this differs from the released loader: it
draws ``np.random.choice`` frame indices but then reads the first ``fps`` entries of an unsorted
``os.listdir`` (l.83-88); here frames are sorted by name and drawn per segment, with fixed middle frames
for evaluation. Validation: 10% of each train class (the release has train and test only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from torch import Tensor

from mmbalance.common.registry import DATASETS
from mmbalance.datasets._av import AVAdapter, AVParams, read_list
from mmbalance.training.data import DataError

__all__ = ["Cremad", "CremadParams", "CLASSES"]

SECONDS = 3  # CramedDataset.py l.59: the clip is tiled / cut to 3 s
CLASSES = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")  # CramedDataset.py l.24 class_dict order


class CremadParams(AVParams):
    fps: int = Field(1, ge=1)  # which frame folder: Image-{fps:02d}-FPS
    stft_pad: Literal["reflect", "constant"] = "reflect"  # librosa < 0.10 centre padding (the 2022 code)
    audio_format: Literal["wav", "pt"] = "wav"  # pt: BalanceBenchmark's stored fbank tensors
    audio_dir: str = "AudioWAV"  # <clip>.wav or <clip>.pt
    frames_dir: str | None = None  # default Image-{fps:02d}-FPS
    list_file: str = "{split}.csv"  # {split}: train, test


@DATASETS.register
class Cremad(AVAdapter):
    name = "cremad"
    description = "CREMA-D emotions (audio spectrogram + face frames), OGM-GE layout"
    access = (  # where to get it, its licence or access terms (`datasets`, missing-data message)
        "CREMA-D (Cao et al. 2014): github.com/CheyneyComputerScience/CREMA-D, Open Database License 1.0; "
        "frames per OGM-GE's preprocessing"
    )
    Params = CremadParams
    class_names = CLASSES

    @property
    def frames_root(self) -> str:
        return self.params.frames_dir or f"Image-{self.params.fps:02d}-FPS"

    def _list(self, raw: str) -> Path:
        return self.root / self.params.list_file.format(split=raw)

    def expected_files(self) -> list[Path]:
        lists = [self._list(s).relative_to(self.root) for s in ("train", "test")]
        return [*lists, Path(self.params.audio_dir), Path(self.frames_root)]

    def layout_help(self) -> str:
        return (
            f"{self.params.list_file.format(split='train')} + {self.params.list_file.format(split='test')} (rows "
            f"'<clip>,<EMO>', OGM-GE's data/CREMAD), {self.params.audio_dir}/<clip>.{self.params.audio_format}, "
            f"{self.frames_root}/<clip>/*.jpg (OGM-GE's data/CREMAD/video_preprocessing.py)"
        )

    def read_rows(self, raw: str) -> list[tuple[str, int]]:
        index = {c: i for i, c in enumerate(CLASSES)}

        def parse(f: list[str]) -> tuple[str, int]:
            if f[1] not in index:
                raise ValueError(f"unknown emotion {f[1]!r}, expected one of {', '.join(CLASSES)}")
            return f[0], index[f[1]]

        return read_list(self._list(raw), parse, ",", "<clip>,<EMO>")

    def audio_file(self, clip_id: str, raw: str) -> Path:
        return self.root / self.params.audio_dir / f"{clip_id}.{self.params.audio_format}"

    def frame_dir(self, clip_id: str, raw: str) -> Path:
        return self.root / self.frames_root / clip_id

    def read_audio(self, path: Path) -> Tensor:
        if self.params.audio_format == "pt":
            return read_tensor_file(path)
        from mmbalance.training.audio import ogm_ge_spectrogram, read_wav

        # 3 s are used (shorter clips are tiled); one more second covers the resampling filter's reach
        samples, rate = read_wav(path, max_seconds=SECONDS + 1)
        return ogm_ge_spectrogram(samples, rate, pad_mode=self.params.stft_pad)


def read_tensor_file(path: Path) -> Tensor:
    """A ``torch.save``d 2-D tensor, as BalanceBenchmark's ``torch.load(audio_path + clip + '.pt')``, with
    ``weights_only`` (no code runs). torch checks each storage's claimed size against its record in the
    file before allocating, so a hostile header fails here in one line."""
    import pickle
    import warnings
    import zipfile

    import torch

    try:
        with (
            warnings.catch_warnings()
        ):  # e.g. "Detected pickle protocol 4": the file is refused or read anyway
            warnings.simplefilter("ignore", UserWarning)
            spec = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, KeyError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: not a readable torch tensor file ({reason[:300]})") from None
    if not isinstance(spec, torch.Tensor) or not spec.is_floating_point():
        got = spec.dtype if isinstance(spec, torch.Tensor) else type(spec).__name__
        raise DataError(f"{path}: expected a float tensor (F, T), got {got}")
    return spec
