"""The training objective: the three losses of CLIP-S4 on a batch of view pairs, weighted by a config."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from model.losses.contrastive import pixel_segment_loss
from model.losses.embedding import DISTANCES, embedding_consistency
from model.losses.semantic import semantic_consistency
from model.network import ModelOutput
from model.prototypes import TARGET_RULES, SemanticTargets
from model.segmenter import SegmenterConfig, prototypes, segment

NEGATIVES = ("rank", "all_ranks")


@dataclass(frozen=True)
class LossConfig:
    """Weights of the three terms; a weight of 0 switches a term off (each ablation is one flag)."""

    contrastive_weight: float = 1.0
    embedding_weight: float = 1.0
    semantic_weight: float = 1.0
    concentration: float = 16.0  # kappa of the pixel-segment loss (HSG)
    exclude_own_segment: bool = True
    embedding_distance: str = "cosine"  # a key of model.losses.embedding.DISTANCES
    student_temperature: float = 0.03
    teacher_temperature: float = 0.03
    # how the semantic term's distribution spans names and unknown prototypes (model.prototypes):
    # "hierarchical" keeps CLIP's language signal across the modality gap; "flat" is the earlier rule,
    # under which the image-space prototypes take nearly all the mass (tests/model/test_semantic_targets.py)
    semantic_targets: str = "hierarchical"
    # whose segments are a pixel's negatives: this rank's batch, or every rank's (HSG all-gathers them;
    # the other ranks' come without gradient). The same on one worker.
    negatives: str = "rank"
    memory_bank: int = 0  # past batches' segment prototypes kept as more negatives (HSG's bank); 0 = none
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)

    @property
    def weights(self) -> dict[str, float]:
        """Each term's weight in the total, by the name compute_losses gives the term."""
        return {"contrastive": self.contrastive_weight, "embedding": self.embedding_weight,
                "semantic": self.semantic_weight}

    def __post_init__(self):
        if self.embedding_distance not in DISTANCES:
            raise ValueError(f"embedding_distance {self.embedding_distance!r} unknown (choose from {', '.join(DISTANCES)})")
        if self.semantic_targets not in TARGET_RULES:
            raise ValueError(f"semantic_targets {self.semantic_targets!r} unknown (choose from {', '.join(TARGET_RULES)})")
        if self.memory_bank < 0:
            raise ValueError(f"memory_bank must be >= 0, got {self.memory_bank}")
        if self.negatives not in NEGATIVES:
            raise ValueError(f"negatives {self.negatives!r} unknown (choose from {', '.join(NEGATIVES)})")
        if min(self.contrastive_weight, self.embedding_weight, self.semantic_weight) < 0:
            raise ValueError("loss weights must be >= 0")
        if min(self.concentration, self.student_temperature, self.teacher_temperature) <= 0:
            raise ValueError("concentration and temperatures must be > 0")


def regions_on_grid(regions: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Superpixel ids [B, H, W] at the image's resolution -> [B, h, w]: the id at each grid cell's
    centre. (Nearest interpolation reads a cell's top-left pixel: 8 px off at stride 16.)"""
    (height, width), (h, w) = regions.shape[-2:], size
    rows = ((torch.arange(h, device=regions.device) + 0.5) * height / h).long().clamp(max=height - 1)
    cols = ((torch.arange(w, device=regions.device) + 0.5) * width / w).long().clamp(max=width - 1)
    return regions[:, rows][:, :, cols].long()


def compute_losses(out: ModelOutput, regions: torch.Tensor, clip_dense: torch.Tensor, source: torch.Tensor,
                   targets: SemanticTargets | None, cfg: LossConfig,
                   extra_negatives: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Weighted terms and their sum ("total") for one batch of views.

    out: the network on all views [V, ...]; regions: [V, H, W] superpixels of each view;
    clip_dense: [V, Dc, h, w] CLIP features aligned to each view on the student grid;
    source: [V] source image per view; targets: the names and centres (None: no semantic term);
    extra_negatives: this batch's segment prototypes [S, D] -> more negatives [N, D] for the contrastive
    term, without gradient (the trainer's: other ranks' segments, loss.negatives; past batches',
    loss.memory_bank);
    valid: [V, h, w] bool, the cells inside the image (a zoomed-out view's padding is not): the CLIP
    terms average over them (the contrastive term skips padding by its region id, -1).
    """
    h, w = out.embeddings.shape[-2:]
    if clip_dense.shape[-2:] != (h, w):
        clip_dense = F.interpolate(clip_dense.float(), size=(h, w), mode="bilinear", align_corners=False)
    terms: dict[str, torch.Tensor] = {}
    if cfg.contrastive_weight:
        segments = segment(out.embeddings, regions_on_grid(regions, (h, w)), cfg.segmenter, source)
        extra = extra_negatives(prototypes(out.embeddings, segments).detach()) if extra_negatives else None
        terms["contrastive"] = pixel_segment_loss(out.embeddings, segments, cfg.concentration, cfg.exclude_own_segment,
                                                  extra)
    if cfg.embedding_weight:
        terms["embedding"] = embedding_consistency(out.clip, clip_dense, cfg.embedding_distance, valid)
    if cfg.semantic_weight and targets is not None and targets.num_classes:
        terms["semantic"] = semantic_consistency(out.clip, clip_dense, targets, cfg.student_temperature,
                                                 cfg.teacher_temperature, cfg.semantic_targets, valid)
    total = sum((cfg.weights[k] * v for k, v in terms.items()), out.embeddings.new_zeros(()))
    return {"total": total, **terms}
