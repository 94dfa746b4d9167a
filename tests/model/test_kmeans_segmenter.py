"""Spherical k-means and the segmenter on cases whose answer is known."""

import torch
import torch.nn.functional as F

from model.kmeans import grid_init, spherical_kmeans
from model.segmenter import SegmenterConfig, prototypes, segment


def planted(num_points: int, directions: torch.Tensor, noise: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    truth = torch.randint(len(directions), (num_points,), generator=g)
    x = F.normalize(directions[truth] + noise * torch.randn(num_points, directions.shape[1], generator=g), dim=-1)
    return x, truth


def test_kmeans_recovers_planted_clusters():
    directions = torch.eye(8)[:4]
    x, truth = planted(400, directions, 0.15, seed=0)
    centres, assign = spherical_kmeans(x[None], 4, 20, generator=torch.Generator().manual_seed(1))
    # every true cluster maps to exactly one found cluster and back
    pairs = set(zip(truth.tolist(), assign[0].tolist()))
    assert len(pairs) == 4 and len({a for _, a in pairs}) == 4
    found = centres[0][[a for t, a in sorted(pairs)]]
    assert torch.allclose(found @ directions.T, torch.eye(4), atol=0.05)


def test_kmeans_batches_are_independent_and_respect_valid():
    a, _ = planted(100, torch.eye(4)[:2], 0.05, seed=2)
    b, _ = planted(100, torch.eye(4)[2:], 0.05, seed=3)
    init = torch.stack([torch.eye(4)[:2], torch.eye(4)[2:]])
    centres, _ = spherical_kmeans(torch.stack([a, b]), 2, 10, init=init)
    alone, _ = spherical_kmeans(a[None], 2, 10, init=init[:1])
    assert torch.allclose(centres[:1], alone)
    # points marked invalid do not move the centres
    outlier = F.normalize(torch.ones(5, 4), dim=-1)
    valid = torch.cat([torch.ones(100, dtype=torch.bool), torch.zeros(5, dtype=torch.bool)])
    masked, _ = spherical_kmeans(torch.cat([a, outlier])[None], 2, 10, init=init[:1], valid=valid[None])
    assert torch.allclose(masked, alone, atol=1e-6)


def test_grid_init_is_cell_means():
    f = torch.zeros(1, 2, 4, 4)
    f[0, 0, :2, :] = 1  # top half points along e0, bottom half along e1
    f[0, 1, 2:, :] = 1
    centres = grid_init(f, (2, 1))
    assert torch.allclose(centres[0], torch.eye(2))


def two_by_two_scene():
    """Embeddings e0 on the left, e1 on the right; superpixels: top and bottom halves."""
    emb = torch.zeros(1, 2, 4, 4)
    emb[0, 0, :, :2] = 1
    emb[0, 1, :, 2:] = 1
    regions = torch.zeros(1, 4, 4, dtype=torch.long)
    regions[0, 2:] = 1
    return emb, regions


def test_segments_are_clusters_split_by_regions():
    emb, regions = two_by_two_scene()
    seg = segment(emb, regions, SegmenterConfig(grid=(1, 2), num_iters=5, position_weight=0))
    assert seg.count == 4
    labels = seg.labels[0]
    quadrants = [labels[:2, :2], labels[:2, 2:], labels[2:, :2], labels[2:, 2:]]
    assert all((q == q[0, 0]).all() for q in quadrants)
    assert len({int(q[0, 0]) for q in quadrants}) == 4
    assert seg.region[labels[0, 0]] == seg.region[labels[0, 3]] == 0  # top: region 0 of image 0
    assert seg.region[labels[3, 0]] == 1
    protos = prototypes(emb, seg)
    assert torch.allclose(protos[labels[0, 0]], torch.tensor([1.0, 0.0]))
    assert torch.allclose(protos[labels[3, 3]], torch.tensor([0.0, 1.0]))


def test_views_of_one_image_share_regions_and_pixels_without_region_are_left_out():
    emb, regions = two_by_two_scene()
    both = torch.cat([emb, emb.flip(-1)])
    regs = torch.cat([regions, regions])
    regs[1, :, 0] = -1  # e.g. padding in the second view
    seg = segment(both, regs, SegmenterConfig(grid=(1, 2), num_iters=5), source=torch.tensor([0, 0]))
    assert seg.count == 8
    assert set(seg.image.tolist()) == {0}
    assert set(seg.region.tolist()) == {0, 1}
    assert (seg.labels[1, :, 0] == -1).all() and (seg.labels[0] >= 0).all()
