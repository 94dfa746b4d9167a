"""Over-segmentation of an image into superpixel regions (the positives of the contrastive loss)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SuperpixelConfig:
    method: str = "felzenszwalb"  # a key of METHODS
    scale: float = 100.0  # felzenszwalb: higher means larger regions
    sigma: float = 0.8
    min_size: int = 50  # felzenszwalb: pixels
    num_segments: int = 64  # slic: about this many regions
    compactness: float = 10.0  # slic

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"superpixel method {self.method!r} unknown (choose from {', '.join(METHODS)})")


def _felzenszwalb(image: np.ndarray, cfg: SuperpixelConfig) -> np.ndarray:
    from skimage.segmentation import felzenszwalb

    return felzenszwalb(image, scale=cfg.scale, sigma=cfg.sigma, min_size=cfg.min_size)


def _slic(image: np.ndarray, cfg: SuperpixelConfig) -> np.ndarray:
    from skimage.segmentation import slic

    return slic(image, n_segments=cfg.num_segments, compactness=cfg.compactness, sigma=cfg.sigma, start_label=0)


METHODS = {"felzenszwalb": _felzenszwalb, "slic": _slic}


def superpixels(image: np.ndarray, cfg: SuperpixelConfig) -> np.ndarray:
    """uint8 [H, W, 3] -> uint16 [H, W] region ids numbered 0..R-1 (compact to store as PNG)."""
    labels = METHODS[cfg.method](image, cfg)
    _, dense = np.unique(labels, return_inverse=True)
    if dense.max() >= 2**16:
        raise ValueError(f"{dense.max() + 1} regions do not fit uint16; raise scale or lower num_segments")
    return dense.reshape(labels.shape).astype(np.uint16)
