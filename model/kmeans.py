"""Batched spherical (von Mises-Fisher) k-means: many small problems at once, no Python loop over points."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def grid_init(features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Initial centres as the mean feature of each cell of a `grid` over the image.

    features: [B, D, H, W] -> centres [B, gh*gw, D] (normalised). Cells follow HSG's grid start,
    which gives every image the same spatially spread initial segments.
    """
    pooled = F.adaptive_avg_pool2d(features, grid)  # [B, D, gh, gw]
    return F.normalize(pooled.flatten(2).transpose(1, 2), dim=-1)


def kmeanspp_init(x: torch.Tensor, num_clusters: int, valid: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """k-means++ seeding under cosine distance: each next centre drawn with weight (1 - max cos)^2.

    x: [B, N, D] unit -> [B, K, D]. Random draws happen on the CPU so a seed means the same on any device.
    """
    b, n, d = x.shape
    if n < num_clusters:
        raise ValueError(f"{n} points cannot make {num_clusters} clusters")
    base = (valid if valid is not None else torch.ones(b, n, dtype=torch.bool, device=x.device)).float()
    weight, picks = base, []
    for _ in range(num_clusters):
        if picks:
            nearest = torch.einsum("bnd,bkd->bnk", x, torch.stack(picks, 1)).max(-1).values
            weight = base * (1 - nearest).clamp_min(0) ** 2
            weight = torch.where(weight.sum(1, keepdim=True) > 0, weight, base)  # all points already picked
        idx = torch.multinomial(weight.cpu(), 1, generator=generator).to(x.device)  # [B, 1]
        picks.append(torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, d))[:, 0])
    return torch.stack(picks, 1)


def spherical_kmeans(x: torch.Tensor, num_clusters: int, num_iters: int, init: torch.Tensor | None = None,
                     valid: torch.Tensor | None = None, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster unit vectors by cosine similarity, independently for each of B problems.

    x: [B, N, D] unit vectors; init: [B, K, D] (default: k-means++ seeding);
    valid: [B, N] bool, points left out of the centres (they still get an assignment).
    Returns centres [B, K, D] (unit) and assignments [B, N] (long). A cluster that loses all its
    points keeps its previous centre, so K stays fixed. Runs under no_grad: the assignment is a
    discrete choice and callers recompute prototypes with gradients from it.
    """
    with torch.no_grad():
        b, n, d = x.shape
        if init is None:
            init = kmeanspp_init(x, num_clusters, valid, generator)
        centres = F.normalize(init.to(x.dtype), dim=-1)
        weight = valid.to(x.dtype) if valid is not None else x.new_ones(b, n)
        for _ in range(num_iters):
            assign = torch.einsum("bnd,bkd->bnk", x, centres).argmax(-1)
            one_hot = F.one_hot(assign, num_clusters).to(x.dtype) * weight.unsqueeze(-1)  # [B, N, K]
            sums = torch.einsum("bnk,bnd->bkd", one_hot, x)
            empty = one_hot.sum(1) == 0  # [B, K]
            centres = torch.where(empty.unsqueeze(-1), centres, F.normalize(sums, dim=-1))
        assign = torch.einsum("bnd,bkd->bnk", x, centres).argmax(-1)
    return centres, assign
