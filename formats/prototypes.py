"""The semantic loss's targets on disk: `prototypes.pt` beside the sidecars, and class-name list files.

`prototypes.pt` holds {"names": [C], "known": [C, D] text prototypes, "unknown": [U, D],
"max_similarity": float}; the embed job writes it, the trainer and the model file read it.
"""

from __future__ import annotations

import io

import torch

from common.storage import filesystem, join, write_bytes_atomic

PROTOTYPES = "prototypes.pt"


def read_class_names(url: str) -> list[str]:
    """One class name a line; blank lines and `#` comments skipped."""
    fs, path = filesystem(url)
    lines = fs.cat_file(path).decode().splitlines()
    names = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if len(set(names)) != len(names):
        raise ValueError(f"{url}: class names repeat")
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
        return torch.load(io.BytesIO(fh.read()), weights_only=True)
