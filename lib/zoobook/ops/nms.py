"""Non-maximum suppression in plain torch.

* :func:`fast_nms` is YOLACT's "fast NMS": per class, a box is dropped when any
  higher-scoring box of the same class overlaps it by more than the threshold, *even if that
  box was itself dropped*. It is one matrix operation, no loop.
* :func:`fast_nms_best` is what YOLACT's ``Detect`` does with it: fast NMS over the boxes whose
  best class score passes a threshold, then the best survivors of all classes. It returns
  exactly what :func:`fast_nms` and a global sort return, but looks only at the few scores that
  can reach the result.
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


def fast_nms_best(boxes: torch.Tensor, scores: torch.Tensor, *, score_threshold: float | None = None,
                  iou_threshold: float = 0.5, top_k: int = 200,
                  max_detections: int = 100) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``max_detections`` best survivors of :func:`fast_nms`, by decreasing score, as YOLACT's
    ``Detect`` selects them: ``boxes [N, 4]``, per-class ``scores [C, N]`` (a view is fine).

    Candidates are the boxes whose best class score is ``> score_threshold`` (all boxes when
    None); every class then runs fast NMS over its ``top_k`` best candidates, whatever their
    score in that class. Returns ``(box_index [K] into boxes, class_index [K], score [K])``,
    equal to ``fast_nms(boxes[c], scores[:, c])`` followed by ``argsort(descending=True)`` of the
    scores and ``[:max_detections]``, ``c`` the candidates.

    Only the scores that can reach the result are sorted: the ``count`` highest ones, ``count``
    growing until at least ``max_detections`` of them survive. Equal scores within a class are
    ordered as torch's (unstable) sort orders them, by sorting that class's scores. Where equal
    scores meet in the result, whose global order depends on every survivor, or where most
    scores would be needed, it runs exactly the reference computation instead.
    """
    peak = scores.amax(dim=0)  # NaN where a box has a NaN score
    if score_threshold is None:
        candidates = torch.ones_like(peak, dtype=torch.bool)
        if bool(peak.isnan().any()):
            return _fast_nms_best_sorting_all(boxes, scores, candidates, iou_threshold, top_k, max_detections)
    else:
        candidates = peak > score_threshold
    index = candidates.nonzero()[:, 0]
    total = len(index) * scores.shape[0]
    count = 2 * max_detections
    while 0 < count <= total // 4:
        found = _best_among_highest(boxes, scores, index, peak[index], count, iou_threshold,
                                    min(top_k, len(index)), max_detections)
        if found is _TIED:
            break
        if found is not None:
            return found
        count *= 4
    return _fast_nms_best_sorting_all(boxes, scores, candidates, iou_threshold, top_k, max_detections)


_TIED = object()


def _fast_nms_best_sorting_all(boxes, scores, candidates, iou_threshold, top_k, max_detections):
    """The reference computation: fast NMS after sorting every candidate score, a global sort."""
    index = candidates.nonzero()[:, 0]
    box_index, classes, class_scores = fast_nms(boxes[candidates], scores[:, candidates],
                                                iou_threshold=iou_threshold, top_k=top_k)
    best = class_scores.argsort(descending=True)[:max_detections]
    return index[box_index[best]], classes[best], class_scores[best]


def _best_among_highest(boxes, scores, index, peak, count, iou_threshold, top_k, max_detections):
    """:func:`fast_nms_best` from the ``count`` highest candidate scores, or None when fewer than
    ``max_detections`` of them survive and some class has more below, or ``_TIED``."""
    classes, value, box, rank, per_class = _highest_scores(scores, index, peak, count, top_k)
    head = rank < top_k
    classes, value, box, rank = classes[head], value[head], box[head], rank[head]
    keep = _max_overlap_in_class(boxes[box], classes, rank) <= iou_threshold
    # survivors with a lower score exist only in classes with fewer than top_k here
    complete = bool((per_class >= top_k).all())
    if int(keep.sum()) < max_detections and not complete:
        return None
    value, order = value[keep].sort(descending=True, stable=True)
    edge = value[:max_detections + 1]
    if bool((edge[1:] == edge[:-1]).any()):
        return _TIED  # the global sort is unstable too, over every survivor of every class
    order = order[:max_detections]
    return box[keep][order], classes[keep][order], value[:max_detections]


def _highest_scores(scores, index, peak, count, top_k):
    """The candidate scores at least as high as the ``count``-th highest, as ``(class, score,
    box, rank in class, count per class)``, class-major and in the order of torch's descending
    sort of each class's scores."""
    # they lie in the candidates whose own best score is among the `count` highest of those:
    # each of these holds one score at least that high
    rows = index[peak >= peak.topk(min(count, len(peak))).values[-1]]
    block = scores[:, rows]
    classes, column = (block >= block.reshape(-1).topk(count).values[-1]).nonzero(as_tuple=True)
    value, box = block[classes, column], rows[column]
    order = value.argsort(descending=True, stable=True)
    order = order[classes[order].argsort(stable=True)]
    classes, value, box = classes[order], value[order], box[order]
    per_class = torch.bincount(classes, minlength=scores.shape[0])
    start = per_class.cumsum(0) - per_class
    rank = torch.arange(len(classes)) - start[classes]
    # equal scores of a class (up to rank top_k) come in the order of torch's unstable sort of
    # the class's whole row, which sorting that row alone reproduces (rows sort independently)
    tied = (classes[1:] == classes[:-1]) & (value[1:] == value[:-1]) & (rank[1:] <= top_k)
    for c in torch.unique(classes[1:][tied]).tolist():
        first, length = int(start[c]), int(per_class[c])
        row_value, row_order = scores[c:c + 1, index].sort(dim=1, descending=True)
        value[first:first + length], box[first:first + length] = row_value[0, :length], index[row_order[0, :length]]
    return classes, value, box, rank, per_class


def _max_overlap_in_class(boxes: torch.Tensor, classes: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """For boxes ``[M, 4]`` of ``classes [M]`` at ``rank [M]`` within their class (0 = best; every
    rank below a box's is present), the largest IoU with a better box of the same class, 0 for
    the best: the column maxima of fast NMS's upper-triangular IoU matrices.

    Classes are padded to matrices in groups of similar length (up to a power of two), so the
    work stays near the sum of squared lengths rather than classes x longest squared."""
    out = boxes.new_zeros(len(classes))
    length = torch.bincount(classes)
    group = torch.ceil(torch.log2(length.clamp(min=1).double())).long()
    for g in torch.unique(group[length > 0]).tolist():
        members = ((group == g) & (length > 0)).nonzero()[:, 0]
        slot = torch.full_like(length, -1)
        slot[members] = torch.arange(len(members))
        mine = slot[classes] >= 0
        where = (slot[classes[mine]], rank[mine])
        padded = boxes.new_zeros((len(members), int(length[members].max()), 4))
        padded[where] = boxes[mine]
        iou = box_iou(padded, padded).triu_(diagonal=1)
        out[mine] = iou.max(dim=1).values[where]
    return out


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
