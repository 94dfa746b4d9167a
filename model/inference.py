"""Using a trained network: dense outputs for images of any size, text-driven, clustered and class-free labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.kmeans import spherical_kmeans
from model.network import ModelOutput, SegNet
from model.prototypes import cosine_logits


def _pad_to(images: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = images.shape[-2:]
    return F.pad(images, (0, -w % multiple, 0, -h % multiple), mode="replicate")


@torch.no_grad()
def dense_outputs(net: SegNet, images: torch.Tensor, window: int = 0, overlap: float = 1 / 3) -> ModelOutput:
    """The network's outputs on the grid of the whole image, [B, 3, H, W] in [0, 1] -> [B, ., ceil(H/s), ceil(W/s)].

    window > 0 runs square tiles of that many pixels (a multiple of the stride) overlapping by
    `overlap` and averages them where they meet, so memory stays bounded for large images.
    """
    s = net.output_stride
    padded = _pad_to(images, s)
    if window <= 0 or max(padded.shape[-2:]) <= window:
        return net(padded)
    if window % s:
        raise ValueError(f"window {window} must be a multiple of the output stride {s}")
    h, w = padded.shape[-2:]
    step = max(s, int(window * (1 - overlap)) // s * s)
    tops = sorted({min(t, max(h - window, 0)) for t in range(0, max(h - window, 0) + step, step)})
    lefts = sorted({min(t, max(w - window, 0)) for t in range(0, max(w - window, 0) + step, step)})
    sums, count = None, padded.new_zeros(1, 1, h // s, w // s)
    for top in tops:
        for left in lefts:
            tile = net(padded[..., top:top + window, left:left + window])
            if sums is None:
                sums = [padded.new_zeros(*t.shape[:2], h // s, w // s) for t in tile]
            rows, cols = slice(top // s, top // s + tile[0].shape[-2]), slice(left // s, left // s + tile[0].shape[-1])
            for acc, t in zip(sums, tile):
                acc[..., rows, cols] += t
            count[..., rows, cols] += 1
    return ModelOutput(F.normalize(sums[0] / count, dim=1), sums[1] / count)


def upsample_labels(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, C, h, w] scores -> [B, H, W] argmax after bilinear upsampling of the scores."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1)


def language_labels(out: ModelOutput, text_prototypes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-pixel argmax of cosine to the prompts' text embeddings [C, Dc]: [B, H, W] class ids."""
    return upsample_labels(cosine_logits(out.clip, text_prototypes), size)


def classfree_labels(out: ModelOutput, known: torch.Tensor, unknown: torch.Tensor, size: tuple[int, int]
                     ) -> torch.Tensor:
    """Labels over known names then discovered prototypes: ids >= len(known) are unnamed classes."""
    return language_labels(out, torch.cat([known, unknown.to(known.dtype)]), size)


def classfree_names(known_names: list[str], num_unknown: int) -> list[str]:
    return list(known_names) + [f"unknown-{i}" for i in range(num_unknown)]


def fit_clusters(embeddings: torch.Tensor, num_clusters: int, num_iters: int = 30, num_restarts: int = 4,
                 seed: int = 0) -> torch.Tensor:
    """Spherical k-means over pixel embeddings [N, E] of a dataset; best of several restarts -> [K, E].

    The restarts run as one batched problem; the one with the highest total cosine wins.
    """
    x = F.normalize(embeddings.float(), dim=-1).unsqueeze(0).expand(num_restarts, -1, -1)
    centres, assign = spherical_kmeans(x, num_clusters, num_iters, generator=torch.Generator().manual_seed(seed))
    score = torch.einsum("rnd,rnd->r", x, torch.gather(centres, 1, assign.unsqueeze(-1).expand(-1, -1, x.shape[-1])))
    return centres[score.argmax()]


def cluster_labels(out: ModelOutput, centres: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest cluster centre [K, E] for every pixel embedding: [B, H, W] cluster ids."""
    return upsample_labels(cosine_logits(out.embeddings, centres), size)
