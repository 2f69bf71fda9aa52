"""YolactEdge host-side post-processing, shared by every backend.

From the six graph outputs (P3..P7, prototypes NHWC) to detections: the shared prediction
head (in torch, as the port does on the host), priors, SSD box decoding, YOLACT fast NMS,
then mask assembly at the original image size. Boxes inside are relative ``x1y1x2y2`` of the
550 input, which equals relative coordinates of the original image (the resize ignores the
aspect ratio).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from zoobook.ops.boxes import decode_ssd
from zoobook.ops.nms import fast_nms

LEVEL_SIZES = (69, 35, 18, 9, 5)
LEVEL_SCALES = (24, 48, 96, 192, 384)
ASPECT_RATIOS = (1.0, 0.5, 2.0)
CONF_THRESHOLD = 0.05
NMS_THRESHOLD = 0.5
NMS_TOP_K = 200
MAX_DETECTIONS = 100
MASK_THRESHOLD = 0.5


@lru_cache(maxsize=4)
def make_priors(sizes: tuple[int, ...] = LEVEL_SIZES, scales: tuple[int, ...] = LEVEL_SCALES,
                aspect_ratios: tuple[float, ...] = ASPECT_RATIOS, image_size: int = 550,
                square: bool = True) -> torch.Tensor:
    """Priors ``[sum(3*H*W), 4]`` as relative ``(cx, cy, w, h)``, in (level, y, x, ratio) order.

    ``square=True`` keeps the reference's ``use_square_anchors`` behaviour: the height is
    overwritten by the width, so ratios only change the size (x1, x0.707, x1.414).
    """
    priors = []
    for size, scale in zip(sizes, scales):
        ys, xs = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
        centres = np.stack([(xs + 0.5) / size, (ys + 0.5) / size], -1).reshape(-1, 1, 2)
        ratios = np.sqrt(np.asarray(aspect_ratios))
        w = scale * ratios / image_size
        h = w if square else scale / ratios / image_size
        wh = np.stack([w, h], -1)[None].repeat(len(centres), 0)
        priors.append(np.concatenate([centres.repeat(len(aspect_ratios), 1), wh], -1).reshape(-1, 4))
    return torch.from_numpy(np.concatenate(priors).astype(np.float32))


@dataclass
class Detections:
    """Detections of one image. ``boxes``: relative x1y1x2y2 [N, 4]; ``classes``: 0..79;
    ``scores`` descending; ``coefs`` [N, 32]; ``prototypes`` [138, 138, 32]."""

    boxes: torch.Tensor
    classes: torch.Tensor
    scores: torch.Tensor
    coefs: torch.Tensor
    prototypes: torch.Tensor

    def __len__(self) -> int:
        return len(self.scores)


def detect(loc: torch.Tensor, conf_logits: torch.Tensor, coefs: torch.Tensor,
           prototypes: torch.Tensor, priors: torch.Tensor | None = None) -> Detections:
    """Detect for one image: loc [P,4], conf_logits [P,81], coefs [P,32], prototypes [138,138,32].

    Softmax over 81 classes; priors whose best foreground score is > 0.05 enter *every*
    class's fast NMS (top 200, IoU 0.5); survivors of all classes are pooled and the 100
    best kept.
    """
    priors = make_priors() if priors is None else priors
    boxes = decode_ssd(loc, priors)
    scores = F.softmax(conf_logits, dim=-1)[:, 1:].t()
    kept = scores.max(dim=0).values > CONF_THRESHOLD
    boxes, scores, coefs = boxes[kept], scores[:, kept], coefs[kept]
    if scores.shape[1] == 0:
        empty = boxes.new_zeros((0,))
        return Detections(boxes.new_zeros((0, 4)), empty.long(), empty, coefs, prototypes)
    index, classes, class_scores = fast_nms(boxes, scores, iou_threshold=NMS_THRESHOLD, top_k=NMS_TOP_K)
    best = class_scores.argsort(descending=True)[:MAX_DETECTIONS]
    index = index[best]
    return Detections(boxes[index], classes[best], class_scores[best], coefs[index], prototypes)


def _sanitize(a: torch.Tensor, b: torch.Tensor, size: int, padding: float = 0) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = a * size, b * size
    low, high = torch.minimum(a, b), torch.maximum(a, b)
    return (low - padding).clamp(min=0), (high + padding).clamp(max=size)


def crop_masks(masks: torch.Tensor, boxes: torch.Tensor, padding: float = 1) -> torch.Tensor:
    """Zero mask pixels outside each box: masks [H, W, N], boxes relative [N, 4]; pixel column
    c is kept iff x1*W - padding <= c < x2*W + padding (rows alike)."""
    h, w, _ = masks.shape
    x1, x2 = _sanitize(boxes[:, 0], boxes[:, 2], w, padding)
    y1, y2 = _sanitize(boxes[:, 1], boxes[:, 3], h, padding)
    cols = torch.arange(w, dtype=masks.dtype)[None, :, None]
    rows = torch.arange(h, dtype=masks.dtype)[:, None, None]
    inside = (cols >= x1) & (cols < x2) & (rows >= y1) & (rows < y2)
    return masks * inside


@dataclass
class InstanceResult:
    """Final per-image result at the original size: integer pixel boxes x1y1x2y2 [N,4],
    classes 0..79 [N], scores [N], binary masks [N, H, W]."""

    boxes: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    masks: np.ndarray


def assemble(det: Detections, height: int, width: int) -> InstanceResult:
    """Masks: sigmoid(prototypes @ coefs), crop at prototype resolution (+-1 px), bilinear to
    the original size, > 0.5. Boxes: scale to pixels, order, clamp, truncate to integers."""
    if len(det) == 0:
        return InstanceResult(np.zeros((0, 4), np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32),
                              np.zeros((0, height, width), bool))
    masks = torch.sigmoid(det.prototypes @ det.coefs.t())
    masks = crop_masks(masks, det.boxes).permute(2, 0, 1).contiguous()
    masks = F.interpolate(masks[None], (height, width), mode="bilinear", align_corners=False)[0]
    x1, x2 = _sanitize(det.boxes[:, 0], det.boxes[:, 2], width)
    y1, y2 = _sanitize(det.boxes[:, 1], det.boxes[:, 3], height)
    boxes = torch.stack([x1, y1, x2, y2], 1).long()
    return InstanceResult(boxes.numpy(), det.classes.numpy(), det.scores.numpy(),
                          (masks > MASK_THRESHOLD).numpy())


def postprocess(head, outputs: list[np.ndarray] | list[torch.Tensor], image_sizes: list[tuple[int, int]]) -> list[InstanceResult]:
    """Graph outputs of a batch (P3..P7 NCHW, prototypes NHWC) -> one result per image.

    ``head`` is the model's :class:`~.network.PredictionHead` (run on the host in torch).
    ``image_sizes`` are the original ``(height, width)`` of each image.
    """
    tensors = [torch.as_tensor(np.asarray(o)) for o in outputs]
    with torch.no_grad():
        loc, conf, coefs = head(tensors[:5])
        results = []
        for i, (h, w) in enumerate(image_sizes):
            det = detect(loc[i], conf[i], coefs[i], tensors[5][i])
            results.append(assemble(det, h, w))
    return results
