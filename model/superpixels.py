"""Over-segmentation of an image into superpixel regions (the positives of the contrastive loss)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class SuperpixelConfig:
    method: str = "felzenszwalb"  # a key of METHODS
    scale: float = 100.0  # felzenszwalb: higher means larger regions
    sigma: float = 0.8
    min_size: int = 50  # felzenszwalb: pixels
    num_segments: int = 64  # slic: about this many regions
    compactness: float = 10.0  # slic
    # 0: segment the image as it is; N: segment a copy shrunk so its longer side is N pixels (min_size
    # scaled with the area) and enlarge the regions back (nearest). The cost follows the pixel count:
    # Felzenszwalb on a 224 canvas 71 ms, at 112 px 12 ms (BENCHMARKS.md "Superpixels")
    resolution: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"superpixel method {self.method!r} unknown (choose from {', '.join(METHODS)})")
        if self.resolution < 0:
            raise ValueError(f"superpixel resolution must be >= 0, got {self.resolution}")


def _felzenszwalb(image: np.ndarray, cfg: SuperpixelConfig) -> np.ndarray:
    from skimage.segmentation import felzenszwalb

    return felzenszwalb(image, scale=cfg.scale, sigma=cfg.sigma, min_size=cfg.min_size)


def _slic(image: np.ndarray, cfg: SuperpixelConfig) -> np.ndarray:
    from skimage.segmentation import slic

    return slic(image, n_segments=cfg.num_segments, compactness=cfg.compactness, sigma=cfg.sigma, start_label=0)


METHODS = {"felzenszwalb": _felzenszwalb, "slic": _slic}


def superpixels(image: np.ndarray, cfg: SuperpixelConfig) -> np.ndarray:
    """uint8 [H, W, 3] -> uint16 [H, W] region ids numbered 0..R-1 (compact to store as PNG)."""
    h, w = image.shape[:2]
    factor = cfg.resolution / max(h, w) if cfg.resolution else 1.0
    if factor < 1:
        small = cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)
        shrunk = dataclasses.replace(cfg, min_size=max(1, round(cfg.min_size * factor ** 2)), resolution=0)
        labels = cv2.resize(METHODS[cfg.method](small, shrunk).astype(np.int32), (w, h),
                            interpolation=cv2.INTER_NEAREST)
    else:
        labels = METHODS[cfg.method](image, cfg)
    _, dense = np.unique(labels, return_inverse=True)
    if dense.max() >= 2**16:
        raise ValueError(f"{dense.max() + 1} regions do not fit uint16; raise scale or lower num_segments")
    return dense.reshape(labels.shape).astype(np.uint16)
