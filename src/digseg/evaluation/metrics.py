"""Segmentation metrics: a dataset-level confusion matrix (mmseg's and CAT-Seg's means), road and medical scores."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray


def _as_long(x: ArrayLike) -> torch.Tensor:
    x = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
    if x.dtype.kind not in "biu":
        raise ValueError(f"expected an integer array, got dtype {x.dtype}")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64)).reshape(-1)


def _pct(num: torch.Tensor, den: torch.Tensor) -> list[float | None]:
    return [100.0 * float(n) / float(d) if d > 0 else None for n, d in zip(num.tolist(), den.tolist())]


def _mean(values: list[float | None], keep: list[bool]) -> float:
    vals = [v for v, k in zip(values, keep) if k and v is not None]
    return sum(vals) / len(vals) if vals else float("nan")


class SegmentationMetric:
    """Dataset-level semantic segmentation metric over ``num_classes`` classes."""

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: list[str] | None = None) -> None:
        self.num_classes = k = int(num_classes)
        self.ignore_index = int(ignore_index)
        if 0 <= self.ignore_index < k:
            raise ValueError(f"ignore_index {ignore_index} collides with a class id in [0, {num_classes})")
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
        if len(self.class_names) != k:
            raise ValueError(f"got {len(self.class_names)} class names for {k} classes")
        self.confusion = torch.zeros(k, k, dtype=torch.int64)  # [K, K]: rows label class, columns predicted class
        # [K]: pixels of each label class predicted outside [0, K) ("none"): in the label's area, in no column
        self.invalid_pred = torch.zeros(k, dtype=torch.int64)

    def update(self, pred: ArrayLike, label: ArrayLike) -> None:
        """Add integer ``pred`` and ``label`` of one shape; ignored pixels dropped, labels outside [0, K) refused."""
        if tuple(pred.shape) != tuple(label.shape):
            raise ValueError(f"pred shape {tuple(pred.shape)} != label shape {tuple(label.shape)}")
        p, lab = _as_long(pred), _as_long(label)  # [N], [N]
        k = self.num_classes
        keep = lab != self.ignore_index
        p, lab = p[keep], lab[keep]
        bad = (lab < 0) | (lab >= k)
        if bool(bad.any()):
            raise ValueError(f"label values out of range [0, {k}) and not ignore_index ({self.ignore_index}): "
                             + ", ".join(str(v) for v in torch.unique(lab[bad]).tolist()[:10]))
        valid = (p >= 0) & (p < k)
        self.confusion += torch.bincount(lab[valid] * k + p[valid], minlength=k * k).view(k, k)
        self.invalid_pred += torch.bincount(lab[~valid], minlength=k)

    def merge(self, other: "SegmentationMetric") -> None:
        """Add another metric's counts (e.g. from another process)."""
        self.confusion += other.confusion.to(self.confusion.device)
        self.invalid_pred += other.invalid_pred.to(self.invalid_pred.device)

    def compute(self, present_only: bool = False) -> dict[str, Any]:
        """Percentages (None where undefined, NaN means of nothing): mIoU / mDice over classes with union > 0 (mmseg),
        mAcc over classes in the label, every mean over those with ``present_only`` (CAT-Seg); per-class IoU / acc."""
        inter = self.confusion.diagonal()  # [K] each
        area_pred = self.confusion.sum(dim=0)
        area_label = self.confusion.sum(dim=1) + self.invalid_pred
        union = area_pred + area_label - inter
        iou, acc, dice = _pct(inter, union), _pct(inter, area_label), _pct(2 * inter, area_pred + area_label)
        present = (area_label > 0).tolist()
        keep = present if present_only else (union > 0).tolist()
        total = int(area_label.sum())
        return {"mIoU": _mean(iou, keep), "aAcc": 100.0 * int(inter.sum()) / total if total > 0 else float("nan"),
                "mAcc": _mean(acc, present), "mDice": _mean(dice, keep),
                "per_class": dict(zip(self.class_names, iou)), "per_class_acc": dict(zip(self.class_names, acc))}


def binary_scores(metric: SegmentationMetric) -> dict[str, float]:
    """IoU, precision, recall, F1 (percent; 0 / 0 is NaN) of class 1; out-of-range predictions count as missed."""
    cm = metric.confusion
    tp = int(cm[1, 1])
    fp = int(cm[:, 1].sum()) - tp
    fn = int(cm[1, :].sum()) - tp + int(metric.invalid_pred[1])
    ratios = {"IoU": (tp, tp + fp + fn), "precision": (tp, tp + fp), "recall": (tp, tp + fn),
              "F1": (2 * tp, 2 * tp + fp + fn)}  # (numerator, denominator)
    return {name: 100.0 * n / d if d > 0 else float("nan") for name, (n, d) in ratios.items()}


def per_image_dice_iou(pred: ArrayLike, label: ArrayLike) -> tuple[float, float]:
    """Dice and IoU (fractions) of one image's bool foreground masks, ignored pixels False; both empty: (1.0, 1.0)."""
    inter, sp, sl = int((pred & label).sum()), int(pred.sum()), int(label.sum())
    union = sp + sl - inter
    return (1.0, 1.0) if union == 0 else (2.0 * inter / (sp + sl), inter / union)


def format_markdown_table(rows: list[dict], columns: Sequence[str], digits: int = 2) -> str:
    """Markdown table of ``rows`` restricted to ``columns``; floats to ``digits`` places, None -> '-'."""
    cells = [["-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)
              for v in (r.get(c) for c in columns)] for r in rows]
    table = [[str(c) for c in columns], *cells]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    lines = ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in table]
    return "\n".join([lines[0], "|" + "|".join("-" * (w + 2) for w in widths) + "|", *lines[1:]])
