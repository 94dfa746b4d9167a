"""One training step's pieces, free of Ray and DeepSpeed: the forward pass with its losses, the LR
schedule and the DeepSpeed config, so benchmarks and tests run them in a bare loop too."""

from __future__ import annotations

import math

import torch

from model.network import SegNet
from model.objective import compute_losses
from trainer.config import TrainConfig


def forward_losses(net: SegNet, batch: dict, targets: torch.Tensor | None, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """The network on both views of a batch (from trainer.data), then the weighted loss terms."""
    out = net(batch["images"])
    return compute_losses(out, batch["regions"], batch["clip"], batch["source"], targets, cfg.loss)


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


def deepspeed_config(cfg: TrainConfig, on_gpu: bool) -> dict:
    return {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size_per_worker,
        "gradient_accumulation_steps": cfg.optim.grad_accumulation_steps,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": cfg.scaling.zero_stage},
        "bf16": {"enabled": on_gpu and cfg.scaling.bf16},  # CPU runs fp32 (gloo)
        "steps_per_print": 10**9,
        "zero_allow_untested_optimizer": True,  # SGD under ZeRO: DeepSpeed only lists Adam-family as tested
    }
