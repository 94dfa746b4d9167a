"""Views: crops and flips land exactly on the same scene points in the image, superpixels and CLIP grid."""

import random

import pytest
import torch

from model.views import Box, ViewConfig, crop_resize, make_views, sample_box


def coordinate_map(height: int, width: int, image_h: int, image_w: int) -> torch.Tensor:
    """A [2, h, w] map whose cells hold the image-pixel coordinates (y, x) of their centres."""
    ys = (torch.arange(height) + 0.5) * image_h / height
    xs = (torch.arange(width) + 0.5) * image_w / width
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"))


def test_pixel_aligned_crop_equals_slicing_and_flip_mirrors():
    x = torch.arange(3 * 12 * 16, dtype=torch.float32).view(3, 12, 16)
    box = Box(top=2 / 12, left=4 / 16, bottom=10 / 12, right=12 / 16)
    assert torch.allclose(crop_resize(x, box, 8), x[:, 2:10, 4:12], atol=1e-3)  # float rounding only
    flipped = Box(box.top, box.left, box.bottom, box.right, flip=True)
    assert torch.allclose(crop_resize(x, flipped, 8), x[:, 2:10, 4:12].flip(-1), atol=1e-3)
    labels = torch.randint(0, 50, (1, 12, 16))
    assert torch.equal(crop_resize(labels, box, 8, mode="nearest"), labels[:, 2:10, 4:12])


@pytest.mark.parametrize("flip", [False, True])
def test_feature_grid_crop_lands_on_the_same_scene_points_as_the_image(flip):
    # a coarse grid (like CLIP's 14x14 over a 224 image) holding the scene coordinates of its cells:
    # bilinear resampling of a linear map is exact, so the view of the grid must hold, at every
    # output cell, the scene coordinates of that cell's centre in the image view
    image_h, image_w = 96, 128
    grid = coordinate_map(12, 16, image_h, image_w)
    box = Box(top=0.25, left=0.2, bottom=0.75, right=0.575, flip=flip)
    out = crop_resize(grid, box, 6)
    side_y, side_x = (box.bottom - box.top) * image_h, (box.right - box.left) * image_w
    centres = torch.arange(6) + 0.5
    ys = box.top * image_h + centres * side_y / 6
    xs = box.left * image_w + centres * side_x / 6
    expected = torch.stack(torch.meshgrid(ys, xs.flip(0) if flip else xs, indexing="ij"))
    assert torch.allclose(out, expected, atol=1e-4)


def test_sampled_boxes_stay_inside_and_follow_the_scale():
    cfg = ViewConfig(crop_size=64, scale=(1.0, 1.0), flip_prob=0.0)
    rng = random.Random(0)
    for _ in range(50):
        box = sample_box(200, 300, cfg, rng)
        assert 0 <= box.top < box.bottom <= 1 and 0 <= box.left < box.right <= 1
        assert abs((box.bottom - box.top) * 200 - 64) < 1e-6 and abs((box.right - box.left) * 300 - 64) < 1e-6
        assert not box.flip
    small = sample_box(40, 50, ViewConfig(crop_size=64, scale=(0.5, 0.5)), rng)
    assert abs((small.bottom - small.top) * 40 - 40) < 1e-6  # capped by the image


def test_make_views_shapes_and_consistency():
    image = torch.randint(0, 256, (3, 80, 100), dtype=torch.uint8)
    regions = torch.zeros(80, 100, dtype=torch.long)
    regions[:, 50:] = 7
    dense = coordinate_map(5, 7, 80, 100)
    cfg = ViewConfig(crop_size=32, jitter_prob=1.0, grayscale_prob=0.5, blur_prob=0.5)
    views = make_views(image, regions, dense, cfg, feature_size=4, rng=random.Random(3))
    assert views["images"].shape == (2, 3, 32, 32) and views["images"].dtype == torch.float32
    assert 0 <= views["images"].min() and views["images"].max() <= 1
    assert views["regions"].shape == (2, 32, 32) and set(views["regions"].unique().tolist()) <= {0, 7}
    assert views["clip"].shape == (2, 2, 4, 4)
    for v in range(2):
        top, left, bottom, right, flip = views["boxes"][v].tolist()
        # the region boundary sits at scene x = 50: pixels of the view left of it (in scene terms) are 0
        xs = left * 100 + (torch.arange(32) + 0.5) * (right - left) * 100 / 32
        xs = xs.flip(0) if flip else xs
        inside = (xs - 50).abs() > (right - left) * 100 / 32  # away from the boundary
        expected = torch.where(xs >= 50, 7, 0)
        assert torch.equal(views["regions"][v, 0][inside], expected[inside])


def test_a_zoomed_out_view_shows_the_whole_image_in_padding_no_loss_reads():
    image = torch.full((3, 40, 40), 200, dtype=torch.uint8)
    regions = torch.full((40, 40), 3, dtype=torch.long)
    cfg = ViewConfig(crop_size=32, scale=(0.4, 0.4), zoom_out=True, flip_prob=0.0, jitter_prob=0.0,
                     grayscale_prob=0.0)  # the box: 80 image pixels, twice the image's side
    box = sample_box(40, 40, cfg, random.Random(0))
    assert box.top <= 0 and box.left <= 0 and box.bottom >= 1 and box.right >= 1  # all of the image inside
    views = make_views(image, regions, coordinate_map(4, 4, 40, 40), cfg, feature_size=8, rng=random.Random(1))
    for v in range(2):
        inside = views["regions"][v] == 3
        assert set(views["regions"][v].unique().tolist()) == {-1, 3}  # padding is no region
        assert 0.2 < inside.float().mean() < 0.3  # a quarter of the view is the image
        # black padding; bilinear sampling blends the one row of pixels along the image's edge
        padding, image_part = views["images"][v][:, ~inside], views["images"][v][:, inside]
        assert padding.median() == 0 and padding.mean() < 0.1
        assert image_part.median() == pytest.approx(200 / 255) and image_part.mean() > 0.6
        assert views["valid"][v].float().mean() == pytest.approx(0.25, abs=0.07) and not views["valid"][v].all()
    capped = make_views(image, regions, None, ViewConfig(crop_size=32, scale=(0.4, 0.4)), feature_size=8,
                        rng=random.Random(1))
    assert capped["valid"].all() and (capped["regions"] == 3).all()  # without zoom_out: the whole image


def test_views_without_features_give_the_teacher_the_same_crops_before_colour_changes():
    """An online teacher's input: the same boxes, images and regions as with stored features (the rng
    draws do not depend on them), plus each view's crop before jitter, grayscale and blur."""
    image = torch.randint(0, 256, (3, 80, 100), dtype=torch.uint8)
    regions = torch.randint(0, 5, (80, 100))
    cfg = ViewConfig(crop_size=32, jitter_prob=1.0, grayscale_prob=0.5, blur_prob=0.5)
    stored = make_views(image, regions, coordinate_map(5, 7, 80, 100), cfg, feature_size=4, rng=random.Random(3))
    online = make_views(image, regions, None, cfg, feature_size=4, rng=random.Random(3))
    assert "clip" not in online and "teacher_images" not in stored
    for key in ("images", "regions", "boxes"):
        assert torch.equal(stored[key], online[key])
    for v in range(2):
        top, left, bottom, right, flip = online["boxes"][v].tolist()
        crop = crop_resize(image.float() / 255, Box(top, left, bottom, right, bool(flip)), 32)
        torch.testing.assert_close(online["teacher_images"][v], crop, atol=1e-5, rtol=0)  # boxes kept in float32
    assert not torch.equal(online["teacher_images"], online["images"])  # the student's views were jittered
