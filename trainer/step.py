"""One training step's pieces, free of Ray and DeepSpeed: the forward pass with its losses, the LR
schedule and the DeepSpeed config, so benchmarks and tests run them in a bare loop too."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.clip_teacher import Teacher, dense_features
from model.network import ModelOutput, SegNet
from model.objective import compute_losses
from model.prototypes import SemanticTargets
from trainer.collectives import backend_device, gather_from_others
from trainer.config import TrainConfig

# teacher.precision -> the autocast dtype of the online teacher's forward (None: fp32)
TEACHER_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class OnlineTeacher:
    """The frozen CLIP teacher inside the step (teacher.mode=online): dense features of each view,
    computed without gradients at the view's resolution. Its weights are in `precision` (open_clip's
    low-precision cast) and its forward runs under autocast in the same dtype."""

    teacher: Teacher
    last_block: str
    precision: str  # fp32, fp16 or bf16

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """Views [V, 3, S, S] in [0, 1], before colour jitter -> dense features [V, D, S/p, S/p] fp32."""
        dtype = TEACHER_DTYPES[self.precision]
        with torch.autocast(pixels.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return dense_features(self.teacher, self.teacher.normalise(pixels), self.last_block)


def with_teacher_features(batch: dict, teacher: OnlineTeacher | None) -> dict:
    """The batch with its views' CLIP features: the stored ones as they come, or the online teacher's."""
    if "clip" in batch:
        return batch
    if teacher is None:
        raise RuntimeError("the batch carries no CLIP features and no online teacher is set (teacher.mode)")
    batch = dict(batch)
    batch["clip"] = teacher(batch.pop("teacher_images"))
    return batch


@dataclass
class Negatives:
    """The contrastive term's negatives beyond this rank's batch: every other rank's segment prototypes
    (loss.negatives=all_ranks, gathered each step) and a memory bank of the last `bank_size` prototypes
    of earlier steps, newest first (loss.memory_bank; empty after a restart). All without gradient."""

    all_ranks: bool
    bank_size: int
    bank: torch.Tensor | None = None

    def __call__(self, prototypes: torch.Tensor) -> torch.Tensor:
        others = gather_from_others(prototypes, backend_device(prototypes.device)) if self.all_ranks \
            else prototypes.new_zeros(0, prototypes.shape[1])
        bank = self.bank if self.bank is not None else prototypes.new_zeros(0, prototypes.shape[1])
        extra = torch.cat([others, bank])
        if self.bank_size:  # after use: a batch is never its own negative
            self.bank = torch.cat([prototypes.detach(), others, bank])[: self.bank_size]
        return extra


def negatives_for(cfg: TrainConfig) -> Negatives | None:
    return Negatives(cfg.loss.negatives == "all_ranks", cfg.loss.memory_bank) \
        if cfg.loss.negatives == "all_ranks" or cfg.loss.memory_bank else None


def forward_losses(net: SegNet, batch: dict, targets: SemanticTargets | None, cfg: TrainConfig,
                   negatives: Negatives | None = None) -> dict[str, torch.Tensor]:
    """The network on both views of a batch (from trainer.data), then the weighted loss terms.

    With `scaling.bf16` the network runs under bf16 autocast (on any device: CPU runs it too, so
    tests cover the GPU recipe's path); its weights stay fp32 and are the master copy. The losses,
    k-means and softmaxes run in fp32 on its outputs: bf16's 8-bit mantissa is too coarse for
    log-sum-exps over thousands of segments, and it costs little.
    """
    images = batch["images"]
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=cfg.scaling.bf16):
        out = net(images)
    out = ModelOutput(F.normalize(out.embeddings.float(), dim=1), out.clip.float())
    return compute_losses(out, batch["regions"], batch["clip"], batch["source"], targets, cfg.loss, negatives,
                          batch.get("valid"))


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine down to `min_ratio` at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(net: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(net.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.AdamW(net.parameters(), lr=o.lr, weight_decay=o.weight_decay)


def deepspeed_config(cfg: TrainConfig) -> dict:
    """DeepSpeed in fp32: mixed precision is torch.autocast inside forward_losses, not DeepSpeed's `bf16`
    section. That section casts the weights to bf16 but leaves the input and the network's mean/std
    buffers fp32 (the first convolution fails), and it would also run the losses in bf16. The student
    is small (ResNet-50: 25M parameters, 300 MB of fp32 weights, gradients and SGD momentum), so
    fp32 weights cost nothing that matters, while autocast gives bf16 matmuls and convolutions.
    ZeRO (scaling.zero_stage) still shards optimizer state and gradients when that pays."""
    return {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size_per_worker,
        "gradient_accumulation_steps": cfg.optim.grad_accumulation_steps,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": cfg.scaling.zero_stage},
        "steps_per_print": 10**9,
        "zero_allow_untested_optimizer": True,  # SGD under ZeRO: DeepSpeed only lists Adam-family as tested
    }
