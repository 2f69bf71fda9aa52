"""Semantic segmentation scores from a confusion matrix accumulated over the whole set.

As mmseg 0.11's ``eval_metrics`` computes them: pixels whose ground truth is the ignore
index are dropped; per class c, I = #(pred = c and gt = c), U = #(pred = c) + #(gt = c) - I
over all images; IoU_c = I / U, mIoU the mean over classes with U > 0 (NaN classes
skipped); aAcc = sum I / number of counted pixels; mAcc the mean of I / #(gt = c).
"""

from __future__ import annotations

import numpy as np


class ConfusionMatrix:
    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)  # [gt, pred]

    def update(self, prediction: np.ndarray, ground_truth: np.ndarray) -> None:
        if prediction.shape != ground_truth.shape:
            raise ValueError(f"prediction {prediction.shape} and ground truth {ground_truth.shape} differ in shape")
        keep = ground_truth != self.ignore_index
        gt, pred = ground_truth[keep].astype(np.int64), prediction[keep].astype(np.int64)
        if gt.size and (gt.max() >= self.num_classes or pred.min() < 0 or pred.max() >= self.num_classes):
            raise ValueError(f"labels outside 0..{self.num_classes - 1} (and {self.ignore_index})")
        self.matrix += np.bincount(gt * self.num_classes + pred, minlength=self.num_classes ** 2).reshape(
            self.num_classes, self.num_classes)

    def scores(self) -> dict:
        inter = np.diag(self.matrix).astype(np.float64)
        gt, pred = self.matrix.sum(axis=1).astype(np.float64), self.matrix.sum(axis=0).astype(np.float64)
        union = gt + pred - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            iou, acc = inter / union, inter / gt
        total = gt.sum()
        return {"mIoU": float(np.nanmean(iou)) if np.any(union > 0) else float("nan"),
                "aAcc": float(inter.sum() / total) if total else float("nan"),
                "mAcc": float(np.nanmean(acc)) if np.any(gt > 0) else float("nan"),
                "IoU": iou.tolist(), "Acc": acc.tolist(), "pixels": int(total)}


class PixelAgreement:
    """How often two class maps of the same images agree, pixel by pixel, over a whole set:
    the share of equal pixels, and that share on the worst image (every pixel counts, ignored
    ground truth included: it compares two predictions, not a prediction with the truth)."""

    def __init__(self) -> None:
        self.equal, self.pixels, self.per_image = 0, 0, []

    def update(self, candidate: np.ndarray, reference: np.ndarray) -> None:
        if candidate.shape != reference.shape:
            raise ValueError(f"class maps {candidate.shape} and {reference.shape} differ in shape")
        same = int((candidate == reference).sum())
        self.equal, self.pixels = self.equal + same, self.pixels + reference.size
        self.per_image.append(same / reference.size)

    def result(self) -> dict:
        return {"pixels": self.pixels, "equal": self.equal, "share": self.equal / self.pixels if self.pixels else None,
                "worst_image": min(self.per_image) if self.per_image else None}
