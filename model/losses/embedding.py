"""Embedding consistency: the student's CLIP-space projection matches CLIP's dense features pixel by pixel."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _l1(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return (student - teacher).abs().mean(1)  # MaskCLIP+'s distillation, on the raw features


def _cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return 1 - F.cosine_similarity(student, teacher, dim=1)


DISTANCES = {"l1": _l1, "cosine": _cosine}


def embedding_consistency(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine",
                          valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean per-pixel distance. student, teacher: [B, D, h, w] on the same grid; valid: [B, h, w] bool."""
    per_pixel = DISTANCES[kind](student, teacher.detach().to(student.dtype))  # the teacher is a fixed target
    return per_pixel[valid].mean() if valid is not None else per_pixel.mean()
