"""Collectives the loop runs itself (beside DeepSpeed's), on the tensors' proper device.

NCCL reduces and broadcasts CUDA tensors only; gloo takes CPU tensors. gloo accepts what NCCL
rejects, so code tested on CPU breaks on GPUs unless every tensor a collective sees sits on
`backend_device` (checked by tests/trainer/test_collectives.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def backend_device(local: torch.device) -> torch.device:
    """Where this process's collective tensors live: `local` (its GPU) under NCCL, the CPU otherwise."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return local
    return torch.device("cpu")


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_object(obj: Any, device: torch.device, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank (pickled; `device` is the backend's, see backend_device)."""
    if not distributed():
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=device)
    return box[0]


def broadcast_tensor(tensor: torch.Tensor, device: torch.device, src: int = 0) -> torch.Tensor:
    """Rank `src`'s tensor (same shape and dtype on every rank) on every rank, returned on `device`."""
    tensor = tensor.to(device)
    if distributed():
        dist.broadcast(tensor, src=src)
    return tensor


def gather_from_others(rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Every other rank's `rows` [n_r, D] (counts may differ by rank), stacked [sum of n_r, D], on `rows`'
    device; no gradient flows back through them. Empty with one rank."""
    if not distributed():
        return rows.new_zeros(0, rows.shape[1])
    local = rows.detach().to(device)
    counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([len(local)], device=device))
    most = int(max(c.item() for c in counts))
    padded = torch.cat([local, local.new_zeros(most - len(local), local.shape[1])])
    gathered = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(gathered, padded)
    me = dist.get_rank()
    return torch.cat([g[: int(c.item())] for r, (g, c) in enumerate(zip(gathered, counts)) if r != me]).to(rows.device)
