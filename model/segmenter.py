"""Segments of a batch of embedding maps: per-image spherical k-means, split by superpixel regions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.kmeans import grid_init, spherical_kmeans


@dataclass(frozen=True)
class SegmenterConfig:
    grid: tuple[int, int] = (4, 4)  # k-means starts from this grid of cells: gh * gw clusters per image (HSG)
    num_iters: int = 15
    position_weight: float = 1.0  # weight of the (y, x) in [-1, 1] appended to each embedding; 0 = none

    def __post_init__(self):
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise ValueError(f"segmenter grid must be two positive ints, got {self.grid}")
        if self.num_iters < 0 or self.position_weight < 0:
            raise ValueError("segmenter num_iters and position_weight must be >= 0")


@dataclass
class Segments:
    """Segments of B maps, numbered 0..S-1 across the batch."""

    labels: torch.Tensor  # [B, h, w] long, segment per pixel, -1 where the pixel has no region
    image: torch.Tensor  # [S] long, source image of each segment (both views of an image share it)
    region: torch.Tensor  # [S] long, batch-unique region id: source image * num_regions + superpixel

    @property
    def count(self) -> int:
        return self.image.numel()


def with_positions(embeddings: torch.Tensor, weight: float) -> torch.Tensor:
    """[B, D, h, w] -> [B, D(+2), h, w] unit vectors, with weighted (y, x) coordinates appended."""
    if weight == 0:
        return embeddings
    b, _, h, w = embeddings.shape
    ys = torch.linspace(-1, 1, h, device=embeddings.device, dtype=embeddings.dtype)
    xs = torch.linspace(-1, 1, w, device=embeddings.device, dtype=embeddings.dtype)
    pos = torch.stack(torch.meshgrid(ys, xs, indexing="ij")).expand(b, -1, -1, -1) * weight
    return F.normalize(torch.cat([embeddings, pos], 1), dim=1)


def segment(embeddings: torch.Tensor, regions: torch.Tensor, cfg: SegmenterConfig,
            source: torch.Tensor | None = None) -> Segments:
    """Cluster each map, then cut every cluster along the superpixel regions.

    embeddings: [B, D, h, w] unit; regions: [B, h, w] long superpixel ids (-1 = none, e.g. padding);
    source: [B] long, the source image of each map (two views of one image share regions), default 0..B-1.
    """
    b, _, h, w = embeddings.shape
    source = torch.arange(b, device=embeddings.device) if source is None else source
    x = with_positions(embeddings.detach(), cfg.position_weight)
    num_clusters = cfg.grid[0] * cfg.grid[1]
    valid = regions.reshape(b, -1) >= 0
    _, assign = spherical_kmeans(x.flatten(2).transpose(1, 2), num_clusters, cfg.num_iters,
                                 init=grid_init(x, cfg.grid), valid=valid)
    num_regions = int(regions.max().item()) + 1
    # one integer per (map, cluster, region): unique() then numbers the segments densely
    key = (torch.arange(b, device=x.device).unsqueeze(1) * num_clusters + assign) * num_regions + regions.reshape(b, -1)
    unique, inverse = torch.unique(key[valid], return_inverse=True)
    labels = torch.full_like(key, -1)
    labels[valid] = inverse
    seg_map = unique // (num_clusters * num_regions)
    seg_image = source[seg_map]
    return Segments(labels.view(b, h, w), seg_image, seg_image * num_regions + unique % num_regions)


def prototypes(embeddings: torch.Tensor, segments: Segments) -> torch.Tensor:
    """Normalised mean embedding of each segment, with gradients: [B, D, h, w] -> [S, D]."""
    d = embeddings.shape[1]
    flat = embeddings.permute(0, 2, 3, 1).reshape(-1, d)
    labels = segments.labels.reshape(-1)
    keep = labels >= 0
    sums = flat.new_zeros(segments.count, d).index_add(0, labels[keep], flat[keep])
    return F.normalize(sums, dim=-1)
