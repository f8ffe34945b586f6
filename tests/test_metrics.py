"""Tests for digseg.evaluation.metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from digseg.evaluation.metrics import (
    SegmentationMetric,
    binary_scores,
    format_markdown_table,
    per_image_dice_iou,
)

# K = 5. After dropping the ignore pixel (label 255):
#   label 0 0 1 1 2      pred 0 1 1 1 3
# class 0: I=1 pred=1 label=2 union=2 -> IoU 50,     acc 50,  dice 2/3 = 66.667
# class 1: I=2 pred=3 label=2 union=3 -> IoU 66.667, acc 100, dice 4/5 = 80
# class 2: I=0 pred=0 label=1 union=1 -> IoU 0,      acc 0,   dice 0
# class 3: I=0 pred=1 label=0 union=1 -> IoU 0 (predicted, absent from GT), acc None, dice 0
# class 4: absent from both -> None everywhere, excluded
LABEL = [0, 0, 1, 1, 2, 255]
PRED = [0, 1, 1, 1, 3, 0]


def _metric() -> SegmentationMetric:
    m = SegmentationMetric(5, class_names=["a", "b", "c", "d", "e"])
    m.update(np.array(PRED), np.array(LABEL))
    return m


def test_confusion_matrix() -> None:
    m = _metric()
    expected = torch.zeros(5, 5, dtype=torch.int64)
    expected[0, 0] = expected[0, 1] = expected[2, 3] = 1
    expected[1, 1] = 2
    assert torch.equal(m.confusion, expected)


def test_default_mmseg_semantics() -> None:
    r = _metric().compute()
    assert r["mIoU"] == pytest.approx((50 + 200 / 3 + 0 + 0) / 4)  # 29.1667, class 3 counts as 0
    assert r["aAcc"] == pytest.approx(60.0)  # 3 correct of 5 labelled pixels
    assert r["mAcc"] == pytest.approx((50 + 100 + 0) / 3)  # 50, classes present in GT
    assert r["mDice"] == pytest.approx((200 / 3 + 80 + 0 + 0) / 4)  # 36.6667
    assert r["per_class"]["a"] == pytest.approx(50.0)
    assert r["per_class"]["b"] == pytest.approx(200 / 3)
    assert r["per_class"]["c"] == 0.0 and r["per_class"]["d"] == 0.0
    assert r["per_class"]["e"] is None
    assert r["per_class_acc"] == pytest.approx({"a": 50.0, "b": 100.0, "c": 0.0, "d": None, "e": None})


def test_present_only_protocol() -> None:
    r = _metric().compute(present_only=True)
    assert r["mIoU"] == pytest.approx((50 + 200 / 3 + 0) / 3)  # 38.8889, class 3 excluded
    assert r["mDice"] == pytest.approx((200 / 3 + 80 + 0) / 3)  # 48.8889
    assert r["mAcc"] == pytest.approx(50.0)
    assert r["aAcc"] == pytest.approx(60.0)


def test_invalid_prediction_counts_as_wrong() -> None:
    # label 1 1, pred 1 255: class 1 I=1, pred=1, label=2 -> IoU 50, acc 50; class 0 union 0 -> None
    m = SegmentationMetric(2)
    m.update(torch.tensor([[1, 255]]), torch.tensor([[1, 1]]))
    r = m.compute()
    assert r["mIoU"] == pytest.approx(50.0) and r["aAcc"] == pytest.approx(50.0)
    assert r["per_class"] == {"0": None, "1": pytest.approx(50.0)}
    assert int(m.confusion.sum()) == 1


def test_bad_label_raises() -> None:
    m = SegmentationMetric(3)
    with pytest.raises(ValueError, match="7"):
        m.update(np.array([0, 1]), np.array([0, 7]))
    with pytest.raises(ValueError):
        m.update(np.array([0, 1, 2]), np.array([0, 1]))
    with pytest.raises(ValueError, match="ignore_index"):
        SegmentationMetric(300)  # 255 would be a class id
    with pytest.raises(ValueError, match="got 2 class names for 3 classes"):
        SegmentationMetric(3, class_names=["a", "b"])
    SegmentationMetric(300, ignore_index=65535).update(np.array([299]), np.array([65535]))


def test_merge_equals_single_update() -> None:
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, size=(6, 8, 8))
    label[label == 3] = 255
    pred = rng.integers(0, 4, size=(6, 8, 8))
    a, b, whole = SegmentationMetric(3), SegmentationMetric(3), SegmentationMetric(3)
    a.update(pred[:2], label[:2])
    b.update(torch.from_numpy(pred[2:]), torch.from_numpy(label[2:]))
    whole.update(pred, label)
    a.merge(b)
    assert torch.equal(a.confusion, whole.confusion)
    assert torch.equal(a.invalid_pred, whole.invalid_pred)
    assert a.compute() == whole.compute()


def test_binary_scores() -> None:
    # TP = 3, FP = 2, FN = 1 -> IoU 3/6, precision 3/5, recall 3/4, F1 6/9
    m = SegmentationMetric(2)
    m.update(np.array([0] * 5 + [1] * 2 + [0] + [1] * 3), np.array([0] * 7 + [1] * 4))  # confusion [[5, 2], [1, 3]]
    assert binary_scores(m) == pytest.approx({"IoU": 50.0, "precision": 60.0, "recall": 75.0, "F1": 200 / 3})


def test_per_image_dice_iou() -> None:
    # pred 1 1 0, label 1 0 1 -> I=1, |P|=2, |G|=2 -> dice 0.5, IoU 1/3
    dice, iou = per_image_dice_iou(np.array([1, 1, 0]) == 1, np.array([1, 0, 1]) == 1)
    assert dice == pytest.approx(0.5) and iou == pytest.approx(1 / 3)
    assert per_image_dice_iou(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == (1.0, 1.0)
    assert per_image_dice_iou(np.array([True, False]), np.array([False, False])) == (0.0, 0.0)


def test_format_markdown_table() -> None:
    text = format_markdown_table([{"name": "ade", "mIoU": 58.6}, {"name": "coco", "mIoU": None}], ["name", "mIoU"])
    lines = text.splitlines()
    assert lines[0].startswith("| name") and "mIoU" in lines[0]
    assert set(lines[1]) <= {"|", "-"}
    assert "58.60" in lines[2] and "-" in lines[3]


def test_empty_metric_is_nan() -> None:
    r = SegmentationMetric(3).compute()
    assert math.isnan(r["mIoU"]) and all(v is None for v in r["per_class"].values())
