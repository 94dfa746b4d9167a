"""Pixel-segment contrastive loss (SegSort / HSG): a pixel is pulled toward the segments of its region."""

from __future__ import annotations

import torch

from model.segmenter import Segments, prototypes


def pixel_segment_loss(embeddings: torch.Tensor, segments: Segments, concentration: float = 16.0,
                       exclude_own: bool = True, extra_negatives: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over pixels of -log(sum_pos exp(k<z,v>) / sum_all exp(k<z,v>)).

    embeddings: [B, D, h, w] unit (both views stacked); positives of a pixel are the segments of its
    own region of its own source image, in either view; every other segment of the batch is a
    negative. With `exclude_own`, the pixel's own segment leaves the numerator when its region has
    other segments (HSG), so the loss pulls segments of a region together rather than a pixel to itself.
    `extra_negatives` [N, D] (unit, no gradient: other ranks' segments, as HSG gathers them) join every
    pixel's denominator and never its numerator.
    """
    d = embeddings.shape[1]
    labels = segments.labels.reshape(-1)
    keep = labels >= 0
    z = embeddings.permute(0, 2, 3, 1).reshape(-1, d)[keep]  # [P, D]
    own = labels[keep]  # [P]
    logits = concentration * z @ prototypes(embeddings, segments).T  # [P, S]
    if extra_negatives is not None and len(extra_negatives):
        extra = concentration * z @ extra_negatives.to(z.dtype).T  # [P, N]
        logits = torch.cat([logits, extra], 1)
    positive = segments.region.unsqueeze(0) == segments.region[own].unsqueeze(1)  # [P, S]
    if exclude_own:
        others = positive.clone()
        others[torch.arange(own.numel(), device=own.device), own] = False
        positive = torch.where(others.any(1, keepdim=True), others, positive)
    positive = torch.cat([positive, positive.new_zeros(len(positive), logits.shape[1] - positive.shape[1])], 1)
    pos_logits = logits.masked_fill(~positive, float("-inf"))
    return (torch.logsumexp(logits, 1) - torch.logsumexp(pos_logits, 1)).mean()
