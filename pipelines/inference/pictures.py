"""Label maps a person can look at: a palette, colour overlays, titled tiles with a legend, PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from model.metrics import IGNORE_INDEX


def palette(n: int = 256) -> np.ndarray:
    """uint8 [n, 3]: the PASCAL VOC colour map (the index's bits spread over R, G, B)."""
    ids, colours = np.arange(n), np.zeros((n, 3), np.int64)
    for bit in range(8):
        for channel in range(3):
            colours[:, channel] |= ((ids >> (3 * bit + channel)) & 1) << (7 - bit)
    return colours.astype(np.uint8)


# Class i takes VOC colour i + 1, so no class is black over a dark image; IGNORE_INDEX is black.
CLASS_COLOURS = np.roll(palette(), -1, axis=0)


def colorize(labels: np.ndarray) -> np.ndarray:
    """Class ids [H, W] -> uint8 [H, W, 3] in CLASS_COLOURS."""
    return CLASS_COLOURS[np.asarray(labels, dtype=np.int64) % 256]


def overlay_image(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The class colours blended over the image; ignored pixels keep the image."""
    blended = (1 - alpha) * image + alpha * colorize(labels).astype(np.float32)
    blended = np.where((np.asarray(labels) == IGNORE_INDEX)[..., None], image, blended)
    return blended.round().astype(np.uint8)


def compose(tiles: list[tuple[str, np.ndarray]], names: list[str], present: Iterable[int]) -> np.ndarray:
    """Titled RGB tiles side by side and a legend of the `present` class ids: uint8 [H', W', 3]."""
    font, line = ImageFont.load_default(), 14
    ids = sorted({int(i) for i in present})
    entries = [(names[i] if i < len(names) else "ignore" if i == IGNORE_INDEX else str(i), i) for i in ids]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    legend_w = 24 + max((int(probe.textlength(t, font=font)) for t, _ in entries), default=0)
    steps = [max(t.shape[1], int(probe.textlength(title, font=font))) + 6 for title, t in tiles]
    height = max(line + max(t.shape[0] for _, t in tiles), line * (len(entries) + 1))
    canvas = Image.new("RGB", (sum(steps) + legend_w, height), "white")
    draw, x = ImageDraw.Draw(canvas), 0
    for (title, tile), step in zip(tiles, steps):
        draw.text((x, 1), title, fill="black", font=font)
        canvas.paste(Image.fromarray(tile), (x, line))
        x += step
    for row, (text, i) in enumerate(entries):
        y = line * (row + 1)
        draw.rectangle((x, y + 1, x + 12, y + 12), fill=tuple(int(c) for c in CLASS_COLOURS[i % 256]), outline="black")
        draw.text((x + 18, y), text, fill="black", font=font)
    return np.asarray(canvas)


def encode_png(array: np.ndarray) -> bytes:
    """A PNG of an RGB image or a label map (8-bit up to 255 classes, else 16-bit)."""
    if array.ndim == 2:
        array = array.astype(np.uint8 if array.max(initial=0) < 256 else np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
