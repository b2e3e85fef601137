"""FewShotIoU against hand-computed cases: ignore pixels, empty ground truth, sums first, 2-way."""

import math

import numpy as np
import pytest
import torch

from train.metrics import FewShotIoU, binary_iou, eval_target, score_episode

PRED = np.array([[1, 1, 0], [0, 0, 0]])
GT = np.array([[1, 0, 0], [1, 0, 0]])


def test_single_map_by_hand():
    m = FewShotIoU()
    assert m.update(PRED, GT, 3)
    r = m.compute()
    # fg: I = 1 (0,0); U = 3 {(0,0),(0,1),(1,0)}; bg: I = 3, U = 5
    assert r["per_class"] == {3: pytest.approx(100 / 3)}
    assert r["miou"] == pytest.approx(100 / 3)
    assert r["fb_iou"] == pytest.approx(100 * (1 / 3 + 3 / 5) / 2)


def test_ignore_pixels_excluded():
    gt = GT.copy()
    gt[0, 1] = 255  # the false positive sits on a void pixel
    m = FewShotIoU()
    m.update(torch.from_numpy(PRED), torch.from_numpy(gt), 3)  # tensors accepted too
    r = m.compute()
    assert r["miou"] == pytest.approx(100 * 1 / 2)
    assert r["fb_iou"] == pytest.approx(100 * (1 / 2 + 3 / 4) / 2)


def test_denet_protocol_counts_void_as_background():
    gt = GT.copy()
    gt[0, 1] = 255
    assert eval_target(gt, "denet").tolist() == [[1, 0, 0], [1, 0, 0]]
    assert eval_target(gt, "standard")[0, 1] == 255
    with pytest.raises(ValueError):
        eval_target(gt, "other")


def test_empty_ground_truth_adds_nothing():
    m = FewShotIoU()
    assert not m.update(np.ones((2, 3), int), np.zeros((2, 3), int), 5)
    assert not m.update(np.ones((2, 3), int), np.full((2, 3), 255), 5)
    r = m.compute()
    assert r["per_class"] == {} and math.isnan(r["miou"]) and math.isnan(r["fb_iou"])
    m.update(PRED, GT, 3)
    assert list(m.compute()["per_class"]) == [3]  # class 5 never entered the mean


def test_sums_first_not_mean_of_episodes():
    m = FewShotIoU()
    a_pred, a_gt = np.array([1, 1]), np.array([1, 0])  # I 1, U 2
    b_pred, b_gt = np.ones(10, int), np.r_[np.ones(9, int), 0]  # I 9, U 10
    m.update(a_pred, a_gt, 1)
    m.update(b_pred, b_gt, 1)
    m.update(np.array([1, 0, 0, 0]), np.array([1, 1, 1, 1]), 2)  # I 1, U 4
    r = m.compute()
    assert r["per_class"][1] == pytest.approx(100 * 10 / 12)  # not (50 + 90) / 2
    assert r["miou"] == pytest.approx((100 * 10 / 12 + 25) / 2)
    # FB-IoU: class sums pooled; bg: a I0 U1, b I0 U1, c I0 U3
    assert r["fb_iou"] == pytest.approx(100 * (11 / 16 + 0 / 5) / 2)


def test_two_way_each_way_under_its_own_class_absent_way_skipped():
    label = np.array([[1, 1, 0], [2, 2, 255]])
    preds = np.array([[[1, 0, 0], [0, 0, 0]], [[0, 0, 0], [1, 1, 1]]])
    m = FewShotIoU()
    ious = score_episode(m, preds, label, [4, 9], "standard")
    assert ious == [pytest.approx(50.0), pytest.approx(100.0)]  # way 2's (1,2) is void: ignored
    m_denet = FewShotIoU()
    ious = score_episode(m_denet, preds, label, [4, 9], "denet")
    assert ious[1] == pytest.approx(100 * 2 / 3)  # void counted as background: a false positive
    # a 2-way episode whose second class is absent from the query adds nothing for it
    m2 = FewShotIoU()
    ious = score_episode(m2, preds, np.array([[1, 1, 0], [0, 0, 0]]), [4, 9], "standard")
    assert ious[0] == pytest.approx(50.0) and math.isnan(ious[1])
    assert list(m2.compute()["per_class"]) == [4]


def test_binary_iou_and_merge():
    assert binary_iou(PRED, GT) == pytest.approx(100 / 3)
    assert math.isnan(binary_iou(np.zeros(3), np.zeros(3)))
    a, b, both = FewShotIoU(), FewShotIoU(), FewShotIoU()
    a.update(PRED, GT, 1)
    b.update(GT, GT, 2)
    both.update(PRED, GT, 1)
    both.update(GT, GT, 2)
    a.merge(b)
    assert a.compute() == both.compute()
