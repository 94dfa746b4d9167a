"""The target classes of the semantic loss: text prototypes of the known names, and unknown prototypes
found by clustering a sample of the corpus's dense CLIP features."""

from __future__ import annotations

import io
import random

import numpy as np
import torch

from model.clip_teacher import Teacher, text_prototypes
from model.prototypes import discover_unknown
from formats.sidecar import decode_sample
from common.storage import filesystem, join, write_bytes_atomic
from pipelines.embedding.worker import read_shard

PROTOTYPES = "prototypes.pt"


def read_class_names(url: str) -> list[str]:
    """One class name a line; blank lines and `#` comments skipped."""
    fs, path = filesystem(url)
    lines = fs.cat_file(path).decode().splitlines()
    names = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if len(set(names)) != len(names):
        raise ValueError(f"{url}: class names repeat")
    return names


def sample_dense(output: str, parts: list[str], num_images: int, max_vectors: int, seed: int) -> torch.Tensor:
    """Dense vectors [N, D] from up to `num_images` sidecar samples spread over the parts, seeded."""
    rng = random.Random(seed)
    chosen = rng.sample(parts, len(parts))
    vectors, seen = [], 0
    for part in chosen:
        for sample in read_shard(output, part.removesuffix(".tar")):
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


def save_prototypes(output: str, prototypes: dict) -> str:
    buffer = io.BytesIO()
    torch.save(prototypes, buffer)
    fs, root = filesystem(output)
    path = join(root, PROTOTYPES)
    write_bytes_atomic(fs, path, buffer.getvalue())
    return path


def load_prototypes(output: str) -> dict:
    fs, root = filesystem(output)
    with fs.open(join(root, PROTOTYPES), "rb") as fh:
        return torch.load(io.BytesIO(fh.read()), weights_only=True)
