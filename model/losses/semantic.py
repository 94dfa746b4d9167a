"""Semantic consistency: the student's per-pixel distribution over the target classes matches CLIP's."""

from __future__ import annotations

import torch

from model.prototypes import SemanticTargets, semantic_log_probs


def semantic_consistency(student: torch.Tensor, teacher: torch.Tensor, targets: SemanticTargets,
                         student_temperature: float, teacher_temperature: float, rule: str = "hierarchical",
                         valid: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher || student) per pixel, averaged: sum_c q_c (log q_c - log p_c).

    student, teacher: [B, D, h, w] CLIP-space features; targets: the known names and the centres
    (model.prototypes). q is the teacher's distribution under `rule` (model.prototypes.semantic_log_probs),
    a fixed target (no gradient), p the student's under the same rule; this direction is the
    cross-entropy to soft labels up to q's entropy, so the student covers every class the teacher
    gives mass to. Classes q gives no mass (the names, where no centre is explained) add nothing.
    """
    log_p = semantic_log_probs(student, targets, student_temperature, rule)
    with torch.no_grad():
        log_q = semantic_log_probs(teacher.to(student.dtype), targets, teacher_temperature, rule)
        q = log_q.exp()
    per_pixel = torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(log_p)).sum(1)  # [B, h, w]
    return per_pixel[valid].mean() if valid is not None else per_pixel.mean()
