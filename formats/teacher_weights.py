"""A CLIP teacher whose weights may live wherever fsspec reaches: open_clip tags and local files as
open_clip reads them; an object-store URL (`s3://...`) is copied to a local file first."""

from __future__ import annotations

import torch

from common.config import ConfigError
from common.storage import copy_to_local, filesystem
from model import clip_teacher
from model.clip_teacher import Teacher, TeacherConfig, architectures, names_a_file, open_clip, pretrained_kind


def load_teacher(cfg: TeacherConfig, device: str | torch.device = "cpu") -> Teacher:
    """model.clip_teacher.load_teacher with URL weights fetched through fsspec."""
    return clip_teacher.load_teacher(cfg, device, fetch=copy_to_local)


def check_teacher(model: str, pretrained: str) -> None:
    """A ConfigError, before any model is built or cluster started, when `model` is no open_clip
    architecture or `pretrained` is none of a tag of it, an existing local file, an existing URL."""
    if model not in architectures():
        raise ConfigError(f"{model!r} is no open_clip architecture (open_clip.list_models() names them)")
    kind = pretrained_kind(model, pretrained)
    if kind in ("random", "tag", "file"):
        return
    if kind == "url":
        fs, path = filesystem(pretrained)
        if fs.isfile(path):
            return
        raise ConfigError(f"teacher weights {pretrained} not found")
    if names_a_file(pretrained):
        raise ConfigError(f"teacher weights {pretrained}: no such file")
    tags = open_clip().list_pretrained_tags_by_model(model)
    raise ConfigError(f"teacher weights {pretrained!r}: no such file, and no open_clip tag of {model}"
                      + (f" (its tags: {', '.join(tags)})" if tags else " (it has no tags)"))
