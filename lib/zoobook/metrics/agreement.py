"""Detection agreement: how exactly a backend reproduces the reference's detections.

COCO AP with the reference's detections as ground truth hides some of this (pycocotools
gives an empty mask IoU 0 even against an identical empty mask), so this evaluator matches
detections directly: per image, greedily by reference score, a candidate of the same class
with box IoU >= ``iou_threshold`` that no other reference took. Reported: the share of
reference detections matched (recall) and of candidate detections matched (precision), mean
box and mask IoU over matches (two empty masks agree: IoU 1), the largest score difference,
and the share of mask pixels that differ.
"""

from __future__ import annotations

import numpy as np


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), (union == 0) * 1.0)


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


class AgreementEvaluator:
    def __init__(self, iou_threshold: float = 0.5) -> None:
        self.iou_threshold = iou_threshold
        self.reset()

    def reset(self) -> None:
        self.reference_count = self.candidate_count = 0
        self.box_ious: list[float] = []
        self.mask_ious: list[float] = []
        self.score_diffs: list[float] = []
        self.pixels_differing = self.pixels = 0

    def process(self, references: list, candidates: list) -> None:
        for ref, cand in zip(references, candidates, strict=True):
            self._process_one(ref, cand)

    def _process_one(self, ref, cand) -> None:
        self.reference_count += len(ref.scores)
        self.candidate_count += len(cand.scores)
        if not len(ref.scores) or not len(cand.scores):
            return
        ious = _box_iou(ref.boxes, cand.boxes)
        ious[ref.classes[:, None] != cand.classes[None, :]] = -1
        taken = np.zeros(len(cand.scores), bool)
        for i in np.argsort(-ref.scores, kind="stable"):
            options = np.where(~taken & (ious[i] >= self.iou_threshold))[0]
            if not options.size:
                continue
            j = options[np.argmax(ious[i, options])]
            taken[j] = True
            self.box_ious.append(float(ious[i, j]))
            self.mask_ious.append(_mask_iou(ref.masks[i], cand.masks[j]))
            self.score_diffs.append(abs(float(ref.scores[i]) - float(cand.scores[j])))
            self.pixels_differing += int((ref.masks[i] != cand.masks[j]).sum())
            self.pixels += ref.masks[i].size

    def evaluate(self) -> dict:
        matched = len(self.box_ious)
        return {
            "reference_detections": self.reference_count, "candidate_detections": self.candidate_count,
            "matched": matched,
            "recall": matched / self.reference_count if self.reference_count else 1.0,
            "precision": matched / self.candidate_count if self.candidate_count else 1.0,
            "mean_box_iou": float(np.mean(self.box_ious)) if matched else float("nan"),
            "mean_mask_iou": float(np.mean(self.mask_ious)) if matched else float("nan"),
            "max_score_diff": float(np.max(self.score_diffs)) if matched else float("nan"),
            "mask_pixels_differing": self.pixels_differing / self.pixels if self.pixels else 0.0,
        }
