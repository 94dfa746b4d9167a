"""Synthetic scenes with ground truth: textured shapes whose class is carried by texture and shape.

Colour is drawn at random for every object, so a model can only tell classes apart by pattern and
outline, which is what a segmenter has to learn from real photos too. Each class has its own outline;
with `any_shape` every object's outline is drawn at random instead (the same scene otherwise), so a
score there cannot come from recognising the outline: the `test_anyshape` split the main job also scores. Each scene has an image, a
per-pixel class mask and a caption ("a photo of a striped square at the top left and ... on a mottled background").

    python demo/synth.py --output data/synth --num-train 3000 --num-val 200

writes `train/NAME.jpg` + `train/NAME.txt` (captions, no labels) and the generic evaluation
layout `val/images/NAME.jpg`, `val/masks/NAME.png`, `val/classes.txt`.
"""

from __future__ import annotations

import argparse
import io
import math
from dataclasses import dataclass

import fsspec
import numpy as np
from PIL import Image

# Label id = index. Each object class has one texture and one outline.
CLASSES = ("background", "striped", "dotted", "checkered", "wavy", "zigzag")
SHAPES = {"striped": "square", "dotted": "circle", "checkered": "triangle", "wavy": "hexagon", "zigzag": "ellipse"}
_POLYGON_SIDES = {"square": 4, "triangle": 3, "hexagon": 6}
_ROWS = ("top", "", "bottom")
_COLS = ("left", "", "right")


@dataclass
class Scene:
    image: np.ndarray  # uint8 [H, W, 3]
    mask: np.ndarray  # uint8 [H, W], class ids into CLASSES
    caption: str


def _pattern(kind: str, yy: np.ndarray, xx: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A binary or soft pattern in [0, 1] over the grid; period scales with the image size."""
    period = size / 14 * rng.uniform(0.8, 1.25)
    angle = rng.uniform(0, math.pi)
    u = xx * math.cos(angle) + yy * math.sin(angle)
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    if kind == "striped":
        return ((u % period) < period / 2).astype(np.float32)
    if kind == "dotted":
        du = (u % period) - period / 2
        dv = (v % period) - period / 2
        return (du * du + dv * dv < (period * 0.3) ** 2).astype(np.float32)
    if kind == "checkered":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    if kind == "wavy":
        return (((u + period * 0.6 * np.sin(2 * math.pi * v / (period * 2.5))) % period) < period / 2).astype(np.float32)
    if kind == "zigzag":
        tri = np.abs(((v / (period * 1.2)) % 2) - 1)
        return (((u + period * 1.2 * tri) % period) < period / 2).astype(np.float32)
    # background: smooth blotches, an upsampled coarse noise field
    coarse = rng.random((6, 6)).astype(np.float32)
    img = Image.fromarray((coarse * 255).astype(np.uint8)).resize((xx.shape[1], xx.shape[0]), Image.BICUBIC)
    return np.asarray(img, np.float32) / 255.0


def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, radius: float,
                rng: np.random.Generator) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    rot = rng.uniform(0, 2 * math.pi)
    if shape == "circle":
        return dy * dy + dx * dx <= radius * radius
    if shape == "ellipse":
        c, s = math.cos(rot), math.sin(rot)
        a, b = (dx * c + dy * s) / radius, (-dx * s + dy * c) / (radius * 0.55)
        return a * a + b * b <= 1.0
    sides = _POLYGON_SIDES[shape]
    theta = np.arctan2(dy, dx) - rot
    r = np.sqrt(dy * dy + dx * dx)
    sector = 2 * math.pi / sides
    # distance to the polygon's edge along each ray: r * cos(angle to nearest apothem) <= apothem
    return r * np.cos((theta % sector) - sector / 2) <= radius * math.cos(math.pi / sides)


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random colours with enough contrast that the pattern stays visible."""
    while True:
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        if abs(a.mean() - b.mean()) > 60:
            return a.astype(np.float32), b.astype(np.float32)


def _where(cy: float, cx: float, size: int) -> str:
    row, col = _ROWS[min(int(3 * cy / size), 2)], _COLS[min(int(3 * cx / size), 2)]
    return " ".join(w for w in (row, col) if w) or "center"


def render_scene(seed: int, size: int = 128, any_shape: bool = False, empty: bool = False) -> Scene:
    """One deterministic scene: a textured background and one to three textured shapes, each its class'
    outline, or with `any_shape` an outline drawn at random (from a generator of its own, so the scene is
    the same one but for its outlines); with `empty` the same background and no shape."""
    rng = np.random.default_rng(seed)
    outlines = np.random.default_rng([seed, 1])
    shapes = sorted(set(SHAPES.values()))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    lo, hi = _colours(rng)
    image = lo + _pattern("background", yy, xx, size, rng)[..., None] * (hi - lo)
    mask = np.zeros((size, size), np.uint8)
    phrases = []
    for _ in range(0 if empty else rng.integers(1, 4)):
        label = int(rng.integers(1, len(CLASSES)))
        kind = CLASSES[label]
        radius = size * rng.uniform(0.14, 0.26)
        cy, cx = rng.uniform(radius, size - radius, 2)
        shape = shapes[int(outlines.integers(len(shapes)))] if any_shape else SHAPES[kind]
        inside = _shape_mask(shape, yy, xx, cy, cx, radius, rng)
        lo, hi = _colours(rng)
        texture = lo + _pattern(kind, yy, xx, size, rng)[..., None] * (hi - lo)
        image[inside] = texture[inside]
        mask[inside] = label
        phrases.append(f"a {kind} {shape} at the {_where(cy, cx, size)}")
    image += rng.normal(0, 6, image.shape).astype(np.float32)
    caption = "a photo of " + (" and ".join(phrases) + " on " if phrases else "") + "a mottled background."
    return Scene(np.clip(image, 0, 255).astype(np.uint8), mask, caption)


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_labelled(output: str, split: str, count: int, first_seed: int, size: int, any_shape: bool = False) -> None:
    """The generic evaluation layout under SPLIT/: images/NAME.jpg, masks/NAME.png, classes.txt."""
    fs, root = fsspec.core.url_to_fs(output)
    root = f"{root.rstrip('/')}/{split}"
    for sub in ("images", "masks"):
        fs.makedirs(f"{root}/{sub}", exist_ok=True)
    for i in range(count):
        scene = render_scene(first_seed + i, size, any_shape)
        fs.pipe_file(f"{root}/images/{i:06d}.jpg", _encode(scene.image, "JPEG"))
        fs.pipe_file(f"{root}/masks/{i:06d}.png", _encode(scene.mask, "PNG"))
    fs.pipe_file(f"{root}/classes.txt", ("\n".join(CLASSES) + "\n").encode())


# Every tenth training scene is background alone. Web captions name backgrounds ("... on a white
# background") and the web holds pictures of nothing but a texture; a corpus without either gave its
# teacher no word for most of a scene's pixels, so no name explained the background's centre
# (BENCHMARKS.md, "The corpus names its background"). The labelled splits are unchanged.
EMPTY_EVERY = 10
# Part of a teacher's cache key (demo/teacher.py): 2 = captions name the background, empty scenes
CORPUS_VERSION = 2
TEST_SEEDS = 900_000  # where the test split's scenes start, past val's (500,000) and probe's (700,000)
ANY_SHAPE_TEST = "test_anyshape"  # the test split's scenes with every outline drawn at random


def write_corpus(output: str, num_train: int, num_val: int, size: int = 128, seed: int = 0, num_probe: int = 0,
                 num_test: int = 0) -> None:
    """Unlabelled training images with captions (train/), the labelled validation set (val/, the dev split
    settings are chosen on) and, optionally, a labelled set to fit linear probes on (probe/) and a
    labelled test split no setting is chosen on (test/, and the same scenes with any outline in
    test_anyshape/); disjoint seed ranges keep them apart."""
    fs, root = fsspec.core.url_to_fs(output)
    root = root.rstrip("/")
    fs.makedirs(f"{root}/train", exist_ok=True)
    for i in range(num_train):
        scene = render_scene(seed * 1_000_003 + i, size, empty=i % EMPTY_EVERY == EMPTY_EVERY - 1)
        fs.pipe_file(f"{root}/train/{i:06d}.jpg", _encode(scene.image, "JPEG"))
        fs.pipe_file(f"{root}/train/{i:06d}.txt", scene.caption.encode())
    write_labelled(output, "val", num_val, seed * 1_000_003 + 500_000, size)
    if num_probe:
        write_labelled(output, "probe", num_probe, seed * 1_000_003 + 700_000, size)
    if num_test:
        write_labelled(output, "test", num_test, seed * 1_000_003 + TEST_SEEDS, size)
        write_labelled(output, ANY_SHAPE_TEST, num_test, seed * 1_000_003 + TEST_SEEDS, size, any_shape=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, help="local folder or fsspec URL")
    parser.add_argument("--num-train", type=int, default=3000)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--num-probe", type=int, default=0, help="labelled scenes for linear probes")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_corpus(args.output, args.num_train, args.num_val, args.size, args.seed, args.num_probe)
    print(f"wrote {args.num_train} training and {args.num_val} validation scenes to {args.output}")


if __name__ == "__main__":
    main()
