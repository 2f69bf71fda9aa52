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

import numpy as np
import torch

from zoobook.models.retinamask.network import NUM_ANCHORS, NUM_CLASSES, decode_boxes

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
    stable descending sort."""
    if order is None:
        order = scores.argsort(descending=True, stable=True)
    iou = legacy_iou(boxes[order], boxes[order])
    over = iou >= threshold if suppress_equal else iou > threshold
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= over[i]
    return order[torch.tensor(keep, dtype=torch.long)]


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
    """Widen xyxy ``box`` [4] by ``scale`` about its centre, in the box's dtype (a float32
    box stays float32: NumPy casts the Python-float scale to float32, as the references do)."""
    half = (box[2:] - box[:2]) * 0.5 * scale
    centre = (box[2:] + box[:2]) * 0.5
    return np.concatenate([centre - half, centre + half])


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
    import cv2

    side = mask.shape[-1]
    padded = np.pad(np.asarray(mask, np.float32).reshape(side, side), padding)
    wide = _expand(_port_float(box), (side + 2 * padding) / side)
    w, h = (round(float(v)) for v in np.maximum(wide[2:] - wide[:2] + 1, 1))
    x1, y1, x2, y2 = (round(float(v)) for v in wide)
    resized = cv2.resize(padded, (w, h), interpolation=cv2.INTER_LINEAR) > threshold
    return _place(resized, x1, y1, x2, y2, image_hw)


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
    float64 before the division, clip and paste, and so here too."""
    boxes, labels = np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels).reshape(-1)
    scores, masks = np.asarray(scores, np.float32).reshape(-1), np.asarray(masks).reshape(len(labels), 28, 28)
    offset = labels.astype(np.float32)[:, None] * (boxes.max() + 1)
    port_order = torch.from_numpy(np.argsort(scores)[::-1].copy())  # the port's: exact ties come reversed
    chosen = legacy_nms(torch.from_numpy(boxes + offset), torch.from_numpy(scores), NMS_THRESH,
                        suppress_equal=False, order=port_order).numpy()[:keep]
    height, width = image_hw
    scaled = boxes[chosen].astype(np.float32 if len(chosen) >= keep else np.float64) / ratio
    scaled[:, 0::2] = scaled[:, 0::2].clip(0, width)
    scaled[:, 1::2] = scaled[:, 1::2].clip(0, height)
    pasted = np.stack([paste_port(masks[i], b, image_hw) for i, b in zip(chosen, scaled)]) if len(chosen) else \
        np.zeros((0, height, width), bool)
    return {"boxes": scaled, "scores": scores[chosen], "labels": labels[chosen].astype(np.int64), "masks": pasted}


def coco_xywh(boxes: np.ndarray, *, plus_one: bool) -> np.ndarray:
    """xyxy [N, 4] -> COCO xywh [N, 4], in float32 (float64 boxes stay float64, as in the
    port); the original writes w = x2 - x1 + 1, the port w = x2 - x1."""
    out = _port_float(boxes).copy()
    out[:, 2:] = out[:, 2:] - out[:, :2] + (1 if plus_one else 0)
    return out
