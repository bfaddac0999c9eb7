"""UPMC-Food101: 101 dish classes, a web-page text and a photo per sample (image + text).

Three on-disk layouts under the dataset root (``layout="auto"`` takes the first one present):

- ``json`` (what the CGGM code reads, built by bmmal's ``preprocess.py``): ``train.json`` / ``test.json``,
  each a list of ``{"id", "label", "text_tokens", "img_path", ...}``; the text is
  ``" ".join(text_tokens)``. ``img_path`` may be relative to the root or absolute; an absolute path
  that no longer exists is looked up again from its ``images/`` part under the root (the file was moved).
- ``texts_txt`` (the original release): ``images/{train,test}/{class}/{class}_{n}.jpg`` and
  ``texts_txt/{class}/{class}_{n}.txt``. ``txt_text="ingredients"`` keeps, as bmmal's preprocessing
  does, up to 100 tokens after the last token containing "ingredients" (lower-cased, punctuation
  as spaces) and drops samples without one; ``"full"`` keeps the whole page text.
- ``titles_csv`` (the Kaggle copy): the same images with ``texts/{train,test}_titles.csv`` rows
  ``filename, title, class`` (with or without a header row). Titles are a different, shorter text.

Class names are the sorted class folders (or the sorted labels of ``train.json``): the 101 names of
the CGGM code's ``CLASS_NAME`` on the real data. Validation is carved from train, per class, with
a fixed seed (``valid_fraction``); ``protocol="cggm_test_as_valid"`` reproduces the CGGM code, which
validates (and selects epochs) on the test split.

Two modes:
- ``features`` (default): reads per-token BERT and per-patch ViT ``last_hidden_state`` cached by
  ``scripts/extract_food101_features.py`` (``features_<layout>.h5``), as the CGGM code's frozen
  ``no_grad`` BERT/ViT would produce them. No image augmentation (features are of the eval images).
- ``end_to_end``: images and token ids go through BERT + ViT (``transformers``, frozen unless
  ``model_params.finetune``), with the CGGM code's training augmentation.
Both feed the CGGM food model (``mmbalance.models.food``). Images are normalised with the image
processor's mean/std, as ViT expects; the CGGM code feeds unnormalised [0, 1] pixels.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import string
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import h5py
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pydantic import Field
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from mmbalance.common.registry import DATASETS
from mmbalance.models.food import FoodModelParams, build_food_model, load_pretrained
from mmbalance.models.transformer import MSAModel
from mmbalance.training.data import DataError, DataMissingError, DatasetAdapter, StrictModel, TaskInfo

if TYPE_CHECKING:
    from torchvision import transforms as T

__all__ = ["Food101", "Sample", "read_samples", "extract_features", "image_transform"]

MODALITIES = ("image", "text")  # the CGGM food model concatenates vision, then text, before fusion
LAYOUTS = ("json", "texts_txt", "titles_csv")
RAW_SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_INGREDIENT_TOKENS = 100  # bmmal preprocess.py
# The 101 classes (CGGM's CLASS_NAME, alphabetical): the task before any file is there.
FOOD101_CLASSES = tuple(
    """
apple_pie baby_back_ribs baklava beef_carpaccio beef_tartare beet_salad beignets bibimbap
bread_pudding breakfast_burrito bruschetta caesar_salad cannoli caprese_salad carrot_cake ceviche
cheese_plate cheesecake chicken_curry chicken_quesadilla chicken_wings chocolate_cake
chocolate_mousse churros clam_chowder club_sandwich crab_cakes creme_brulee croque_madame cup_cakes
deviled_eggs donuts dumplings edamame eggs_benedict escargots falafel filet_mignon fish_and_chips
foie_gras french_fries french_onion_soup french_toast fried_calamari fried_rice frozen_yogurt
garlic_bread gnocchi greek_salad grilled_cheese_sandwich grilled_salmon guacamole gyoza hamburger
hot_and_sour_soup hot_dog huevos_rancheros hummus ice_cream lasagna lobster_bisque
lobster_roll_sandwich macaroni_and_cheese macarons miso_soup mussels nachos omelette onion_rings
oysters pad_thai paella pancakes panna_cotta peking_duck pho pizza pork_chop poutine prime_rib
pulled_pork_sandwich ramen ravioli red_velvet_cake risotto samosa sashimi scallops seaweed_salad
shrimp_and_grits spaghetti_bolognese spaghetti_carbonara spring_rolls steak strawberry_shortcake
sushi tacos takoyaki tiramisu tuna_tartare waffles
""".split()
)


class Food101Params(StrictModel):
    layout: Literal["auto", "json", "texts_txt", "titles_csv"] = "auto"
    mode: Literal["features", "end_to_end"] = "features"
    features_file: str = "features_{layout}.h5"  # relative to the root; {layout} is the resolved layout
    text_model: str = "bert-base-uncased"  # local folder or (cached) hub name: tokenizer + weights
    image_model: str = "google/vit-base-patch16-224"  # local folder or (cached) hub name: processor + weights
    max_text_length: int = Field(50, ge=2)  # CGGM's TEXT_MAX_LENGTH
    txt_text: Literal["ingredients", "full"] = "ingredients"  # texts_txt layout only
    protocol: Literal["holdout", "cggm_test_as_valid"] = "holdout"
    valid_fraction: float = Field(0.1, gt=0, lt=1)  # holdout: share of each train class kept for validation
    split_seed: int = Field(0, ge=0)
    augment: bool = True  # end_to_end: the CGGM code's training augmentation


@dataclass(frozen=True)
class Sample:
    id: str
    label: str
    image: Path
    text: str


# --- reading the layouts ----------------------------------------------------------------------------
def detect_layout(root: Path) -> str:
    if (root / "train.json").is_file():
        return "json"
    if (root / "texts_txt").is_dir():
        return "texts_txt"
    if (root / "texts" / "train_titles.csv").is_file():
        return "titles_csv"
    raise DataMissingError(f"{root}: no Food101 layout found. Expected train.json/test.json, or "
                           "images/{train,test}/<class>/*.jpg with texts_txt/<class>/*.txt or "
                           "texts/{train,test}_titles.csv")  # fmt: skip


def ingredients_tokens(text: str) -> list[str] | None:
    """bmmal's text: lower-case, punctuation as spaces, <= 100 tokens after the last "ingredients" token."""
    tokens = text.lower().translate(str.maketrans(string.punctuation, " " * len(string.punctuation))).split()
    hits = [i for i, t in enumerate(tokens) if "ingredients" in t]
    return tokens[hits[-1] + 1 : hits[-1] + 1 + MAX_INGREDIENT_TOKENS] if hits else None


def _class_dirs(root: Path, split: str) -> list[Path]:
    folder = root / "images" / split
    if not folder.is_dir():
        raise DataMissingError(f"{folder}: missing (expected images/{split}/<class>/<class>_<n>.jpg)")
    return sorted(p for p in folder.iterdir() if p.is_dir())


def _read_json(root: Path, split: str) -> list[Sample]:
    path = root / f"{split}.json"
    try:
        rows = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataMissingError(f"{path}: missing (the CGGM layout needs train.json and test.json)") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of samples, got {type(rows).__name__}")
    samples = []
    for i, row in enumerate(rows):
        missing = [
            k for k in ("id", "label", "text_tokens", "img_path") if not isinstance(row, dict) or k not in row
        ]
        if missing:
            raise DataError(f"{path}: sample {i} lacks {missing} (expected id, label, text_tokens, img_path)")
        image = Path(row["img_path"])
        if image.is_absolute() and not image.exists() and "images" in image.parts:
            image = Path(*image.parts[image.parts.index("images") :])  # moved since the json was written
        samples.append(Sample(str(row["id"]), str(row["label"]), root / image, " ".join(row["text_tokens"])))
    return samples


def _read_texts_txt(root: Path, split: str, txt_text: str) -> list[Sample]:
    samples = []
    for class_dir in _class_dirs(root, split):
        images = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        texts_dir = root / "texts_txt" / class_dir.name
        found = kept = 0
        for image in images:
            txt = texts_dir / f"{image.stem}.txt"
            if not txt.is_file():
                continue
            found += 1
            text = txt.read_text(encoding="utf-8", errors="replace")
            if txt_text == "ingredients":
                tokens = ingredients_tokens(text)
                if tokens is None:
                    continue
                text = " ".join(tokens)
            kept += 1
            samples.append(
                Sample(f"{class_dir.name}/{image.name}", class_dir.name, image, " ".join(text.split()))
            )
        if images and not found:
            raise DataError(f"{texts_dir}: no text file for any of the {len(images)} images of class "
                            f"{class_dir.name!r} (expected texts_txt/<class>/<image stem>.txt)")  # fmt: skip
        if found < len(images):
            warnings.warn(
                f"{class_dir}: {len(images) - found} image(s) without a text file are left out", stacklevel=2
            )
    return samples


def _read_titles_csv(root: Path, split: str) -> list[Sample]:
    path = root / "texts" / f"{split}_titles.csv"
    if not path.is_file():
        raise DataMissingError(f"{path}: missing (expected rows 'filename,title,class')")
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        rows = list(csv.reader(f))
    if rows and not rows[0][0].lower().endswith(
        IMAGE_SUFFIXES
    ):  # a header row, e.g. filename,text,class_name
        rows = rows[1:]
    samples, per_class = [], defaultdict(int)
    for line, row in enumerate(rows, start=2):
        if len(row) < 3:
            raise DataError(f"{path}: line {line} has {len(row)} column(s), expected filename,title,class")
        filename, title, label = row[0], row[1], row[2]
        samples.append(
            Sample(f"{label}/{filename}", label, root / "images" / split / label / filename, title)
        )
        per_class[label] += 1
    for class_dir in _class_dirs(root, split):
        if per_class[class_dir.name] == 0:
            raise DataError(f"{path}: no text rows for class folder {class_dir} (expected 'filename,title,"
                            f"{class_dir.name}' rows)")  # fmt: skip
    return samples


def read_samples(root: Path, layout: str, split: str, txt_text: str = "ingredients") -> list[Sample]:
    """The samples of raw split ``split`` ("train" or "test") of ``layout``; every image must exist."""
    if layout == "json":
        samples = _read_json(root, split)
    elif layout == "texts_txt":
        samples = _read_texts_txt(root, split, txt_text)
    else:
        samples = _read_titles_csv(root, split)
    for s in samples:
        if not s.image.is_file():
            raise DataMissingError(
                f"{s.image}: image of sample {s.id!r} ({layout} layout, {split} split) is missing"
            )
    if len({s.id for s in samples}) != len(samples):
        raise DataError(f"{root} ({layout}, {split}): duplicate sample ids")
    return samples


def holdout(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(train, valid): per class, ``round(n * fraction)`` samples (at least 1 when n >= 2) go to valid."""
    by_class: dict[str, list[Sample]] = defaultdict(list)
    for s in sorted(samples, key=lambda s: s.id):
        by_class[s.label].append(s)
    rng, valid_ids = random.Random(seed), set()
    for label in sorted(by_class):
        group = by_class[label]
        rng.shuffle(group)
        k = max(1, round(len(group) * fraction)) if len(group) >= 2 else 0
        valid_ids.update(s.id for s in group[:k])
    return [s for s in samples if s.id not in valid_ids], [s for s in samples if s.id in valid_ids]


# --- images and text ----------------------------------------------------------------------------------
def load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"{path}: unreadable image: {e}") from None


def image_transform(processor, train: bool) -> T.Compose:
    """Resize to the processor's size; for training, the CGGM code's flip, colour jitter (p=0.8),
    grayscale (p=0.2) and Gaussian blur (kernel 21); then the processor's normalisation."""
    from torchvision import transforms as T  # imported here: torchvision takes seconds to import

    size = [processor.size["height"], processor.size["width"]]
    steps: list = [T.Resize(size)]
    if train:
        s = 0.5  # CGGM's color_distort_strength
        jitter = T.ColorJitter(brightness=0.8 * s, contrast=0.8 * s, saturation=0.8 * s, hue=0.2 * s)
        steps += [T.RandomHorizontalFlip(), T.RandomApply([jitter], p=0.8), T.RandomGrayscale(p=0.2),
                  T.GaussianBlur(kernel_size=21)]  # fmt: skip
    return T.Compose([*steps, T.ToTensor(), T.Normalize(processor.image_mean, processor.image_std)])


def tokenize(tokenizer, texts: list[str], max_length: int) -> Tensor:
    """(N, 3, L) long: input_ids, attention_mask, token_type_ids, padded to ``max_length`` (as CGGM)."""
    enc = tokenizer(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    types = enc.get("token_type_ids", torch.zeros_like(enc["input_ids"]))
    return torch.stack([enc["input_ids"], enc["attention_mask"], types], dim=1)


def load_processors(text_model: str, image_model: str):
    from transformers import AutoImageProcessor, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(text_model, local_files_only=True)
        processor = AutoImageProcessor.from_pretrained(image_model, local_files_only=True)
    except OSError as e:
        raise DataMissingError(
            f"tokenizer/image processor of {text_model!r} / {image_model!r} not found locally "
            f"(pass a local folder, or download once with `hf download <name>`): {e}"
        ) from None
    return tokenizer, processor


# --- torch datasets --------------------------------------------------------------------------------------
class _Split(Dataset):
    def __init__(self, samples: list[Sample], class_names: Sequence[str]) -> None:
        self.samples = samples
        index = {c: i for i, c in enumerate(class_names)}
        unknown = sorted({s.label for s in samples} - set(index))
        if unknown:
            raise DataError(f"labels {unknown} are not among the {len(index)} train classes")
        self.labels = torch.tensor([index[s.label] for s in samples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)


class FeatureSplit(_Split):
    """Items ``({"image": (P, D_i), "text": (L, D_t)}, label, id)`` read from the features h5."""

    def __init__(self, samples: list[Sample], class_names: Sequence[str], path: Path, group: str) -> None:
        super().__init__(samples, class_names)
        self.path, self.group = path, group
        with open_features(path) as f:
            if group not in f:
                raise DataError(f"{path}: no group {group!r} (re-run scripts/extract_food101_features.py)")
            rows = {i.decode() if isinstance(i, bytes) else i: r for r, i in enumerate(f[group]["ids"][()])}
        missing = [s.id for s in samples if s.id not in rows]
        if missing:
            raise DataError(f"{path}: {len(missing)} sample(s) of split {group!r} have no features, e.g. "
                            f"{missing[:3]} (re-run scripts/extract_food101_features.py)")  # fmt: skip
        self.rows = [rows[s.id] for s in samples]
        self._file: h5py.File | None = None
        self._pid = os.getpid()

    def __getitem__(self, i: int):
        if self._file is None or self._pid != os.getpid():  # per process: h5 handles do not survive fork
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        g, r = self._file[self.group], self.rows[i]
        inputs = {m: torch.from_numpy(g[m][r].astype(np.float32)) for m in MODALITIES}
        return inputs, self.labels[i], self.samples[i].id


class ImageTextSplit(_Split):
    """Items ``({"image": (3, H, W), "text": (3, L) ids/mask/types}, label, id)`` for end-to-end training."""

    def __init__(
        self, samples: list[Sample], class_names: Sequence[str], tokenizer, transform, max_length: int
    ):
        super().__init__(samples, class_names)
        self.tokenizer, self.transform, self.max_length = tokenizer, transform, max_length

    def __getitem__(self, i: int):
        s = self.samples[i]
        text = tokenize(self.tokenizer, [s.text], self.max_length)[0]
        return {"image": self.transform(load_image(s.image)), "text": text}, self.labels[i], s.id


def open_features(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise DataMissingError(
            f"{path}: missing; write it with scripts/extract_food101_features.py"
        ) from None
    except OSError as e:
        raise DataError(f"{path}: not a readable h5 file (truncated or corrupt?): {e}") from None


# --- feature extraction (scripts/extract_food101_features.py) ---------------------------------------------
@torch.no_grad()
def extract_features(
    root: Path,
    layout: str,
    text_model: str,
    image_model: str,
    out: Path,
    max_text_length: int = 50,
    txt_text: str = "ingredients",
    batch_size: int = 32,
    device: str = "cpu",
    progress: bool = True,
) -> Path:
    """Cache BERT per-token and ViT per-patch ``last_hidden_state`` (float16) of both raw splits to ``out``.

    Rows are written batch by batch into ``out.partial`` with a ``done`` flag each, so an interrupted
    run resumes; the file is renamed to ``out`` when complete. h5 layout, per split group:
    ``ids`` (N,) str, ``labels`` (N,) str, ``text`` (N, L, D_t), ``text_mask`` (N, L), ``image`` (N, P, D_i).
    """
    tokenizer, processor = load_processors(text_model, image_model)
    bert, vit = load_pretrained(text_model).to(device).eval(), load_pretrained(image_model).to(device).eval()
    transform = image_transform(processor, train=False)
    meta = {"layout": layout, "text_model": text_model, "image_model": image_model,
            "max_text_length": max_text_length, "txt_text": txt_text}  # fmt: skip
    partial = out.with_name(out.name + ".partial")
    with h5py.File(partial, "a") as f:
        for k, v in meta.items():
            if k in f.attrs and f.attrs[k] != v:
                raise DataError(
                    f"{partial}: was started with {k}={f.attrs[k]!r}, now {v!r}; delete it to restart"
                )
            f.attrs[k] = v
        for split in RAW_SPLITS:
            samples = read_samples(root, layout, split, txt_text)
            g = f.require_group(split)
            if "ids" not in g:
                g.create_dataset("ids", data=[s.id for s in samples], dtype=h5py.string_dtype())
                g.create_dataset("labels", data=[s.label for s in samples], dtype=h5py.string_dtype())
                g.create_dataset("done", data=np.zeros(len(samples), dtype=bool))
            done = g["done"][()]
            starts = [b for b in range(0, len(samples), batch_size) if not done[b : b + batch_size].all()]
            for b in tqdm(starts, desc=f"food101 {split} features", disable=not progress):
                batch = samples[b : b + batch_size]
                ids = tokenize(tokenizer, [s.text for s in batch], max_text_length).to(device)
                text = bert(
                    input_ids=ids[:, 0], attention_mask=ids[:, 1], token_type_ids=ids[:, 2]
                ).last_hidden_state
                pixels = torch.stack([transform(load_image(s.image)) for s in batch]).to(device)
                image = vit(pixel_values=pixels).last_hidden_state
                for name, x in (("text", text), ("image", image), ("text_mask", ids[:, 1])):
                    if name not in g:
                        dtype = np.uint8 if name == "text_mask" else np.float16
                        g.create_dataset(name, shape=(len(samples), *x.shape[1:]), dtype=dtype,
                                         chunks=(1, *x.shape[1:]))  # fmt: skip
                    g[name][b : b + len(batch)] = x.cpu().numpy()
                g["done"][b : b + len(batch)] = True
                f.flush()
    os.replace(partial, out)
    return out


# --- adapter -------------------------------------------------------------------------------------------
@DATASETS.register
class Food101(DatasetAdapter):
    name = "food101"
    description = "UPMC-Food101: image + text, 101 classes (BERT/ViT features or end-to-end)"
    access = (  # where to get it, its licence or access terms (`datasets`, missing-data message)
        "UPMC Food-101 (Wang et al. 2015): the official host (visiir.lip6.fr) is reported dead; copies on "
        "Kaggle (titles only) and linked in issues; research use"
    )
    Params = Food101Params
    ModelParams = FoodModelParams

    def __init__(self, params: Food101Params, root: Path | None = None) -> None:
        super().__init__(params, root)
        self._samples: dict[str, list[Sample]] = {}
        self._splits: dict[str, _Split] = {}

    @property
    def layout(self) -> str:
        return detect_layout(self.root) if self.params.layout == "auto" else self.params.layout

    @property
    def features_path(self) -> Path:
        return self.root / self.params.features_file.format(layout=self.layout)

    def raw_samples(self, split: str) -> list[Sample]:
        if split not in self._samples:
            self._samples[split] = read_samples(self.root, self.layout, split, self.params.txt_text)
        return self._samples[split]

    @cached_property
    def class_names(self) -> tuple[str, ...]:
        """Sorted train classes of the files; the 101 Food101 classes while no file is there."""
        try:
            layout = self.layout
        except DataMissingError:
            return FOOD101_CLASSES
        if layout == "json":
            return tuple(sorted({s.label for s in self.raw_samples("train")}))
        return tuple(p.name for p in _class_dirs(self.root, "train"))

    @property
    def task(self) -> TaskInfo:
        names = self.class_names
        return TaskInfo("classification", MODALITIES, len(names), names)

    def expected_files(self) -> list[Path]:
        try:
            layout = self.layout
        except DataMissingError:  # nothing there: name the CGGM layout's files
            return [Path("train.json"), Path("test.json")]
        files = {
            "json": ["train.json", "test.json"],
            "texts_txt": ["images/train", "images/test", "texts_txt"],
            "titles_csv": ["images/train", "images/test", "texts/train_titles.csv", "texts/test_titles.csv"],
        }
        extra = [self.params.features_file.format(layout=layout)] if self.params.mode == "features" else []
        return [Path(p) for p in files[layout] + extra]  # fmt: skip

    def layout_help(self) -> str:
        return (
            "train.json + test.json (CGGM), or images/{train,test}/<class>/*.jpg with "
            "texts_txt/<class>/*.txt or texts/{train,test}_titles.csv; features mode also needs the h5 of "
            "scripts/extract_food101_features.py"
        )

    def split_samples(self, name: str) -> tuple[list[Sample], str]:
        """The samples of ``name`` and the raw split they come from."""
        if name == "test" or (name == "valid" and self.params.protocol == "cggm_test_as_valid"):
            return self.raw_samples("test"), "test"
        if name not in ("train", "valid"):
            raise ValueError(f"unknown split {name!r}; valid: train, valid, test")
        train, valid = holdout(self.raw_samples("train"), self.params.valid_fraction, self.params.split_seed)
        return (train if name == "train" else valid), "train"

    def split(self, name: str) -> _Split:
        if name not in self._splits:
            samples, raw = self.split_samples(name)
            p = self.params
            if p.mode == "features":
                self.check_features()
                self._splits[name] = FeatureSplit(samples, self.class_names, self.features_path, raw)
            else:
                tokenizer, processor = load_processors(p.text_model, p.image_model)
                transform = image_transform(processor, train=name == "train" and p.augment)
                self._splits[name] = ImageTextSplit(
                    samples, self.class_names, tokenizer, transform, p.max_text_length
                )
        return self._splits[name]

    def unknown_token(self) -> int:
        """End-to-end text is word ids of ``text_model``'s tokenizer: its [UNK] (the features mode has none)."""
        if self.params.mode == "features":
            return super().unknown_token()
        return load_processors(self.params.text_model, self.params.image_model)[0].unk_token_id

    def reads_items(self) -> bool:
        """Whether items are read from files as they are drawn (so loader workers pay off on a GPU)."""
        return True

    def fingerprint(self, name: str) -> str:
        """SHA-256 of the split's ids and labels (no image is decoded)."""
        h = hashlib.sha256()
        ds = self.split(name)
        for s, y in zip(ds.samples, ds.labels.tolist(), strict=True):
            h.update(f"{s.id}\t{y}\n".encode())
        return h.hexdigest()

    def check_features(self) -> None:
        """The features file must come from this layout, text length and text choice."""
        want = {
            "layout": self.layout,
            "max_text_length": self.params.max_text_length,
            "txt_text": self.params.txt_text,
        }
        with open_features(self.features_path) as f:
            got = {
                k: f.attrs[k].item() if hasattr(f.attrs[k], "item") else f.attrs[k]
                for k in want
                if k in f.attrs
            }
        wrong = {k: (got[k], v) for k, v in want.items() if k in got and got[k] != v}
        if wrong:
            raise DataError(
                f"{self.features_path}: extracted with other settings (file, params): {wrong}; "
                "re-run scripts/extract_food101_features.py or change dataset_params"
            )

    def feature_dims(self) -> dict[str, int]:
        with open_features(self.features_path) as f:
            return {m: int(f["train"][m].shape[-1]) for m in MODALITIES}

    def build_model(self, model_params: FoodModelParams, modalities: Sequence[str]) -> MSAModel:
        p = self.params
        if p.mode == "features":
            dims = self.feature_dims()
            return build_food_model({m: dims[m] for m in modalities}, self.task.num_classes, model_params)
        backbones = {"image": p.image_model, "text": p.text_model}
        return build_food_model({m: backbones[m] for m in modalities}, self.task.num_classes, model_params)
