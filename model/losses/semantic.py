"""Semantic consistency: the student's per-pixel distribution over the target classes matches CLIP's."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.prototypes import cosine_logits


def semantic_consistency(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor,
                         student_temperature: float, teacher_temperature: float,
                         valid: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher || student) per pixel, averaged: sum_c q_c (log q_c - log p_c).

    student, teacher: [B, D, h, w] CLIP-space features; targets: [C, D] known text prototypes and
    unknown prototypes. q = softmax(cos(teacher, targets) / teacher_temperature) is a fixed target
    (no gradient), p the same for the student; this direction is the cross-entropy to soft labels
    up to q's entropy, so the student covers every class the teacher gives mass to.
    """
    log_p = F.log_softmax(cosine_logits(student, targets, student_temperature), dim=1)
    with torch.no_grad():
        log_q = F.log_softmax(cosine_logits(teacher.to(student.dtype), targets, teacher_temperature), dim=1)
    per_pixel = (log_q.exp() * (log_q - log_p)).sum(1)  # [B, h, w]
    return per_pixel[valid].mean() if valid is not None else per_pixel.mean()
