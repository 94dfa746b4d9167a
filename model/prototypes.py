"""Class prototypes in CLIP space: cosine logits against them, and discovery of unknown ones."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.kmeans import spherical_kmeans


def cosine_logits(features: torch.Tensor, prototypes: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """[B, D, h, w] features x [C, D] prototypes -> [B, C, h, w] cosine / temperature."""
    return torch.einsum("bdhw,cd->bchw", F.normalize(features, dim=1), F.normalize(prototypes, dim=-1).to(features.dtype)) / temperature


def discover_unknown(features: torch.Tensor, known: torch.Tensor | None, num_clusters: int, max_similarity: float,
                     num_iters: int = 30, seed: int = 0) -> torch.Tensor:
    """Centres of a spherical k-means over dense CLIP features that no known prototype explains.

    features: [N, D] sampled dense features; known: [C, D] text prototypes or None (class-free).
    A centre is dropped when its cosine to some known prototype exceeds `max_similarity`.
    Returns [U, D] unit vectors, U <= num_clusters.
    """
    x = F.normalize(features.float(), dim=-1).unsqueeze(0)
    generator = torch.Generator().manual_seed(seed)
    centres, assign = spherical_kmeans(x, num_clusters, num_iters, generator=generator)
    centres = centres[0]
    used = torch.bincount(assign[0], minlength=num_clusters) > 0
    keep = used
    if known is not None and known.numel():
        keep = keep & ((centres @ F.normalize(known.float(), dim=-1).T).max(1).values <= max_similarity)
    return centres[keep]
