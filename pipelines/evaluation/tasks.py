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


def classfree_scores(conf: np.ndarray, names: list[str], seen: np.ndarray) -> dict[str, Any]:
    """Class-free segmentation, scored over all classes. conf [K, K + U]: the dataset's K classes (the
    head knew only the seen ones by name), then its U unknown classes. The unknown classes are matched
    one-to-one to the unseen classes (Hungarian, most pixels in common); one left over labels no class,
    so its pixels count as errors. Also: the share of seen-class pixels the head called unknown."""
    k = len(names)
    clusters = conf[:, k:]
    unseen_rows = np.flatnonzero(~seen)
    merged = np.zeros((k + 1, k + 1), np.int64)  # the last row and column: "no class" (left-over clusters)
    merged[:k, :k] = conf[:, :k]
    to_class = np.full(clusters.shape[1], IGNORE_INDEX, np.int64)
    if len(unseen_rows) and clusters.shape[1]:
        from scipy.optimize import linear_sum_assignment  # 0.4 s to import: not before a job's input checks

        rows, cols = linear_sum_assignment(clusters[unseen_rows], maximize=True)
        to_class[cols] = unseen_rows[rows]
    for cluster, target in enumerate(to_class):
        merged[:k, target if target != IGNORE_INDEX else k] += clusters[:, cluster]
    s = segmentation_scores(merged)
    iou = s["iou"][:k]
    present = conf.sum(1) > 0
    seen_pixels = conf[seen].sum()
    return {"miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            "pixel_acc": float(np.trace(merged[:k, :k]) / max(conf.sum(), 1)),
            "iou": dict(zip(names, iou.tolist())), **seen_unseen_scores(iou, seen),
            "seen_pixels_unknown": float(clusters[seen].sum() / seen_pixels) if seen_pixels else float("nan"),
            "classes_present": int(present.sum()),
            # label id (dataset classes, then unknown classes) -> the class it is scored as
            "cluster_to_class": list(range(k)) + to_class.tolist(), "confusion": conf.tolist()}


@dataclass(frozen=True)
class Task:
    head: str  # a key of model.inference.HEADS; tasks with the same head share its predictions
    baselines: tuple[str, ...]  # keys of pipelines.inference.predict.METHODS
    score: Callable[[np.ndarray, list[str], np.ndarray], dict[str, Any]]  # (confusion, names, seen mask)
    columns: tuple[tuple[str, str], ...]  # report.md (header, score key)


TASKS: dict[str, Task] = {
    "language": Task("language", ("teacher", "teacher_matched"), language_scores,
                     (("language mIoU", "miou"), ("language acc", "pixel_acc"))),
    "unsupervised": Task("clusters", ("pixels", "untrained", "teacher", "teacher_matched"), unsupervised_scores,
                         (("unsupervised mIoU", "miou"), ("unsupervised acc", "pixel_acc"))),
    "unseen": Task("language", ("teacher", "teacher_matched"), unseen_scores,
                   (("mIoU seen", "miou_seen"), ("mIoU unseen", "miou_unseen"), ("hIoU", "hiou"))),
    "probe": Task("probe", ("untrained", "teacher", "teacher_matched"), language_scores, (("probe mIoU", "miou"), ("probe acc", "pixel_acc"))),
    "knn": Task("knn", ("untrained", "teacher", "teacher_matched"), language_scores,
                (("k-NN mIoU", "miou"), ("k-NN acc", "pixel_acc"))),
    "classfree": Task("classfree", ("teacher", "teacher_matched"), classfree_scores,
                      (("class-free mIoU", "miou"), ("class-free unseen", "miou_unseen"),
                       ("seen px called unknown", "seen_pixels_unknown"))),
}
METHOD_TITLES = {"student": "student", "teacher": "CLIP teacher alone (MaskCLIP)",
                 "teacher_matched": "CLIP teacher, shift-and-stitch to the student's grid",
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
