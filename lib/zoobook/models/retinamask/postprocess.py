"""RetinaMask post-processing: the original (maskrcnn-benchmark) path and the Ascend port's.

Their conventions differ and are kept apart:

========================  =================================  =====================================
step                      original                           port (host side of the .om)
========================  =================================  =====================================
candidates                per level: score > 0.05, top 1000  in the graph: one global top 1000
clip                      x to [0, w-1], y to [0, h-1]       in the graph: [0, 1344]
NMS                       per class, IoU >= 0.4 suppresses   class offsets, IoU > 0.4 suppresses
kept                      top 100, then top 50 (with masks)  first 100 by score
back to the original      separate x and y ratios            one ratio (1344 / long side), clip W, H
COCO box                  w = x2 - x1 + 1                    w = x2 - x1
mask paste                PIL bilinear, box truncated        cv2 bilinear, size from unrounded box
========================  =================================  =====================================

Both NMS variants use areas with the legacy +1.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from zoobook.models.retinamask.network import NUM_ANCHORS, NUM_CLASSES, decode_boxes
from zoobook.timing import timed

PRE_NMS_THRESH, PRE_NMS_TOP_N, NMS_THRESH = 0.05, 1000, 0.4
DETECTIONS, MASK_DETECTIONS = 100, 50


def legacy_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU with +1 sides, ``a [N, 4]`` x ``b [M, 4]`` -> ``[N, M]``."""
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def legacy_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, *, suppress_equal: bool = True,
               order: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy NMS with +1 areas: indices kept, by decreasing score. A box is dropped when its
    IoU with a kept box is >= ``threshold`` (``suppress_equal``, the original) or > it (the port).
    ``order`` (indices by decreasing score) sets how exact ties are visited; by default a
    stable descending sort. Computed by :func:`greedy_nms`, in the boxes' dtype."""
    if order is None:
        order = scores.argsort(descending=True, stable=True)
    boxes = boxes.detach().cpu().numpy()
    if boxes.dtype.kind != "f":  # torch divides integer tensors in float32
        boxes = boxes.astype(np.float32)
    kept = greedy_nms(boxes, order.cpu().numpy(), threshold, suppress_equal=suppress_equal)
    return order[torch.from_numpy(kept)]


NMS_BLOCK = 128  # boxes visited per vectorised step of greedy_nms


def greedy_nms(boxes: np.ndarray, order: np.ndarray, threshold: float, *, suppress_equal: bool,
               limit: int | None = None) -> np.ndarray:
    """Greedy NMS with +1 areas over xyxy ``boxes [N, 4]`` visited in ``order`` (indices, best
    first): the positions in ``order`` of the kept boxes, at most ``limit`` of them.

    The same decisions as the full-matrix loop (:func:`legacy_iou`, then keep box i unless a
    kept box before it overlaps it): the IoU of each pair is computed with the same float
    operations in the same order, in the boxes' dtype (so is the threshold), but only for
    the pairs that decide: the boxes of one block of ``NMS_BLOCK`` against those kept in
    earlier blocks and against each other. Whether a box is kept depends only on the kept
    boxes before it, so stopping at ``limit`` kept leaves the first ``limit`` unchanged."""
    ordered = np.asarray(boxes)[np.asarray(order)]
    x1, y1, x2, y2 = (np.ascontiguousarray(ordered[:, k]) for k in range(4))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    columns = (x1, y1, x2, y2, area)
    threshold = area.dtype.type(threshold)  # torch compares a float tensor with a Python float in its dtype
    limit = len(ordered) if limit is None else limit
    kept: list[int] = []
    for start in range(0, len(ordered), NMS_BLOCK):
        if len(kept) >= limit:
            break
        block = slice(start, min(start + NMS_BLOCK, len(ordered)))
        cols = tuple(c[block] for c in columns)
        alive = np.ones(len(cols[0]), dtype=bool)
        if kept:
            before = np.asarray(kept)
            alive = ~_overlaps(tuple(c[before] for c in columns), cols, threshold, suppress_equal).any(axis=0)
        over = _overlaps(cols, cols, threshold, suppress_equal)
        for i in range(len(alive)):
            if alive[i]:
                kept.append(start + i)
                if len(kept) == limit:
                    break
                alive &= ~over[i]
    return np.asarray(kept, dtype=np.int64)


def _overlaps(rows: tuple, cols: tuple, threshold: np.floating, suppress_equal: bool) -> np.ndarray:
    """``[R, C]`` bool: IoU(row box, column box) >= (or >) ``threshold``; each side is
    (x1, y1, x2, y2, area) columns. :func:`legacy_iou`'s operations, in its order."""
    ax1, ay1, ax2, ay2, area_a = (c[:, None] for c in rows)
    bx1, by1, bx2, by2, area_b = cols
    w = np.maximum(np.minimum(ax2, bx2) - np.maximum(ax1, bx1) + 1, 0)
    h = np.maximum(np.minimum(ay2, by2) - np.maximum(ay1, by1) + 1, 0)
    inter = w * h
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area_a + area_b - inter)
    return iou >= threshold if suppress_equal else iou > threshold


def _top_by_kth(scores: torch.Tensor, count: int) -> torch.Tensor:
    """The reference's "top ``count``": every entry scoring at least the count-th best (ties
    may keep more), in their current order."""
    if len(scores) <= count:
        return torch.arange(len(scores))
    threshold = torch.kthvalue(scores, len(scores) - count + 1).values
    return torch.nonzero(scores >= threshold).flatten()


def level_candidates(logits: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor,
                     image_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One level (image 0): sigmoid scores above 0.05, the best 1000 of them, decoded and
    clipped to the unpadded image. -> boxes [K, 4], scores [K], labels [K] (1..80)."""
    _, _, height, width = logits.shape
    scores = logits[0].view(NUM_ANCHORS, NUM_CLASSES, height, width).permute(2, 3, 0, 1).reshape(-1, NUM_CLASSES)
    scores = scores.sigmoid()
    regression = deltas[0].view(NUM_ANCHORS, 4, height, width).permute(2, 3, 0, 1).reshape(-1, 4)
    candidates = scores > PRE_NMS_THRESH
    count = min(int(candidates.sum()), PRE_NMS_TOP_N)
    chosen_scores, top = scores[candidates].topk(count, sorted=False)
    where = torch.nonzero(candidates)[top]
    anchor, labels = where[:, 0], where[:, 1] + 1
    boxes = decode_boxes(regression[anchor], anchors[anchor])
    h, w = image_hw
    boxes = torch.stack([boxes[:, 0].clamp(0, w - 1), boxes[:, 1].clamp(0, h - 1),
                         boxes[:, 2].clamp(0, w - 1), boxes[:, 3].clamp(0, h - 1)], dim=1)
    keep = ((boxes[:, 2] - boxes[:, 0] + 1) >= 0) & ((boxes[:, 3] - boxes[:, 1] + 1) >= 0)
    return boxes[keep], chosen_scores[keep], labels[keep]


def original_detections(logits: list[torch.Tensor], deltas: list[torch.Tensor], anchors: list[torch.Tensor],
                        image_hw: tuple[int, int], *, with_masks: bool = True) -> dict[str, torch.Tensor]:
    """The original post-processor: per-level candidates, per-class NMS at 0.4, the top 100;
    with masks on, only the top 50 of those are the model's output (``final``)."""
    parts = [level_candidates(c, d, a, image_hw) for c, d, a in zip(logits, deltas, anchors)]
    boxes, scores, labels = (torch.cat(p) for p in zip(*parts))
    kept = []
    for label in range(1, NUM_CLASSES + 1):
        index = torch.nonzero(labels == label).flatten()
        if len(index):
            kept.append(index[legacy_nms(boxes[index], scores[index], NMS_THRESH)])
    keep = torch.cat(kept) if kept else torch.zeros(0, dtype=torch.long)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    top = _top_by_kth(scores, DETECTIONS)
    out = {"post_nms_boxes": boxes[top], "post_nms_scores": scores[top], "post_nms_labels": labels[top]}
    if with_masks:
        final = _top_by_kth(out["post_nms_scores"], MASK_DETECTIONS)
        out.update(boxes=out["post_nms_boxes"][final], scores=out["post_nms_scores"][final],
                   labels=out["post_nms_labels"][final])
    else:
        out.update(boxes=out["post_nms_boxes"], scores=out["post_nms_scores"], labels=out["post_nms_labels"])
    return out


# ---------------------------------------------------------------------------------------
# Mask pasting


def _expand(box: np.ndarray, scale: float) -> np.ndarray:
    """Widen xyxy ``box`` [4] (or boxes [N, 4]) by ``scale`` about its centre, in the box's
    dtype (a float32 box stays float32: NumPy casts the Python-float scale to float32, as the
    references do)."""
    half = (box[..., 2:] - box[..., :2]) * 0.5 * scale
    centre = (box[..., 2:] + box[..., :2]) * 0.5
    return np.concatenate([centre - half, centre + half], axis=-1)


def _port_float(values: np.ndarray) -> np.ndarray:
    """float64 stays float64, anything else becomes float32: the two dtypes the port's boxes
    take on the host (see :func:`port_postprocess`)."""
    values = np.asarray(values)
    return values if values.dtype == np.float64 else values.astype(np.float32)


def paste_original(mask: np.ndarray, box: np.ndarray, image_hw: tuple[int, int], *, threshold: float = 0.5,
                   padding: int = 1) -> np.ndarray:
    """maskrcnn-benchmark's Masker: pad the 28x28 map by 1, widen the box by 30/28 about its
    centre, truncate it to int, PIL-bilinear resize to (x2 - x1 + 1, y2 - y1 + 1), > 0.5,
    paste into the image, clipped."""
    from PIL import Image

    side = mask.shape[-1]
    padded = np.pad(mask.astype(np.float32).reshape(side, side), padding)
    box = _expand(np.asarray(box, np.float32), (side + 2 * padding) / side).astype(np.float32).astype(np.int32)
    w, h = max(int(box[2] - box[0] + 1), 1), max(int(box[3] - box[1] + 1), 1)
    resized = np.asarray(Image.fromarray(padded, mode="F").resize((w, h), Image.BILINEAR)) > threshold
    return _place(resized, box[0], box[1], box[2] + 1, box[3] + 1, image_hw)


def paste_port(mask: np.ndarray, box: np.ndarray, image_hw: tuple[int, int], *, threshold: float = 0.5,
               padding: int = 1) -> np.ndarray:
    """The port's cv2 Masker (``paste_mask_in_image``, tools/utils.py @507c3754) for one mask.

    ``mask`` [28, 28] (or [1, 28, 28]) probabilities; ``box`` xyxy [4] in image pixels,
    computed in float32, or in float64 when it comes as float64 (see :func:`port_postprocess`).
    The map is zero-padded by ``padding`` (float32) and the box widened by 30/28 about its
    centre, both in the box's dtype. The resize size comes from the widened box *before* any
    rounding, w = round(max(x2' - x1' + 1, 1)) and likewise h (Python round, half to even);
    cv2 bilinear resize, then > ``threshold``. The rounded corners only place it: the window
    is [round(y1'), min(round(y2'), H)) x [round(x1'), min(round(x2'), W)), clipped at 0; its
    end is round(x2'), not + 1. ``image_hw`` (H, W) -> bool [H, W]."""
    return paste_port_masks(mask, _port_float(box).reshape(1, 4), image_hw, threshold=threshold, padding=padding)[0]


def paste_port_masks(masks: np.ndarray, boxes: np.ndarray, image_hw: tuple[int, int], *, threshold: float = 0.5,
                     padding: int = 1) -> np.ndarray:
    """:func:`paste_port` for ``masks [N, S, S]`` (or [N, 1, S, S]) and xyxy ``boxes [N, 4]``
    (float64 stays float64, anything else is float32) -> bool [N, H, W], mask k in plane k.
    The same result, with the padding, widening and rounding done for all boxes at once, each
    resized map compared into its window of one preallocated array, and no resize for a
    window that lies outside the image."""
    side = masks.shape[-1]
    masks = np.reshape(masks, (-1, side, side))
    padded = np.zeros((len(masks), side + 2 * padding, side + 2 * padding), np.float32)
    padded[:, padding:padding + side, padding:padding + side] = masks
    wide = _expand(_port_float(boxes).reshape(-1, 4), (side + 2 * padding) / side)
    sizes = np.maximum(wide[:, 2:] - wide[:, :2] + 1, 1).tolist()  # Python floats: exact
    height, width = image_hw
    out = np.zeros((len(masks), height, width), dtype=bool)
    for k, ((w, h), (x1, y1, x2, y2)) in enumerate(zip(sizes, wide.tolist())):
        x1, y1, x2, y2 = round(x1), round(y1), round(x2), round(y2)
        x0, y0, x_end, y_end = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
        if x_end > x0 and y_end > y0:
            resized = cv2.resize(padded[k], (round(w), round(h)), interpolation=cv2.INTER_LINEAR)
            np.greater(resized[y0 - y1:y_end - y1, x0 - x1:x_end - x1], threshold, out=out[k, y0:y_end, x0:x_end])
    return out


def _place(resized: np.ndarray, x1: int, y1: int, x_end: int, y_end: int, image_hw: tuple[int, int]) -> np.ndarray:
    height, width = image_hw
    out = np.zeros((height, width), dtype=bool)
    x0, y0 = max(int(x1), 0), max(int(y1), 0)
    x_end, y_end = min(int(x_end), width), min(int(y_end), height)
    if x_end > x0 and y_end > y0:
        out[y0:y_end, x0:x_end] = resized[y0 - int(y1):y_end - int(y1), x0 - int(x1):x_end - int(x1)]
    return out


# ---------------------------------------------------------------------------------------
# The port's host side


def port_postprocess(boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray, masks: np.ndarray, *,
                     ratio: float, image_hw: tuple[int, int], keep: int = DETECTIONS) -> dict[str, np.ndarray]:
    """The port's host post-processing of the graph's outputs (1000 each): class-aware NMS
    through coordinate offsets (IoU > 0.4 suppresses, +1 areas; boxes visited in the order of
    ``np.argsort(scores)[::-1]``, as the port does, so exact ties match), the first ``keep`` by
    score, boxes divided by ``ratio`` and clipped to [0, W] x [0, H], masks pasted the cv2
    way (:func:`paste_port`). The boxes stay float32, except when NMS keeps fewer than
    ``keep``: the port then pads its arrays with float64 zeros, which makes the kept boxes
    float64 before the division, clip and paste, and so here too.

    ``boxes [N, 4]`` xyxy float32 in the graph's input pixels, ``labels [N]`` 1..80,
    ``scores [N]``, ``masks [N, 1, 28, 28]``; ``image_hw`` (H, W) of the original image ->
    boxes [K, 4], scores [K], labels [K] int64, masks bool [K, H, W], K <= ``keep``. NMS stops
    once ``keep`` boxes are kept (:func:`greedy_nms`): the later ones cannot change them."""
    boxes, labels = np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels).reshape(-1)
    scores, masks = np.asarray(scores, np.float32).reshape(-1), np.asarray(masks).reshape(len(labels), 28, 28)
    with timed("nms"):
        offset = labels.astype(np.float32)[:, None] * (boxes.max() + 1)
        port_order = np.argsort(scores)[::-1]  # the port's: exact ties come reversed
        chosen = port_order[greedy_nms(boxes + offset, port_order, NMS_THRESH, suppress_equal=False, limit=keep)]
    with timed("boxes"):
        height, width = image_hw
        scaled = boxes[chosen].astype(np.float32 if len(chosen) >= keep else np.float64) / ratio
        scaled[:, 0::2] = scaled[:, 0::2].clip(0, width)
        scaled[:, 1::2] = scaled[:, 1::2].clip(0, height)
    with timed("masks"):
        pasted = paste_port_masks(masks[chosen], scaled, image_hw)
    return {"boxes": scaled, "scores": scores[chosen], "labels": labels[chosen].astype(np.int64), "masks": pasted}


def coco_xywh(boxes: np.ndarray, *, plus_one: bool) -> np.ndarray:
    """xyxy [N, 4] -> COCO xywh [N, 4], in float32 (float64 boxes stay float64, as in the
    port); the original writes w = x2 - x1 + 1, the port w = x2 - x1."""
    out = _port_float(boxes).copy()
    out[:, 2:] = out[:, 2:] - out[:, :2] + (1 if plus_one else 0)
    return out
