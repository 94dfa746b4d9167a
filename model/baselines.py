"""Networks that stand beside the student in a report: the CLIP teacher as a dense network, and raw
colour as a pixel embedding (the floor for unsupervised segmentation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.clip_teacher import Teacher, dense_features
from model.network import ModelOutput


def shift(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """The image moved so that pixel (y, x) of the result is pixel (y + dy, x + dx) of `images`, the same
    size, the border repeated where the move uncovers it."""
    h, w = images.shape[-2:]
    padded = F.pad(images, (max(-dx, 0), max(dx, 0), max(-dy, 0), max(dy, 0)), mode="replicate")
    top, left = max(dy, 0), max(dx, 0)
    return padded[..., top:top + h, left:left + w]


class TeacherNet(nn.Module):
    """The CLIP teacher as a dense network: images [B, 3, H, W] in [0, 1] -> ModelOutput at 1/patch.

    Its embeddings are the normalised dense CLIP features, so every task can run on it. `last_block`:
    how the dense features are made (model.clip_teacher.LAST_BLOCKS), as for the student's training.
    `factor` > 1 gives a grid that many times finer by shift-and-stitch (FCN, OverFeat): the teacher sees
    the image at its own scale `factor`² times, shifted by a cell of the fine grid each time, and each
    pass fills the fine cells its coarse cells are centred on. The teacher at the student's resolution,
    where a comparison of the two is not one of grid sizes; enlarging the input instead shows the teacher
    a scale it never saw (measured: a tiny ResNet CLIP falls from 12.5 to 0.8 language mIoU at 8x).
    """

    def __init__(self, teacher: Teacher, last_block: str = "maskclip", factor: int = 1):
        super().__init__()
        if factor < 1 or teacher.patch_size % factor:
            raise ValueError(f"factor {factor} must divide the teacher's patch size {teacher.patch_size}")
        self.model, self.last_block, self.factor = teacher.model, last_block, factor
        self.output_stride = teacher.patch_size // factor
        self.register_buffer("mean", torch.tensor(teacher.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(teacher.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> ModelOutput:
        images = (images - self.mean) / self.std
        f, fine = self.factor, self.output_stride
        if f == 1:
            dense = dense_features(self.model, images, self.last_block)
        else:
            # shift a*fine - (patch - fine)/2 puts coarse cell k's centre on fine cell k*f + a's centre
            offsets = [a * fine - (self.factor * fine - fine) // 2 for a in range(f)]
            rows = []
            for dy in offsets:  # one row of shifts at a time: f copies of the batch in memory, not f²
                batch = torch.cat([shift(images, dy, dx) for dx in offsets])
                rows.append(dense_features(self.model, batch, self.last_block).unflatten(0, (f, len(images))))
            coarse = torch.stack(rows)  # [f (dy), f (dx), B, D, h, w]
            b, d, h, w = coarse.shape[2:]
            dense = coarse.permute(2, 3, 4, 0, 5, 1).reshape(b, d, h * f, w * f)
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
