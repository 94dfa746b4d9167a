"""Segmentation metrics: confusion matrices, IoU scores, Hungarian cluster matching, seen/unseen splits.

Pure numpy (torch tensors are accepted as inputs and moved to numpy); no I/O. Every score is a
float in [0, 1]; reports multiply by 100.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# The label of pixels no score counts: unlabelled or void in a ground-truth mask (255 in VOC, the
# evaluation datasets' masks and the field's tools), and padding beyond an image's edge.
IGNORE_INDEX = 255


def _as_int_array(x: Any) -> np.ndarray:
    """A flat int64 numpy view of a numpy array or torch tensor (any device, any shape)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x).reshape(-1).astype(np.int64, copy=False)


def confusion_matrix(pred: Any, target: Any, num_classes: int, ignore_index: int = IGNORE_INDEX,
                     num_pred: int | None = None) -> np.ndarray:
    """Pixel counts int64 [K, P]: rows ground truth, columns prediction.

    `pred` and `target` have the same shape (any). Pixels whose target is `ignore_index` are
    dropped. `num_pred` (default K) lets predictions be cluster ids 0..P-1 for the unsupervised
    protocol. Any other value out of range is an error: it means a wrong label map, which
    silently dropping pixels would hide.
    """
    num_pred = num_classes if num_pred is None else num_pred
    p, t = _as_int_array(pred), _as_int_array(target)
    if p.shape != t.shape:
        raise ValueError(f"pred has {p.size} pixels, target {t.size}")
    keep = t != ignore_index
    p, t = p[keep], t[keep]
    for what, x, n in (("targets", t, num_classes), ("predictions", p, num_pred)):
        if x.size and (x.min() < 0 or x.max() >= n):
            raise ValueError(f"{what} must lie in 0..{n - 1} (targets may be {ignore_index}), "
                             f"got {x.min()}..{x.max()}")
    counts = np.bincount(t * num_pred + p, minlength=num_classes * num_pred)
    return counts.reshape(num_classes, num_pred).astype(np.int64)


def segmentation_scores(conf: np.ndarray) -> dict[str, Any]:
    """Scores of a square confusion matrix [K, K] (rows ground truth).

    Returns `iou` (np.ndarray [K], NaN for a class absent from both ground truth and prediction),
    `miou` (mean over the non-NaN classes), `pixel_acc`, `class_acc` (per class, NaN where the
    class has no ground-truth pixels) and `mean_class_acc`.
    """
    conf = np.asarray(conf, dtype=np.float64)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"need a square confusion matrix, got {conf.shape}")
    tp = np.diag(conf)
    gt, pr = conf.sum(1), conf.sum(0)
    union = gt + pr - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        class_acc = np.where(gt > 0, tp / gt, np.nan)
    total = conf.sum()
    return {
        "iou": iou,
        "miou": _nanmean(iou),
        "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        "class_acc": class_acc,
        "mean_class_acc": _nanmean(class_acc),
    }


def _nanmean(x: np.ndarray) -> float:
    """Mean over the finite entries; NaN (without a warning) when there are none."""
    finite = x[~np.isnan(x)]
    return float(finite.mean()) if finite.size else float("nan")


def hungarian_match(conf: np.ndarray) -> np.ndarray:
    """Class for each predicted cluster, int64 [P], from a confusion matrix [K, P].

    One-to-one assignment maximising the matched pixels (linear_sum_assignment); when P > K the
    clusters left over are mapped to their majority class (the class they overlap most). When
    P < K some classes get no cluster and score IoU 0 where they occur.
    """
    from scipy.optimize import linear_sum_assignment  # 0.4 s to import: not before a job's input checks

    conf = np.asarray(conf)
    rows, cols = linear_sum_assignment(conf, maximize=True)
    mapping = conf.argmax(0).astype(np.int64)
    mapping[cols] = rows
    return mapping


def apply_mapping(conf: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """Merge the columns of a [K, P] confusion matrix by `mapping` [P] -> class: a [K, K] matrix."""
    conf = np.asarray(conf)
    mapping = np.asarray(mapping, dtype=np.int64)
    k = conf.shape[0]
    if mapping.shape != (conf.shape[1],):
        raise ValueError(f"mapping has shape {mapping.shape}, need ({conf.shape[1]},)")
    out = np.zeros((k, k), dtype=conf.dtype)
    np.add.at(out.T, mapping, conf.T)  # out[:, mapping[j]] += conf[:, j]
    return out


def seen_unseen_scores(per_class_iou: np.ndarray, seen_mask: np.ndarray) -> dict[str, float]:
    """mIoU over seen and over unseen classes and their harmonic mean `hiou`.

    `per_class_iou` [K] may hold NaN for absent classes, which are left out of both means.
    """
    iou = np.asarray(per_class_iou, dtype=np.float64)
    seen = np.asarray(seen_mask, dtype=bool)
    if iou.shape != seen.shape:
        raise ValueError(f"iou {iou.shape} and seen_mask {seen.shape} differ")
    s, u = _nanmean(iou[seen]), _nanmean(iou[~seen])
    hiou = 2 * s * u / (s + u) if s + u > 0 else 0.0
    return {"miou_seen": s, "miou_unseen": u, "hiou": float(hiou)}
