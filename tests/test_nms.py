"""Fast NMS (YOLACT) and greedy NMS on hand-made boxes."""

from __future__ import annotations

import torch

from zoobook.ops.boxes import box_iou
from zoobook.ops.nms import fast_nms, nms

# A overlaps B (IoU 0.6), B overlaps C (IoU 0.6), A and C barely touch (IoU ~0.25)
A = [0.0, 0.0, 10.0, 10.0]
B = [2.5, 0.0, 12.5, 10.0]
C = [5.0, 0.0, 15.0, 10.0]


def test_box_iou_plain_convention():
    iou = box_iou(torch.tensor([A]), torch.tensor([B, C, [20.0, 20.0, 30.0, 30.0]]))
    torch.testing.assert_close(iou, torch.tensor([[0.6, 1 / 3, 0.0]]))


def test_suppressed_boxes_still_suppress_in_fast_nms():
    boxes = torch.tensor([A, B, C])
    scores = torch.tensor([[0.9, 0.8, 0.7]])
    index, classes, kept = fast_nms(boxes, scores, iou_threshold=0.5)
    assert index.tolist() == [0]  # C is dropped by B although B itself was dropped
    assert nms(boxes, scores[0], 0.5).tolist() == [0, 2]  # greedy NMS keeps C


def test_fast_nms_is_per_class_and_keeps_iou_at_threshold():
    boxes = torch.tensor([A, B, [0.0, 0.0, 10.0, 5.0]])  # third: IoU 0.5 exactly with A
    scores = torch.tensor([[0.9, 0.8, 0.1], [0.1, 0.7, 0.6]])
    index, classes, kept = fast_nms(boxes, scores, iou_threshold=0.5)
    pairs = sorted(zip(classes.tolist(), index.tolist()))
    # class 0: A kept, B dropped (0.6), third kept (0.5 <= 0.5); class 1: B, third, A (0.6 with B -> dropped)
    assert pairs == [(0, 0), (0, 2), (1, 1), (1, 2)]


def test_fast_nms_top_k_limits_candidates_per_class():
    boxes = torch.tensor([[float(10 * i), 0.0, float(10 * i + 5), 5.0] for i in range(6)])
    scores = torch.linspace(0.9, 0.4, 6)[None]
    index, _, kept = fast_nms(boxes, scores, top_k=3)
    assert index.tolist() == [0, 1, 2]
    torch.testing.assert_close(kept, scores[0, :3])
