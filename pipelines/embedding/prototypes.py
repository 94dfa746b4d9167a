"""The target classes of the semantic loss: text prototypes of the known names, and unknown prototypes
found by clustering a sample of the corpus's dense CLIP features (stored by formats.prototypes).

The sample comes from the stored sidecars, or, when they hold superpixels only (storage "none"), from
the teacher run here on the same images' canvases: the features the trainer's online teacher sees.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch

from formats.prototypes import prototypes_dict
from formats.shards import iter_samples
from formats.sidecar import decode_sample, sample_canvas
from model.clip_teacher import Teacher, dense_features, text_prototypes
from model.prototypes import build_targets


def stored_dense(output: str, parts: list[str], seed: int) -> Iterator[np.ndarray]:
    """Dense grids [D, g, g] of the sidecar samples, parts (names) in a seeded order."""
    for part in random.Random(seed).sample(parts, len(parts)):
        for sample in iter_samples(output, part):
            yield decode_sample(sample).dense


def teacher_dense(input: str, shards: list[str], teacher: Teacher, image_size: int, last_block: str, seed: int,
                  batch_size: int = 32) -> Iterator[np.ndarray]:
    """Dense grids [D, g, g] of the teacher on the canvases of the image shards' samples, shards in a
    seeded order; samples that do not decode are passed over, as the embed job's chunks do."""
    device = next(teacher.model.parameters()).device
    batch: list[np.ndarray] = []

    def run() -> Iterator[np.ndarray]:
        pixels = torch.from_numpy(np.stack(batch)).to(device).permute(0, 3, 1, 2).float() / 255
        yield from dense_features(teacher, teacher.normalise(pixels), last_block).cpu().numpy()
        batch.clear()

    for shard in random.Random(seed).sample(shards, len(shards)):
        for sample in iter_samples(input, shard):
            try:
                batch.append(sample_canvas(sample, image_size))
            except Exception:
                continue
            if len(batch) == batch_size:
                yield from run()
    if batch:
        yield from run()


def sample_dense(grids: Iterator[np.ndarray], num_images: int, max_vectors: int, seed: int) -> torch.Tensor:
    """Dense vectors [N, D] from the first `num_images` grids, at most `max_vectors` of them (seeded)."""
    vectors = []
    for dense in grids:
        vectors.append(dense.reshape(dense.shape[0], -1).T)
        if len(vectors) >= num_images:
            break
    features = torch.from_numpy(np.concatenate(vectors))
    if len(features) > max_vectors:
        features = features[torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))[:max_vectors]]
    return features


def build_prototypes(teacher: Teacher, names: list[str], features: torch.Tensor, num_unknown: int,
                     explain_rule: str, explain_threshold: float, seed: int) -> dict:
    """The prototypes dict (formats.prototypes): the names' text prototypes, the centres of `features`
    and which of them a name explains; with no names at all this is the class-free setting."""
    known = text_prototypes(teacher, names) if names else torch.zeros(0, teacher.embed_dim)
    targets = build_targets(known, features, num_unknown, explain_rule, explain_threshold, seed=seed)
    return prototypes_dict(names, targets, explain_rule, explain_threshold)
