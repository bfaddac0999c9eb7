"""AVE (Audio-Visual Event): 4,143 ten-second clips, 28 event classes, in the layout of PMR's code.

Files under the dataset root (``$MMBALANCE_DATA/ave`` or ``--data-root``), as fanyunfeng-bit/Modal-Imbalance-PMR
@ 3615e48 reads them (``dataset/AVEDataset.py`` l.27-62):

- ``trainSet.txt`` / ``valSet.txt`` / ``testSet.txt``: PMR's ``data/AVE/`` split (3,339 / 402 / 402 rows
  ``Category&VideoID&Quality&Start&End``, e.g. ``Church bell&c---zaDCTaE&good&0&10``);
- ``Audio-1004-SE/<VideoID>.pkl``: a pickled (257, 1004) float spectrogram per clip, as PMR's
  ``data/CREMAD/audio_preprocessing.py`` writes it (``mmbalance.training.audio.pmr_spectrogram``;
  ``scripts/prepare_av_audio.py --kind ave`` writes it from WAVs);
- ``Image-01-FPS-SE/<VideoID>/*.jpg``: frames at 1 fps of the annotated event (``Image-{fps:02d}-FPS-SE``).

Classes: the 28 AVE categories in the order PMR indexes them (first appearance in ``testSet.txt``,
l.41-49). A clip listed twice is kept once (l.59: 27 video ids repeat in trainSet.txt). Frames: 4 per clip
as PMR's AVE runs (``bash.sh``: ``--num_frame 4``), one per segment; PMR reads the first ``num_frame``
entries of an unsorted ``os.listdir`` (l.101-107). Pickles go through the restricted unpickler.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from torch import Tensor

from mmbalance.common.registry import DATASETS
from mmbalance.datasets._av import AVAdapter, AVParams, read_list, read_pickled_spectrogram

__all__ = ["Ave", "AveParams", "CLASSES"]

CLASSES = (  # PMR's order: first appearance in its data/AVE/testSet.txt
    "Church bell", "Male speech, man speaking", "Bark", "Fixed-wing aircraft, airplane", "Race car, auto racing",
    "Female speech, woman speaking", "Helicopter", "Violin, fiddle", "Flute", "Ukulele", "Frying (food)",
    "Truck", "Shofar", "Motorcycle", "Acoustic guitar", "Train horn", "Clock", "Banjo", "Goat",
    "Baby cry, infant cry", "Bus", "Chainsaw", "Cat", "Horse", "Toilet flush", "Rodents, rats, mice",
    "Accordion", "Mandolin",
)  # fmt: skip
LISTS = {"train": "trainSet.txt", "valid": "valSet.txt", "test": "testSet.txt"}


class AveParams(AVParams):
    num_frames: int = Field(4, ge=1)
    fps: int = Field(1, ge=1)  # which frame folder: Image-{fps:02d}-FPS-SE


@DATASETS.register
class Ave(AVAdapter):
    name = "ave"
    description = "AVE audio-visual events (audio spectrogram + RGB frames), PMR's split"
    access = (  # where to get it, its licence or access terms (`datasets`, missing-data message)
        "AVE (Tian et al. ECCV 2018): github.com/YapengTian/AVE-ECCV18 (YouTube-derived videos, research use)"
    )
    Params = AveParams
    class_names = CLASSES
    raw_splits = {"train": "train", "valid": "valid", "test": "test"}

    @property
    def frames_root(self) -> str:
        return f"Image-{self.params.fps:02d}-FPS-SE"

    def expected_files(self) -> list[Path]:
        return [Path(p) for p in (*LISTS.values(), "Audio-1004-SE", self.frames_root)]

    def layout_help(self) -> str:
        return (
            "trainSet.txt + valSet.txt + testSet.txt (rows 'Category&VideoID&Quality&Start&End', PMR's "
            f"data/AVE), Audio-1004-SE/<VideoID>.pkl (scripts/prepare_av_audio.py --kind ave), "
            f"{self.frames_root}/<VideoID>/*.jpg"
        )

    def read_rows(self, raw: str) -> list[tuple[str, int]]:
        index = {c: i for i, c in enumerate(CLASSES)}

        def parse(f: list[str]) -> tuple[str, int]:
            if len(f) < 2 or not f[1]:
                raise ValueError("no VideoID")
            if f[0] not in index:
                raise ValueError(f"unknown category {f[0]!r}, not one of the 28 AVE classes")
            return f[1], index[f[0]]

        return read_list(self.root / LISTS[raw], parse, "&", "Category&VideoID&Quality&Start&End")

    def audio_file(self, clip_id: str, raw: str) -> Path:
        return self.root / "Audio-1004-SE" / f"{clip_id}.pkl"

    def frame_dir(self, clip_id: str, raw: str) -> Path:
        return self.root / self.frames_root / clip_id

    def read_audio(self, path: Path) -> Tensor:
        return read_pickled_spectrogram(path)  # (257, 1004), PMR's audio_preprocessing.py
