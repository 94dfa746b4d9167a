"""Two augmented views of an image, applied identically to its pixels, superpixels and dense CLIP features.

Every geometric change is one box in normalised image coordinates plus a flip, resampled with
`grid_sample(align_corners=False)`: a point of the box lands on the same place of the scene
whatever the resolution of the map it is read from, so a 14x14 CLIP grid and a 224x224 image
stay aligned exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ViewConfig:
    crop_size: int = 224  # output side in pixels
    scale: tuple[float, float] = (0.5, 1.5)  # zoom: the box covers crop_size / scale image pixels
    flip_prob: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    # A box wider than the image (scale below crop_size / image side) shows all of it inside black
    # padding, as HSG's views may zoom out; the padding is no superpixel and is left out of every loss
    # (the batch's `valid`). False caps the box at the image: such views are the whole image.
    zoom_out: bool = False

    def __post_init__(self):
        if self.crop_size < 8 or not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"view crop_size must be >= 8 and scale a positive range, got {self.crop_size}, {self.scale}")
        for name in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"view {name} must lie in [0, 1]")


@dataclass(frozen=True)
class Box:
    """A square-pixel crop in normalised coordinates ([0, 1] over the image), mirrored when `flip`."""

    top: float
    left: float
    bottom: float
    right: float
    flip: bool = False


def sample_box(height: int, width: int, cfg: ViewConfig, rng: random.Random) -> Box:
    """A random zoom-and-crop: a square of side crop_size / scale image pixels inside the image, capped by
    it; with `zoom_out`, a side past the image's holds all of it along that axis, at a random place."""
    side = cfg.crop_size / rng.uniform(*cfg.scale)
    if not cfg.zoom_out:
        side = min(side, height, width)
    # inside the image where the box is smaller, around it where larger
    top, left = rng.uniform(min(0, height - side), max(0, height - side)), rng.uniform(min(0, width - side),
                                                                                       max(0, width - side))
    return Box(top / height, left / width, (top + side) / height, (left + side) / width, rng.random() < cfg.flip_prob)


def crop_resize(x: torch.Tensor, box: Box, size: int, mode: str = "bilinear", padding: str = "border") -> torch.Tensor:
    """Resample the box of x [C, H, W] (any resolution of the same scene) onto a [C, size, size] grid; where
    the box leaves the image, `padding` as grid_sample's padding_mode ("zeros": black, id 0)."""
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size  # output pixel centres in [0, 1]
    ys = box.top + (box.bottom - box.top) * centres
    xs = box.left + (box.right - box.left) * centres
    if box.flip:
        xs = xs.flip(0)
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1) * 2 - 1  # [size, size, (x, y)]
    dtype = x.dtype if x.is_floating_point() else torch.float32
    out = F.grid_sample(x[None].to(dtype), grid[None].to(dtype), mode=mode, padding_mode=padding,
                        align_corners=False)[0]
    return out if x.is_floating_point() else out.round().to(x.dtype)


def photometric(image: torch.Tensor, cfg: ViewConfig, rng: random.Random) -> torch.Tensor:
    """Colour jitter, grayscale and blur (HSG's defaults) on a float [3, H, W] image in [0, 1]."""
    # here, not with the module: the trainer's config (ViewConfig) is read before a mistake is reported,
    # and torchvision brings torch._dynamo (2-3 s)
    import torchvision.transforms.v2.functional as TF

    if rng.random() < cfg.jitter_prob:
        b, c, s, h = cfg.jitter
        image = TF.adjust_brightness(image, rng.uniform(max(0, 1 - b), 1 + b))
        image = TF.adjust_contrast(image, rng.uniform(max(0, 1 - c), 1 + c))
        image = TF.adjust_saturation(image, rng.uniform(max(0, 1 - s), 1 + s))
        image = TF.adjust_hue(image, rng.uniform(-h, h))
    if rng.random() < cfg.grayscale_prob:
        image = TF.rgb_to_grayscale(image, num_output_channels=3)
    if rng.random() < cfg.blur_prob:
        sigma = rng.uniform(*cfg.blur_sigma)
        image = TF.gaussian_blur(image, kernel_size=2 * round(3 * sigma) + 1, sigma=sigma)
    return image.clamp(0, 1)


def make_views(image: torch.Tensor, regions: torch.Tensor, clip_dense: torch.Tensor | None, cfg: ViewConfig,
               feature_size: int, rng: random.Random) -> dict[str, torch.Tensor]:
    """Two views of one sample.

    image: uint8 [3, H, W]; regions: [H, W] superpixel ids; clip_dense: [D, gh, gw] over the whole image,
    or None when the teacher runs on the views themselves (the trainer's online teacher).
    Returns images [2, 3, S, S] float in [0, 1], regions [2, S, S] long (-1 on padding), valid [2, F, F]
    bool (the student's grid cells inside the image: what the CLIP terms score), boxes [2, 5] (top, left,
    bottom, right, flip), and clip [2, D, F, F] float (F = feature_size, the student's grid) or, with
    no clip_dense, teacher_images [2, 3, S, S]: the same crops before the colour changes, which are the
    student's augmentation, not something the teacher should describe.
    """
    h, w = image.shape[-2:]
    pixels = image.float() / 255
    inside = torch.ones(1, h, w, device=image.device)
    views = {"images": [], "regions": [], "valid": [], "boxes": [],
             "clip" if clip_dense is not None else "teacher_images": []}
    for _ in range(2):
        box = sample_box(h, w, cfg, rng)
        crop = crop_resize(pixels, box, cfg.crop_size, padding="zeros")
        views["images"].append(photometric(crop, cfg, rng))
        in_view = crop_resize(inside, box, cfg.crop_size, mode="nearest", padding="zeros")[0] > 0.5
        view_regions = crop_resize(regions[None].long(), box, cfg.crop_size, mode="nearest")[0]
        views["regions"].append(torch.where(in_view, view_regions, -1))
        views["valid"].append(crop_resize(inside, box, feature_size, mode="nearest", padding="zeros")[0] > 0.5)
        if clip_dense is None:
            views["teacher_images"].append(crop)
        else:
            views["clip"].append(crop_resize(clip_dense.float(), box, feature_size))
        views["boxes"].append(torch.tensor([box.top, box.left, box.bottom, box.right, float(box.flip)]))
    return {k: torch.stack(v) for k, v in views.items()}


def collate_views(samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]], cfg: ViewConfig,
                  feature_size: int, rng: random.Random) -> dict[str, torch.Tensor]:
    """A training batch from (image, regions, clip_dense) samples: first views of all, then second views.

    Returns images [2B, 3, S, S], regions [2B, S, S], clip [2B, D, F, F] (or teacher_images
    [2B, 3, S, S] when the samples carry no features), boxes [2B, 5] and source [2B] (the sample each
    view comes from, for the contrastive loss's positives).
    """
    pairs = [make_views(image, regions, dense, cfg, feature_size, rng) for image, regions, dense in samples]
    batch = {k: torch.cat([p[k][v:v + 1] for v in range(2) for p in pairs]) for k in pairs[0]}
    batch["source"] = torch.arange(len(samples)).repeat(2)
    return batch
