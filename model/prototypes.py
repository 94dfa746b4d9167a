"""Class prototypes in CLIP space: cosine logits against them, the semantic targets over known names and
unknown prototypes, and the discovery of those prototypes.

CLIP's image and text vectors lie in separate cones (the modality gap): an image feature's cosine to
another image feature is about 0.8, to the right class name about 0.3. So an image-space centre and a
text prototype cannot share one softmax, and "is this centre a known class" cannot be a cosine
threshold across the gap. Every comparison here stays within a modality or is relative among names:
- a centre is *explained* when its best name stands out from the other names (explained_centres);
- a pixel's target is hierarchical: its soft assignment to the centres (image to image) says how much
  of it a known name explains; that share is split over the names by the pixel's own zero-shot
  softmax (image to the names, relative), the rest stays on the unexplained centres.
The flat softmax over names and centres together is kept as the "flat" rule, to compare against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.kmeans import spherical_kmeans

TARGET_RULES = ("hierarchical", "flat")
EXPLAIN_RULES = ("margin", "cosine")


def cosine_logits(features: torch.Tensor, prototypes: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """[B, D, h, w] features x [C, D] prototypes -> [B, C, h, w] cosine / temperature."""
    return torch.einsum("bdhw,cd->bchw", F.normalize(features, dim=1), F.normalize(prototypes, dim=-1).to(features.dtype)) / temperature


@dataclass(frozen=True)
class SemanticTargets:
    """What the semantic term and the class-free head classify into: C known names and the M centres of
    the teacher's dense features, of which `explained` [M] are taken by a known name. The classes are
    the names followed by the unexplained centres (`unknown`)."""

    known: torch.Tensor  # [C, D] text prototypes
    centres: torch.Tensor  # [M, D] image-space centres (unit)
    explained: torch.Tensor  # [M] bool

    @classmethod
    def names_only(cls, known: torch.Tensor) -> SemanticTargets:
        return cls(known, known.new_zeros(0, known.shape[1]), torch.zeros(0, dtype=torch.bool, device=known.device))

    @property
    def unknown(self) -> torch.Tensor:
        return self.centres[~self.explained]

    @property
    def num_classes(self) -> int:
        return len(self.known) + int((~self.explained).sum())

    def to(self, device: torch.device | str) -> SemanticTargets:
        return SemanticTargets(self.known.to(device), self.centres.to(device), self.explained.to(device))


def explained_centres(centres: torch.Tensor, known: torch.Tensor, rule: str, threshold: float) -> torch.Tensor:
    """[M] bool: which centres a known name explains.

    margin: classify the centre by the names (its best name) and accept when the best name's cosine
    stands out from the centre's mean cosine over all names by at least `threshold` times the largest
    such margin among the centres. Both terms are image-to-text cosines of the same centre, so the gap's
    offset cancels, and the scale comes from the centre the names fit best: no absolute cosine that
    depends on the CLIP model. (A softmax over the names is no test: at CLIP's temperature it is
    confident on a class no name describes too, tests/model/test_semantic_targets.py.) Needs two names
    or more: with one, every margin is zero and nothing is explained.
    cosine: the centre's cosine to a name exceeds `threshold`: the earlier rule; across the gap it is
    never met, so nothing counts as explained."""
    if rule not in EXPLAIN_RULES:
        raise ValueError(f"explain rule {rule!r} unknown (choose from {', '.join(EXPLAIN_RULES)})")
    if not len(known) or not len(centres):
        return torch.zeros(len(centres), dtype=torch.bool, device=centres.device)
    cosine = F.normalize(centres.float(), dim=-1) @ F.normalize(known.float(), dim=-1).T.to(centres.device)
    if rule == "cosine":
        return cosine.max(1).values > threshold
    margin = cosine.max(1).values - cosine.mean(1)
    return (margin > 0) & (margin >= threshold * margin.max())


def semantic_log_probs(features: torch.Tensor, targets: SemanticTargets, temperature: float,
                       rule: str = "hierarchical") -> torch.Tensor:
    """Per-pixel log distribution over the names then the unknown prototypes: [B, C + U, h, w].

    hierarchical: a = softmax over all M centres (image to image); the explained share g = sum of a over
    explained centres goes to the names as g * softmax over names; each unexplained centre keeps its a.
    flat: one softmax over the names and the unexplained centres together (dominated by the centres
    wherever there are any, since image-to-image cosines are higher)."""
    if rule not in TARGET_RULES:
        raise ValueError(f"target rule {rule!r} unknown (choose from {', '.join(TARGET_RULES)})")
    unknown = targets.unknown
    if rule == "flat" or not len(targets.centres):
        return F.log_softmax(cosine_logits(features, torch.cat([targets.known, unknown.to(targets.known.dtype)]),
                                           temperature), dim=1)
    to_centres = F.log_softmax(cosine_logits(features, targets.centres, temperature), dim=1)  # [B, M, h, w]
    parts = []
    if len(targets.known):
        share = torch.logsumexp(to_centres[:, targets.explained], dim=1, keepdim=True)  # log g; -inf with none
        parts.append(share + F.log_softmax(cosine_logits(features, targets.known, temperature), dim=1))
    parts.append(to_centres[:, ~targets.explained])
    return torch.cat(parts, dim=1)


def find_centres(features: torch.Tensor, num_clusters: int, num_iters: int = 30, seed: int = 0) -> torch.Tensor:
    """The used centres of a spherical k-means over dense CLIP features [N, D]: [M, D] unit, M <= num_clusters."""
    x = F.normalize(features.float(), dim=-1).unsqueeze(0)
    generator = torch.Generator().manual_seed(seed)
    centres, assign = spherical_kmeans(x, num_clusters, num_iters, generator=generator)
    return centres[0][torch.bincount(assign[0], minlength=num_clusters) > 0]


def build_targets(known: torch.Tensor, features: torch.Tensor, num_clusters: int, rule: str, threshold: float,
                  seed: int = 0) -> SemanticTargets:
    """Names [C, D] and the centres of sampled dense features [N, D], flagged by `rule` (explained_centres)."""
    centres = find_centres(features, num_clusters, seed=seed) if num_clusters else features.new_zeros(0, known.shape[1])
    return SemanticTargets(known.float(), centres.float(), explained_centres(centres, known, rule, threshold))
