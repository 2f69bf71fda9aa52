"""Non-maximum suppression in plain torch.

* :func:`fast_nms` is YOLACT's "fast NMS": per class, a box is dropped when any
  higher-scoring box of the same class overlaps it by more than the threshold, *even if that
  box was itself dropped*. It is one matrix operation, no loop.
* :func:`nms` is classic greedy NMS (a box only suppresses if it is kept).
"""

from __future__ import annotations

import torch

from zoobook.ops.boxes import box_iou


def fast_nms(boxes: torch.Tensor, scores: torch.Tensor, *, iou_threshold: float = 0.5,
             top_k: int = 200) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """YOLACT fast NMS over ``boxes [N, 4]`` and per-class ``scores [C, N]``.

    Per class the ``top_k`` highest scores are considered; box ``j`` survives when its
    largest IoU with a higher-scoring box ``i < j`` is ``<= iou_threshold``. Returns
    ``(box_index [K], class_index [K], score [K])`` of the survivors, class-major (not sorted
    globally).
    """
    top_k = min(top_k, scores.shape[1])
    sorted_scores, order = scores.sort(dim=1, descending=True)
    order, sorted_scores = order[:, :top_k], sorted_scores[:, :top_k]
    iou = box_iou(boxes[order], boxes[order]).triu_(diagonal=1)
    max_overlap = iou.max(dim=1).values if top_k else iou.new_zeros(order.shape)
    keep = max_overlap <= iou_threshold
    classes = torch.arange(scores.shape[0], device=scores.device)[:, None].expand_as(order)
    return order[keep], classes[keep], sorted_scores[keep]


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS: indices of kept boxes, by decreasing score. Boxes at IoU > threshold with a
    kept higher-scoring box are dropped."""
    order = scores.argsort(descending=True)
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    iou = box_iou(boxes[order], boxes[order])
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]
