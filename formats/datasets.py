"""Readers for the evaluation datasets in their standard on-disk layouts, local or on any fsspec URL.

    ds = open_dataset("voc20", "s3://bucket/VOCdevkit/VOC2012")
    for sample in ds:  # Sample(name, image uint8 [H, W, 3] RGB, mask uint8 [H, W], 255 = ignore)
        ...

A dataset is a layout (where images, masks and the split list live) plus a label map from raw
mask values to class indices 0..K-1. Class names and id tables are data files under
`formats/dataset_classes/` (see the README there for where each comes from).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
from PIL import Image

from common.config import ConfigError
from common.storage import filesystem, join
from model.metrics import IGNORE_INDEX

CLASSES_DIR = Path(__file__).parent / "dataset_classes"  # package data, never a remote path
# MaskCLIP+ zero-shot splits: the classes left out of training, by dataset (seen_mask builds the split)
ZERO_SHOT_UNSEEN: dict[str, list[str]] = json.loads((CLASSES_DIR / "zero_shot_unseen.json").read_text())["unseen"]


@dataclass
class Sample:
    name: str
    image: np.ndarray  # uint8 [H, W, 3] RGB
    mask: np.ndarray  # uint8 [H, W], class index 0..K-1 or IGNORE_INDEX


@dataclass(frozen=True)
class _Entry:
    name: str
    image_path: str
    mask_path: str


@dataclass(frozen=True)
class ListLayout:
    """Sample ids from a split file (`{split}.txt`, one id a line), as VOC and Pascal Context ship."""

    list_dir: str
    image_dir: str
    mask_dir: str
    image_suffix: str = ".jpg"
    mask_suffix: str = ".png"

    def entries(self, fs: fsspec.AbstractFileSystem, root: str, split: str) -> list[_Entry]:
        text = fs.cat_file(join(root, self.list_dir, f"{split}.txt")).decode()
        names = [line.strip() for line in text.splitlines() if line.strip()]
        return [_Entry(n, join(root, self.image_dir, n + self.image_suffix),
                       join(root, self.mask_dir, n + self.mask_suffix)) for n in names]


@dataclass(frozen=True)
class FolderLayout:
    """Every image under `image_dir` (`depth` folders down); its mask sits at the same relative path
    under `mask_dir`. `{split}` in either folder is replaced by the split. Sorted by name."""

    image_dir: str
    mask_dir: str
    image_suffixes: tuple[str, ...]
    mask_suffix: str = ".png"
    depth: int = 0

    def entries(self, fs: fsspec.AbstractFileSystem, root: str, split: str) -> list[_Entry]:
        image_root = join(root, self.image_dir.format(split=split))
        mask_root = join(root, self.mask_dir.format(split=split))
        found = []
        for path in fs.glob(join(image_root, *["*"] * (self.depth + 1))):
            suffix = next((s for s in self.image_suffixes if path.endswith(s)), None)
            if suffix is None:
                continue
            relative = path[len(image_root) + 1 : -len(suffix)]  # "frankfurt/frankfurt_000000_000294"
            found.append(_Entry(relative.rsplit("/", 1)[-1], path, join(mask_root, relative + self.mask_suffix)))
        if not found:
            raise ConfigError(f"no images ending in {', '.join(self.image_suffixes)} under {image_root}")
        return sorted(found, key=lambda e: e.name)


@dataclass(frozen=True)
class DatasetSpec:
    """One evaluation protocol: a layout and how raw mask values become class indices.

    `classes_file` names the raw classes (under dataset_classes/; "" = `ROOT/classes.txt`).
    `id_map_file` (JSON under dataset_classes/) maps raw values to classes, unlisted ones ignored;
    without it raw values are the classes. `reduce_zero_label` (mmseg's name) ignores raw 0, the
    background, and shifts every other class down by one, dropping the first name.
    """

    layout: ListLayout | FolderLayout
    classes_file: str = ""
    id_map_file: str = ""
    reduce_zero_label: bool = False
    # the image list the protocol scores: a file under dataset_classes/ per split ({split}), shipped with its
    # source named there; "" = every image. A split without a shipped list needs the user's --image-list.
    curated: str = ""


_VOC = ListLayout("ImageSets/Segmentation", "JPEGImages", "SegmentationClass")
_CONTEXT = ListLayout("ImageSets/SegmentationContext", "JPEGImages", "SegmentationClassContext")
_COCO = FolderLayout("images/{split}2017", "annotations/{split}2017", (".jpg",))
_CITYSCAPES = FolderLayout("leftImg8bit/{split}", "gtFine/{split}", ("_leftImg8bit.png",),
                           "_gtFine_labelIds.png", depth=1)
# One split per folder: `ROOT` is the split (what demo/synth.py writes under val/).
_GENERIC = FolderLayout("images", "masks", (".jpg", ".jpeg", ".png"))

DATASETS: dict[str, DatasetSpec] = {
    "voc21": DatasetSpec(_VOC, "voc.txt"),
    "voc20": DatasetSpec(_VOC, "voc.txt", reduce_zero_label=True),
    "context60": DatasetSpec(_CONTEXT, "context60.txt"),
    "context59": DatasetSpec(_CONTEXT, "context60.txt", reduce_zero_label=True),
    "cocostuff171": DatasetSpec(_COCO, "cocostuff171.txt", "cocostuff171.json"),
    # PiCIE and STEGO score IIC's curated subset (2,175 val images), not all of val2017
    "cocostuff27": DatasetSpec(_COCO, "cocostuff27.txt", "cocostuff27.json", curated="cocostuff27_{split}2017.txt"),
    "cityscapes19": DatasetSpec(_CITYSCAPES, "cityscapes19.txt", "cityscapes19.json"),
    "cityscapes27": DatasetSpec(_CITYSCAPES, "cityscapes27.txt", "cityscapes27.json"),
    "generic": DatasetSpec(_GENERIC),
}


def _read_lines(data: bytes) -> list[str]:
    return [line.strip() for line in data.decode().splitlines() if line.strip()]


def _load_id_map(file: str) -> dict[int, int]:
    return {int(k): v for k, v in json.loads((CLASSES_DIR / file).read_text())["map"].items()}


def label_lut(spec: DatasetSpec, num_raw_classes: int) -> np.ndarray:
    """uint8 [256]: class index for every raw 8-bit mask value (IGNORE_INDEX where ignored)."""
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    if spec.id_map_file:
        for raw, cls in _load_id_map(spec.id_map_file).items():
            lut[raw] = cls
    elif spec.reduce_zero_label:
        lut[1:num_raw_classes] = np.arange(num_raw_classes - 1)
    else:
        lut[:num_raw_classes] = np.arange(num_raw_classes)
    return lut


def _decode_image(data: bytes) -> np.ndarray:
    # No EXIF transpose: the masks are drawn on the stored pixel grid, so rotating would misalign them.
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def _decode_mask(data: bytes) -> np.ndarray:
    """Raw values uint8 [H, W]; a palette PNG gives its indices (VOC), never the palette colours."""
    with Image.open(io.BytesIO(data)) as img:
        if img.mode not in ("L", "P"):
            raise ValueError(f"a label mask must be an 8-bit index or grey PNG, got mode {img.mode}")
        return np.asarray(img, dtype=np.uint8)


def _class_names(spec: DatasetSpec, raw_names: list[str]) -> list[str]:
    return raw_names[1:] if spec.reduce_zero_label else raw_names


def class_names(name: str) -> list[str]:
    """The class names of a dataset with a built-in class list, without opening any data."""
    spec = DATASETS[name]
    if not spec.classes_file:
        raise ValueError(f"{name} reads its class names from ROOT/classes.txt: open the dataset")
    return _class_names(spec, _read_lines((CLASSES_DIR / spec.classes_file).read_bytes()))


class EvalDataset:
    """Images and class-index masks of one split; indexable and iterable, read lazily."""

    ignore_index = IGNORE_INDEX

    def __init__(self, spec: DatasetSpec, root: str, split: str = "val", image_list: str = ""):
        self.fs, self.root = filesystem(root)
        if not self.fs.isdir(self.root):
            raise ConfigError(f"dataset root {root} not found")
        try:  # a user's layout mistake is one line: the file the layout expects and did not find
            raw_names = (_read_lines((CLASSES_DIR / spec.classes_file).read_bytes()) if spec.classes_file
                         else _read_lines(self.fs.cat_file(join(self.root, "classes.txt"))))
            self._entries = spec.layout.entries(self.fs, self.root, split)
        except FileNotFoundError as e:
            raise ConfigError(f"{root} is not in the layout of this dataset: {e.filename or e} not found") from None
        self.image_list = scored_list(spec, split, image_list)
        if self.image_list:
            self._entries = _listed(self._entries, self.image_list, root)
        self.class_names: list[str] = _class_names(spec, raw_names)
        self._lut = label_lut(spec, len(raw_names))
        self.names: list[str] = [e.name for e in self._entries]

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, i: int) -> Sample:
        entry = self._entries[i]
        image = _decode_image(self.fs.cat_file(entry.image_path))
        mask = self._lut[_decode_mask(self.fs.cat_file(entry.mask_path))]
        if mask.shape != image.shape[:2]:
            raise ValueError(f"{entry.name}: mask {mask.shape} and image {image.shape[:2]} differ")
        return Sample(entry.name, image, mask)

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))


def scored_list(spec: DatasetSpec, split: str, image_list: str = "") -> str:
    """The image list `split` is read through: the user's (a {split} in it stands for the split), else the
    list the protocol ships for it, else "" (every image)."""
    if image_list:
        return image_list.format(split=split)
    if not spec.curated:
        return ""
    shipped = CLASSES_DIR / spec.curated.format(split=split)
    if not shipped.is_file():
        raise ConfigError(f"this protocol scores a curated image list and none ships for split {split!r} "
                          f"(dataset_classes/README.md): give one as --image-list")
    return str(shipped)


def _listed(entries: list[_Entry], image_list: str, root: str) -> list[_Entry]:
    """The entries an image list names (one image id a line, as IIC's curated lists), in the list's order."""
    fs, path = filesystem(image_list)
    if not fs.isfile(path):
        raise ConfigError(f"image list {image_list} not found")
    wanted = _read_lines(fs.cat_file(path))
    by_name = {e.name: e for e in entries}
    missing = [n for n in wanted if n not in by_name]
    if missing:
        raise ConfigError(f"{len(missing)} of the {len(wanted)} images {image_list} names are not under {root} "
                          f"(the first: {missing[0]})")
    return [by_name[n] for n in wanted]


def open_dataset(name: str, root: str, split: str = "val", image_list: str = "") -> EvalDataset:
    """The `split` of dataset `name` (a key of DATASETS) stored at `root` (local path or URL).

    "generic" holds one split per folder, so its `root` is the split's folder and `split` is unused.
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return EvalDataset(DATASETS[name], root, split, image_list)


def seen_mask(name: str, class_names: list[str]) -> np.ndarray:
    """bool [K]: True for the classes seen in training under the zero-shot split of dataset `name`."""
    unseen = ZERO_SHOT_UNSEEN[name]
    missing = sorted(set(unseen) - set(class_names))
    if missing:
        raise ValueError(f"unseen classes {missing} are not among the classes of {name}")
    return np.array([c not in unseen for c in class_names])
