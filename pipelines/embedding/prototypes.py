"""The target classes of the semantic loss: text prototypes of the known names, and unknown prototypes
found by clustering a sample of the corpus's dense CLIP features (stored by formats.prototypes)."""

from __future__ import annotations

import random

import numpy as np
import torch

from formats.shards import iter_samples
from formats.sidecar import decode_sample
from model.clip_teacher import Teacher, text_prototypes
from model.prototypes import discover_unknown


def sample_dense(output: str, parts: list[str], num_images: int, max_vectors: int, seed: int) -> torch.Tensor:
    """Dense vectors [N, D] from up to `num_images` sidecar samples spread over the parts (names), seeded."""
    rng = random.Random(seed)
    chosen = rng.sample(parts, len(parts))
    vectors, seen = [], 0
    for part in chosen:
        for sample in iter_samples(output, part):
            dense = decode_sample(sample).dense  # [D, g, g]
            vectors.append(dense.reshape(dense.shape[0], -1).T)
            seen += 1
            if seen >= num_images:
                break
        if seen >= num_images:
            break
    features = torch.from_numpy(np.concatenate(vectors))
    if len(features) > max_vectors:
        features = features[torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))[:max_vectors]]
    return features


def build_prototypes(teacher: Teacher, names: list[str], features: torch.Tensor, num_unknown: int,
                     max_similarity: float, seed: int) -> dict:
    """{"names", "known" [C, D], "unknown" [U, D]}; with no names at all this is the class-free setting."""
    known = text_prototypes(teacher, names) if names else torch.zeros(0, teacher.embed_dim)
    unknown = (discover_unknown(features, known, num_unknown, max_similarity, seed=seed) if num_unknown
               else torch.zeros(0, teacher.embed_dim))
    return {"names": names, "known": known, "unknown": unknown, "max_similarity": max_similarity}
