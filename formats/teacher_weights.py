"""A CLIP teacher whose weights may live wherever fsspec reaches: open_clip tags and local files as
open_clip reads them; an object-store URL (`s3://...`) is copied to a local file first."""

from __future__ import annotations

import torch

from common.storage import copy_to_local
from model import clip_teacher
from model.clip_teacher import Teacher, TeacherConfig


def load_teacher(cfg: TeacherConfig, device: str | torch.device = "cpu") -> Teacher:
    """model.clip_teacher.load_teacher with URL weights fetched through fsspec."""
    return clip_teacher.load_teacher(cfg, device, fetch=copy_to_local)
