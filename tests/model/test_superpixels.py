"""Superpixels at a lower resolution: the same image size and id range, region edges where the image's
are, and no change when the image is already that small."""

import numpy as np
import pytest

from model.superpixels import SuperpixelConfig, superpixels


def two_halves(size: int = 128) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = np.zeros((size, size, 3), np.uint8)
    image[:, : size // 2] = (200, 30, 30)
    image[:, size // 2:] = (30, 30, 200)
    return np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("method", ["felzenszwalb", "slic"])
def test_a_lower_resolution_keeps_the_size_the_ids_and_the_edges(method):
    image = two_halves()
    full = superpixels(image, SuperpixelConfig(method=method))
    small = superpixels(image, SuperpixelConfig(method=method, resolution=64))
    for labels in (full, small):
        assert labels.shape == (128, 128) and labels.dtype == np.uint16
        assert set(np.unique(labels).tolist()) == set(range(labels.max() + 1))
        # no region straddles the colour edge (two pixels of slack for the enlargement)
        left, right = set(np.unique(labels[:, :62]).tolist()), set(np.unique(labels[:, 66:]).tolist())
        assert not left & right
    assert np.array_equal(superpixels(image, SuperpixelConfig(method=method, resolution=128)), full)


def test_resolution_is_checked():
    with pytest.raises(ValueError, match="resolution"):
        SuperpixelConfig(resolution=-1)
