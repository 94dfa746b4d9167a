"""The evaluation's tasks: how each scores a summed confusion matrix, which baselines stand beside it,
its report columns, and the linear probe it trains on frozen pixel embeddings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.metrics import IGNORE_INDEX, apply_mapping, hungarian_match, seen_unseen_scores, segmentation_scores


def _scores(conf: np.ndarray, names: list[str]) -> dict[str, Any]:
    s = segmentation_scores(conf)
    return {"miou": s["miou"], "pixel_acc": s["pixel_acc"], "mean_class_acc": s["mean_class_acc"],
            "iou": dict(zip(names, s["iou"].tolist())), "confusion": conf.tolist()}


def language_scores(conf: np.ndarray, names: list[str], seen: np.ndarray) -> dict[str, Any]:
    return _scores(conf, names)


def unsupervised_scores(conf: np.ndarray, names: list[str], seen: np.ndarray) -> dict[str, Any]:
    """Clusters [K, K] (rows classes, columns clusters) matched one-to-one to classes (Hungarian), then scored."""
    mapping = hungarian_match(conf)
    return {**_scores(apply_mapping(conf, mapping), names), "cluster_to_class": mapping.tolist(),
            "cluster_confusion": conf.tolist()}


def unseen_scores(conf: np.ndarray, names: list[str], seen: np.ndarray) -> dict[str, Any]:
    scores = _scores(conf, names)
    iou = np.array([scores["iou"][n] for n in names], dtype=np.float64)
    return {**scores, **seen_unseen_scores(iou, seen), "unseen_classes": [n for n, s in zip(names, seen) if not s]}


@dataclass(frozen=True)
class Task:
    head: str  # a key of model.inference.HEADS; tasks with the same head share its predictions
    baselines: tuple[str, ...]  # keys of pipelines.inference.predict.METHODS
    score: Callable[[np.ndarray, list[str], np.ndarray], dict[str, Any]]  # (confusion, names, seen mask)
    columns: tuple[tuple[str, str], ...]  # report.md (header, score key)


TASKS: dict[str, Task] = {
    "language": Task("language", ("teacher",), language_scores,
                     (("language mIoU", "miou"), ("language acc", "pixel_acc"))),
    "unsupervised": Task("clusters", ("pixels", "untrained"), unsupervised_scores,
                         (("unsupervised mIoU", "miou"), ("unsupervised acc", "pixel_acc"))),
    "unseen": Task("language", ("teacher",), unseen_scores,
                   (("mIoU seen", "miou_seen"), ("mIoU unseen", "miou_unseen"), ("hIoU", "hiou"))),
    "probe": Task("probe", ("untrained",), language_scores, (("probe mIoU", "miou"), ("probe acc", "pixel_acc"))),
}
METHOD_TITLES = {"student": "student", "teacher": "CLIP teacher alone (MaskCLIP)",
                 "pixels": "k-means on raw pixels", "untrained": "untrained network"}


def train_probe(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int, epochs: int, lr: float,
                batch_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A linear classifier on frozen pixel embeddings [N, E] (a 1x1 conv on the map) -> weight [K, E], bias [K].

    Cross-entropy with Adam over shuffled mini-batches; IGNORE_INDEX pixels are left out.
    """
    keep = labels != IGNORE_INDEX
    x, y = embeddings[keep].float(), labels[keep]
    if not len(y):
        raise ValueError("no labelled pixels to train the probe on")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = nn.Linear(x.shape[1], num_classes)
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=generator).split(batch_size):
            loss = F.cross_entropy(layer(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return {"weight": layer.weight.detach(), "bias": layer.bias.detach()}
