"""The semantic loss's targets on disk: `prototypes.pt` beside the sidecars, and class-name list files.

`prototypes.pt` holds {"names": [C], "known": [C, D] text prototypes, "centres": [M, D] centres of
the teacher's dense features, "explained": [M] bool (a name explains the centre), "unknown": [U, D]
(the unexplained centres), "explain": {"rule", "threshold"} (model.prototypes.explained_centres)}; the
embed job writes it, the trainer and the model file read it. A file from before the centres were
kept (its unknown prototypes and the cosine rule's "max_similarity") reads as centres none explained.
"""

from __future__ import annotations

import io

import torch

from common.config import ConfigError
from common.storage import filesystem, join, write_bytes_atomic
from model.prototypes import SemanticTargets

PROTOTYPES = "prototypes.pt"


def read_class_names(url: str) -> list[str]:
    """One class name a line; blank lines and `#` comments skipped."""
    fs, path = filesystem(url)
    if not fs.isfile(path):
        raise ConfigError(f"class names file {url} not found")
    lines = fs.cat_file(path).decode().splitlines()
    names = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if len(set(names)) != len(names):
        raise ConfigError(f"{url}: class names repeat")
    if not names:
        raise ConfigError(f"{url} names no class")
    return names


def has_prototypes(output: str) -> bool:
    fs, root = filesystem(output)
    return fs.exists(join(root, PROTOTYPES))


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
        return upgrade(torch.load(io.BytesIO(fh.read()), weights_only=True))


def upgrade(protos: dict) -> dict:
    """A prototypes dict of any version in today's form (see the module's docstring); {} (a model file
    with none) stays as it is."""
    if "centres" in protos or not protos:
        return protos
    unknown = protos["unknown"]
    return {**protos, "centres": unknown, "explained": torch.zeros(len(unknown), dtype=torch.bool),
            "explain": {"rule": "cosine", "threshold": protos.get("max_similarity", 0.8)}}


def semantic_targets(protos: dict) -> SemanticTargets:
    """The semantic term's targets from a prototypes dict."""
    protos = upgrade(protos)
    return SemanticTargets(protos["known"].float(), protos["centres"].float(), protos["explained"].bool())


def prototypes_dict(names: list[str], targets: SemanticTargets, rule: str, threshold: float) -> dict:
    return {"names": list(names), "known": targets.known, "centres": targets.centres, "explained": targets.explained,
            "unknown": targets.unknown, "explain": {"rule": rule, "threshold": threshold}}
