"""Every dataset reader against a tiny fake copy of the real on-disk layout, with known label maps."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import s3fs
from PIL import Image

from common.config import ConfigError
from demo import synth
from formats.datasets import DATASETS, ZERO_SHOT_UNSEEN, class_names, open_dataset, scored_list, seen_mask

IGNORE = 255


def _put(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _encode(array: np.ndarray, fmt: str, palette: bool = False) -> bytes:
    img = Image.fromarray(array)
    if palette:  # VOC ships indexed PNGs whose colours differ from the indices
        img = img.convert("P")
        img.putpalette([(i * 37) % 256 for i in range(256 * 3)])
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _image(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.parametrize("name,num_classes", [
    ("voc20", 20), ("voc21", 21), ("context59", 59), ("context60", 60), ("cocostuff171", 171),
    ("cocostuff27", 27), ("cityscapes19", 19), ("cityscapes27", 27),
])
def test_every_registered_dataset_has_its_class_count(name, num_classes):
    names = class_names(name)
    assert len(names) == len(set(names)) == num_classes


def test_registry_holds_exactly_the_protocols():
    assert set(DATASETS) == {"voc20", "voc21", "context59", "context60", "cocostuff171", "cocostuff27",
                             "cityscapes19", "cityscapes27", "generic"}
    with pytest.raises(ConfigError, match="unknown dataset"):
        open_dataset("voc", "/nowhere")
    with pytest.raises(ValueError, match="classes.txt"):
        class_names("generic")


@pytest.fixture
def voc_root(tmp_path):
    raw = np.array([[0, 1, 15, 20, 255], [0, 0, 7, 7, 255]], np.uint8)
    for i, name in enumerate(("2007_000033", "2007_000042", "2007_000061")):
        _put(tmp_path / "JPEGImages" / f"{name}.jpg", _encode(_image(i, 2, 5), "JPEG"))
        _put(tmp_path / "SegmentationClass" / f"{name}.png", _encode(raw, "PNG", palette=True))
    # the split list decides membership and order; 2007_000061 is not in val
    _put(tmp_path / "ImageSets/Segmentation/val.txt", b"2007_000042\n2007_000033\n")
    return tmp_path


def test_voc21_keeps_background_and_reads_palette_indices(voc_root):
    ds = open_dataset("voc21", str(voc_root))
    assert ds.names == ["2007_000042", "2007_000033"] and len(ds) == 2 and ds.ignore_index == IGNORE
    assert Image.open(voc_root / "SegmentationClass/2007_000033.png").mode == "P"
    sample = ds[1]
    assert sample.name == "2007_000033"
    np.testing.assert_array_equal(sample.image, _decoded((voc_root / "JPEGImages/2007_000033.jpg").read_bytes()))
    assert sample.image.dtype == np.uint8 and sample.image.shape == (2, 5, 3)
    np.testing.assert_array_equal(sample.mask, [[0, 1, 15, 20, 255], [0, 0, 7, 7, 255]])
    names = ds.class_names
    assert (names[0], names[1], names[15], names[20]) == ("background", "aeroplane", "person", "tv monitor")


def test_voc20_ignores_background_and_shifts_classes_down(voc_root):
    ds = open_dataset("voc20", str(voc_root))
    sample = next(iter(ds))
    assert sample.name == "2007_000042"
    np.testing.assert_array_equal(sample.mask, [[255, 0, 14, 19, 255], [255, 255, 6, 6, 255]])
    assert (ds.class_names[0], ds.class_names[14], ds.class_names[19]) == ("aeroplane", "person", "tv monitor")


def test_pascal_context_59_and_60(tmp_path):
    raw = np.array([[0, 1, 2], [58, 59, 255]], np.uint8)
    _put(tmp_path / "JPEGImages/2008_000002.jpg", _encode(_image(0, 2, 3), "JPEG"))
    _put(tmp_path / "SegmentationClassContext/2008_000002.png", _encode(raw, "PNG"))
    _put(tmp_path / "ImageSets/SegmentationContext/val.txt", b"2008_000002\n")
    c60, c59 = open_dataset("context60", str(tmp_path)), open_dataset("context59", str(tmp_path))
    np.testing.assert_array_equal(c60[0].mask, raw)
    np.testing.assert_array_equal(c59[0].mask, [[255, 0, 1], [57, 58, 255]])
    assert c60.class_names[0] == "background" and c60.class_names[1:] == c59.class_names
    assert (c59.class_names[0], c59.class_names[1], c59.class_names[58]) == ("aeroplane", "bag", "wood")


@pytest.fixture
def coco_root(tmp_path):
    # stuffthingmaps values are COCO ids - 1; 11 (street sign) and 82 (blender) are ids COCO never uses
    raw = np.array([[0, 11, 12, 82], [91, 156, 171, 181], [255, 24, 118, 147]], np.uint8)
    _put(tmp_path / "images/val2017/000000000139.jpg", _encode(_image(0, 3, 4), "JPEG"))
    _put(tmp_path / "annotations/val2017/000000000139.png", _encode(raw, "PNG"))
    # every raw value once, to check the whole tables
    every = np.array([list(range(182)) + [255]], np.uint8)
    _put(tmp_path / "images/val2017/000000000285.jpg", _encode(_image(1, 1, 183), "JPEG"))
    _put(tmp_path / "annotations/val2017/000000000285.png", _encode(every, "PNG"))
    return tmp_path


def _names(ds, mask: np.ndarray) -> list[list[str | None]]:
    return [[ds.class_names[v] if v != IGNORE else None for v in row] for row in mask]


def test_cocostuff171_maps_to_contiguous_classes(coco_root):
    ds = open_dataset("cocostuff171", str(coco_root))
    assert ds.names == ["000000000139", "000000000285"]
    np.testing.assert_array_equal(ds[0].image, _decoded((coco_root / "images/val2017/000000000139.jpg").read_bytes()))
    assert _names(ds, ds[0].mask) == [
        ["person", None, "stop sign", None],
        ["banner", "sky", "concrete wall", "wood"],
        [None, "giraffe", "flower", "river"],
    ]
    every = ds[1].mask[0]
    assert sorted(set(every[every != IGNORE].tolist())) == list(range(171))
    assert every.tolist().count(IGNORE) == 11 + 1  # the unused thing ids and 255


def test_cocostuff27_uses_the_stego_coarse_classes(coco_root):
    curated = coco_root / "curated" / "val2017" / "Coco164kFull_Stuff_Coarse_7.txt"
    _put(curated, b"000000000139\n000000000285\n")
    fine = open_dataset("cocostuff171", str(coco_root))
    coarse = open_dataset("cocostuff27", str(coco_root), image_list=str(coco_root / "curated/{split}2017/Coco164kFull_Stuff_Coarse_7.txt"))
    assert _names(coarse, coarse[0].mask)[1:] == [
        ["textile", "sky", "wall", "solid"],
        [None, "animal", "plant", "water"],
    ]
    assert _names(coarse, coarse[0].mask)[0][::2] == ["person", "outdoor"]
    # over the 171 used classes: each fine class has one coarse class, things (the first 80) go
    # to the 12 thing supercategories, stuff to the 15 stuff ones, and all 27 occur
    f, c = fine[1].mask[0], coarse[1].mask[0]
    used = f != IGNORE
    table = dict(zip(f[used].tolist(), c[used].tolist()))
    assert len(table) == 171 and set(table.values()) == set(range(27))
    assert all((k < 80) == (v < 12) for k, v in table.items())
    assert coarse.class_names[:3] == ["electronic", "appliance", "food"] and coarse.class_names[-1] == "water"


def test_cocostuff27_ships_iics_curated_lists():
    # IIC's Coco164kFull_Stuff_Coarse_7.txt lists, as PiCIE and STEGO score: 2,175 val and 49,629 train images
    spec = DATASETS["cocostuff27"]
    lists = {split: Path(scored_list(spec, split)).read_text().split() for split in ("val", "train")}
    assert {split: len(ids) for split, ids in lists.items()} == {"val": 2175, "train": 49629}
    assert all(len(set(ids)) == len(ids) and all(len(i) == 12 and i.isdigit() for i in ids) for ids in lists.values())
    assert not set(lists["val"]) & set(lists["train"])
    assert lists["val"][:3] == ["000000000139", "000000000724", "000000000785"]
    with pytest.raises(ConfigError, match="none ships for split 'test'"):
        scored_list(spec, "test")
    assert scored_list(spec, "test", "my/{split}.txt") == "my/test.txt" and scored_list(DATASETS["voc21"], "val") == ""


def test_cocostuff27_scores_the_curated_list_and_only_it(coco_root):
    # the shipped list by default: this root holds 2 of its 2,175 images, so it is refused, not scored as a subset
    with pytest.raises(ConfigError, match="2174 of the 2175 images .*cocostuff27_val2017.txt.* are not under"):
        open_dataset("cocostuff27", str(coco_root))
    listed = coco_root / "val2017.txt"
    _put(listed, b"000000000285\n")
    ds = open_dataset("cocostuff27", str(coco_root), image_list=str(listed))
    assert ds.names == ["000000000285"] and len(ds) == 1
    _put(listed, b"000000000285\n000000000999\n")
    with pytest.raises(ConfigError, match="1 of the 2 images .* are not under"):
        open_dataset("cocostuff27", str(coco_root), image_list=str(listed))
    # any dataset takes a list: the first image only
    _put(listed, b"000000000139\n")
    assert open_dataset("cocostuff171", str(coco_root), image_list=str(listed)).names == ["000000000139"]


@pytest.fixture
def cityscapes_root(tmp_path):
    raw = np.array([list(range(0, 17)), list(range(17, 34))], np.uint8)
    for city, name in (("munster", "munster_000000_000019"), ("frankfurt", "frankfurt_000000_000294")):
        image = _image(len(city), 2, 17)
        _put(tmp_path / f"leftImg8bit/val/{city}/{name}_leftImg8bit.png", _encode(image, "PNG"))
        _put(tmp_path / f"gtFine/val/{city}/{name}_gtFine_labelIds.png", _encode(raw, "PNG"))
        # the other gtFine files of a real copy must not be mistaken for labels
        _put(tmp_path / f"gtFine/val/{city}/{name}_gtFine_color.png", _encode(image, "PNG"))
        _put(tmp_path / f"gtFine/val/{city}/{name}_gtFine_instanceIds.png", _encode(raw + 100, "PNG"))
    _put(tmp_path / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png", _encode(image, "PNG"))
    return tmp_path


def test_cityscapes19_maps_label_ids_to_train_ids(cityscapes_root):
    ds = open_dataset("cityscapes19", str(cityscapes_root))
    assert ds.names == ["frankfurt_000000_000294", "munster_000000_000019"]
    np.testing.assert_array_equal(ds[1].image, _image(len("munster"), 2, 17))  # PNG: exact
    train_id = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    expected = [train_id.get(i, IGNORE) for i in range(34)]
    np.testing.assert_array_equal(ds[0].mask.reshape(-1), expected)
    assert [ds.class_names[i] for i in (0, 6, 11, 18)] == ["road", "traffic light", "person", "bicycle"]


def test_cityscapes27_keeps_label_ids_7_to_33(cityscapes_root):
    ds = open_dataset("cityscapes27", str(cityscapes_root))
    expected = [IGNORE] * 7 + list(range(27))
    np.testing.assert_array_equal(ds[0].mask.reshape(-1), expected)
    by_id = {i: ds.class_names[i - 7] for i in (7, 9, 10, 18, 29, 30, 33)}
    assert by_id == {7: "road", 9: "parking", 10: "rail track", 18: "pole group", 29: "caravan",
                     30: "trailer", 33: "bicycle"}


def test_generic_layout_from_s3(s3_bucket):
    fs = s3fs.S3FileSystem()
    root = f"{s3_bucket}/eval/val"
    masks = {"b": np.array([[0, 1], [2, 255]], np.uint8), "a": np.array([[2, 2], [1, 0]], np.uint8)}
    for name, mask in masks.items():
        fs.pipe_file(f"{root}/images/{name}.png", _encode(_image(ord(name), 2, 2), "PNG"))
        fs.pipe_file(f"{root}/masks/{name}.png", _encode(mask, "PNG"))
    fs.pipe_file(f"{root}/classes.txt", b"sky\ntree\nroad\n")
    ds = open_dataset("generic", root)
    assert ds.class_names == ["sky", "tree", "road"] and ds.names == ["a", "b"]
    for sample in ds:
        np.testing.assert_array_equal(sample.image, _image(ord(sample.name), 2, 2))
        np.testing.assert_array_equal(sample.mask, masks[sample.name])


def test_generic_layout_reads_what_synth_writes(tmp_path):
    synth.write_corpus(str(tmp_path), num_train=0, num_val=3, size=48)
    ds = open_dataset("generic", str(tmp_path / "val"))
    assert ds.class_names == list(synth.CLASSES)
    assert ds.names == ["000000", "000001", "000002"]
    for i, sample in enumerate(ds):
        scene = synth.render_scene(500_000 + i, 48)  # the validation seeds of write_corpus(seed=0)
        np.testing.assert_array_equal(sample.mask, scene.mask)
        stored = (tmp_path / "val/images" / f"{sample.name}.jpg").read_bytes()
        np.testing.assert_array_equal(sample.image, _decoded(stored))
        # JPEG with chroma subsampling on noisy pixels: close to the scene, far from any other scene
        assert np.abs(sample.image.astype(int) - scene.image).mean() < 15
        other = synth.render_scene(500_000 + i + 1, 48).image
        assert np.abs(sample.image.astype(int) - other).mean() > 30


def test_seen_masks_match_the_zero_shot_splits():
    counts = {"voc20": (20, 5), "context59": (59, 10), "cocostuff171": (171, 15)}
    assert set(ZERO_SHOT_UNSEEN) == set(counts)
    for name, (k, num_unseen) in counts.items():
        names = class_names(name)
        seen = seen_mask(name, names)
        assert seen.shape == (k,) and (~seen).sum() == num_unseen
    seen = seen_mask("voc20", class_names("voc20"))
    assert [n for n, s in zip(class_names("voc20"), seen) if not s] == [
        "potted plant", "sheep", "sofa", "train", "tv monitor"]
    with pytest.raises(ValueError, match="not among"):
        seen_mask("voc20", ["aeroplane", "sheep"])
