"""Metrics against hand-computed confusion matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.metrics import apply_mapping, confusion_matrix, hungarian_match, seen_unseen_scores, segmentation_scores

# 9 labelled pixels and one ignored; rows gt, cols pred:
#   gt 0: pred 0,0,1   -> [2, 1, 0]
#   gt 1: pred 1,2     -> [0, 1, 1]
#   gt 2: pred 2,2,2,0 -> [1, 0, 3]
TARGET = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 255])
PRED = np.array([0, 0, 1, 1, 2, 2, 2, 2, 0, 1])
CONF = np.array([[2, 1, 0], [0, 1, 1], [1, 0, 3]])


def test_confusion_matrix_rows_are_ground_truth_and_ignore_is_dropped():
    conf = confusion_matrix(PRED, TARGET, 3)
    assert conf.dtype == np.int64
    np.testing.assert_array_equal(conf, CONF)


def test_confusion_matrix_takes_torch_tensors_of_any_shape():
    pred = torch.from_numpy(PRED).reshape(2, 5).to(torch.uint8)
    target = torch.from_numpy(TARGET).reshape(2, 5)
    np.testing.assert_array_equal(confusion_matrix(pred, target, 3), CONF)


def test_confusion_matrix_rejects_out_of_range_values():
    with pytest.raises(ValueError, match="targets"):
        confusion_matrix(np.array([0, 1]), np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="predictions"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    # a prediction on an ignored pixel does not matter
    assert confusion_matrix(np.array([0, 9]), np.array([0, 255]), 3).sum() == 1


def test_segmentation_scores_by_hand():
    s = segmentation_scores(CONF)
    # tp = [2, 1, 3], gt = [3, 2, 4], pred = [3, 2, 4], union = [4, 3, 5]
    np.testing.assert_allclose(s["iou"], [2 / 4, 1 / 3, 3 / 5])
    assert s["miou"] == pytest.approx((0.5 + 1 / 3 + 0.6) / 3)
    assert s["pixel_acc"] == pytest.approx(6 / 9)
    np.testing.assert_allclose(s["class_acc"], [2 / 3, 1 / 2, 3 / 4])
    assert s["mean_class_acc"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)


def test_class_absent_everywhere_is_nan_and_left_out_of_the_mean():
    conf = np.zeros((4, 4), np.int64)
    conf[:3, :3] = CONF
    s = segmentation_scores(conf)
    assert math.isnan(s["iou"][3]) and math.isnan(s["class_acc"][3])
    assert s["miou"] == pytest.approx((0.5 + 1 / 3 + 0.6) / 3)
    assert s["mean_class_acc"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)


def test_class_only_predicted_scores_zero_and_counts():
    # class 1 never in ground truth but predicted once: IoU 0, part of the mean
    s = segmentation_scores(np.array([[3, 1], [0, 0]]))
    np.testing.assert_allclose(s["iou"], [0.75, 0.0])
    assert s["miou"] == pytest.approx(0.375)
    assert math.isnan(s["class_acc"][1]) and s["mean_class_acc"] == pytest.approx(0.75)


def test_hungarian_on_permuted_perfect_prediction_gives_miou_one():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, (7, 9))
    perm = np.array([3, 0, 4, 1, 2])  # class c is predicted as cluster perm[c]
    conf = confusion_matrix(perm[target], target, 5)
    mapping = hungarian_match(conf)
    np.testing.assert_array_equal(mapping[perm], np.arange(5))
    matched = apply_mapping(conf, mapping)
    assert segmentation_scores(matched)["miou"] == 1.0
    assert matched.sum() == target.size


def test_more_clusters_than_classes_maps_leftovers_to_majority_class():
    # gt 0: six pixels, clusters 0,0,0,0,2,2; gt 1: four pixels, clusters 1,1,1,2
    target = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    pred = np.array([0, 0, 0, 0, 2, 2, 1, 1, 1, 2])
    conf = confusion_matrix(pred, target, 2, num_pred=3)
    np.testing.assert_array_equal(conf, [[4, 0, 2], [0, 3, 1]])
    mapping = hungarian_match(conf)
    np.testing.assert_array_equal(mapping, [0, 1, 0])  # cluster 2 is mostly class 0
    matched = apply_mapping(conf, mapping)
    np.testing.assert_array_equal(matched, [[6, 0], [1, 3]])
    s = segmentation_scores(matched)
    np.testing.assert_allclose(s["iou"], [6 / 7, 3 / 4])
    assert s["pixel_acc"] == pytest.approx(0.9)


def test_fewer_clusters_than_classes_leaves_a_class_unpredicted():
    conf = np.array([[5, 0], [0, 4], [1, 2]])  # class 2 has no cluster of its own
    mapping = hungarian_match(conf)
    np.testing.assert_array_equal(mapping, [0, 1])
    s = segmentation_scores(apply_mapping(conf, mapping))
    np.testing.assert_allclose(s["iou"], [5 / 6, 4 / 6, 0.0])


def test_seen_unseen_harmonic_mean():
    iou = np.array([0.8, 0.6, np.nan, 0.2])
    s = seen_unseen_scores(iou, np.array([True, True, False, False]))
    assert s["miou_seen"] == pytest.approx(0.7)
    assert s["miou_unseen"] == pytest.approx(0.2)  # the NaN class is left out
    assert s["hiou"] == pytest.approx(2 * 0.7 * 0.2 / 0.9)
    assert seen_unseen_scores(np.array([0.5, 0.0]), np.array([True, False]))["hiou"] == 0.0
