"""Networks that stand beside the student in a report: the CLIP teacher as a dense network, and raw
colour as a pixel embedding (the floor for unsupervised segmentation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.clip_teacher import Teacher, dense_features
from model.network import ModelOutput


class TeacherNet(nn.Module):
    """The CLIP teacher as a dense network: images [B, 3, H, W] in [0, 1] -> ModelOutput at 1/patch.

    Its embeddings are the normalised dense CLIP features, so every task can run on it. `last_block`:
    how the dense features are made (model.clip_teacher.LAST_BLOCKS), as for the student's training.
    `upscale` > 1 enlarges the input that many times first (bilinear), so the grid is that much finer:
    the teacher at the student's resolution, where a comparison of the two is not one of grid sizes.
    """

    def __init__(self, teacher: Teacher, last_block: str = "maskclip", upscale: int = 1):
        super().__init__()
        if upscale < 1 or teacher.patch_size % upscale:
            raise ValueError(f"upscale {upscale} must divide the teacher's patch size {teacher.patch_size}")
        self.model, self.last_block, self.upscale = teacher.model, last_block, upscale
        self.output_stride = teacher.patch_size // upscale
        self.register_buffer("mean", torch.tensor(teacher.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(teacher.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> ModelOutput:
        if self.upscale > 1:
            images = F.interpolate(images, scale_factor=self.upscale, mode="bilinear", align_corners=False)
        dense = dense_features(self.model, (images - self.mean) / self.std, self.last_block)
        return ModelOutput(F.normalize(dense, dim=1), dense)


class RawPixels(nn.Module):
    """Colour as the pixel embedding, the floor for unsupervised segmentation: [B, 3, H, W] -> [B, 4, H, W].

    Spherical k-means compares directions only. Colour minus 0.5 with a constant fourth channel
    keeps black, grey and white apart on the sphere (plain normalised RGB would merge every
    shade of one hue), so clustering these vectors behaves like k-means on colour. No CLIP space.
    """

    output_stride = 1

    def forward(self, images: torch.Tensor) -> ModelOutput:
        x = torch.cat([images - 0.5, torch.full_like(images[:, :1], 0.5)], dim=1)
        return ModelOutput(F.normalize(x, dim=1), x[:, :0])
