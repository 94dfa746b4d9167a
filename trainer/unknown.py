"""Refreshing the unknown prototypes during training, from the dense CLIP features the batches carry.

The embed job finds unknown prototypes once, over a sample of the corpus; with a refresh interval
the trainer redoes that search on the features it has recently trained on. Rank 0's result is
broadcast so every rank trains against the same targets. The reservoir is not checkpointed: a
resumed run refills it, so its refreshed prototypes can differ from an uninterrupted run's.
"""

from __future__ import annotations

import torch

from model.prototypes import SemanticTargets, explained_centres, find_centres
from trainer.collectives import broadcast_tensor


class UnknownRefresher:
    """explain_rule, explain_threshold: the embed job's (its prototypes file records them), so a refresh
    decides which centres a name explains as the embed job did."""

    def __init__(self, known: torch.Tensor, num_unknown: int, explain_rule: str, explain_threshold: float,
                 max_vectors: int = 50_000, vectors_per_batch: int = 1024, seed: int = 0,
                 comm_device: str | torch.device = "cpu"):
        self.known, self.num_unknown = known.float().cpu(), num_unknown
        self.explain_rule, self.explain_threshold = explain_rule, explain_threshold
        self.max_vectors, self.vectors_per_batch, self.seed = max_vectors, vectors_per_batch, seed
        self.comm_device = torch.device(comm_device)  # the process group backend's (trainer.collectives)
        self.generator = torch.Generator().manual_seed(seed)
        self.buffer: list[torch.Tensor] = []

    def observe(self, clip: torch.Tensor) -> None:
        """Keep a random sample of a batch's teacher vectors [V, D, h, w]; the oldest go first."""
        vectors = clip.detach().permute(0, 2, 3, 1).reshape(-1, clip.shape[1]).float().cpu()
        self.buffer.append(vectors[torch.randperm(len(vectors), generator=self.generator)[:self.vectors_per_batch]])
        while sum(len(b) for b in self.buffer) - len(self.buffer[0]) >= self.max_vectors:
            self.buffer.pop(0)

    def refresh(self) -> SemanticTargets:
        """The known names and freshly found centres, flagged as the embed job flags them; the same on
        every rank (rank 0's centres, the flags computed from them alike everywhere)."""
        centres = find_centres(torch.cat(self.buffer), self.num_unknown, seed=self.seed)
        # rank 0's centres go to every rank: a fixed shape (padded) and the count that is real
        padded = torch.zeros(self.num_unknown, self.known.shape[1])
        padded[:len(centres)] = centres
        padded = broadcast_tensor(padded, self.comm_device).cpu()
        count = int(broadcast_tensor(torch.tensor([len(centres)]), self.comm_device).item())
        centres = padded[:count]
        return SemanticTargets(self.known, centres,
                               explained_centres(centres, self.known, self.explain_rule, self.explain_threshold))
