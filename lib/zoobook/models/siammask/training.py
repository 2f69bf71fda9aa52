"""SiamMask base-stage training targets and losses (FACTS.md sections 5.2 and 5.3).

* :func:`anchor_targets`: which of the 5 x 25 x 25 anchors of a 255-px search crop are
  positive (IoU > 0.6 with the target box), negative (< 0.3) or ignored, subsampled to at most
  16 positives and 64 anchors in all; the box-delta targets of the positives with weight
  1 / #positives; the score-map cells whose mask is learnt. A negative pair (the search shows
  another object) gets at most 16 negatives from the central 7 x 7 cells and nothing else.
* :func:`classification_loss`, :func:`box_loss`, :func:`mask_loss` and :func:`total_loss`,
  with the reference's and the Ascend port's weights as named presets.

Layouts follow the network's outputs: score channels are (bg, fg) x 5 anchors, delta channels
(dx, dy, dw, dh) x 5 anchors, mask channels the 63 x 63 logits of each cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from zoobook.models.siammask.tracker import TrackerConfig, make_anchors

SEARCH = 255
POSITIVE_IOU, NEGATIVE_IOU = 0.6, 0.3
MAX_POSITIVES, MAX_ANCHORS = 16, 64
NEGATIVE_PAIR_CENTRE = 7  # a negative pair's negatives come from the central 7 x 7 cells
MASK_OUT, MASK_PAD, STRIDE = 127, 32, 8


@dataclass(frozen=True)
class LossWeights:
    cls: float
    loc: float
    mask: float


#: experiments/siammask_base/config.json
REFERENCE_WEIGHTS = LossWeights(1.0, 1.2, 36.0)
#: the Ascend training port (citing the paper's section 3.3)
PORT_WEIGHTS = LossWeights(1.0, 1.0, 32.0)


def training_anchors() -> np.ndarray:
    """Anchors [5, 25, 25, 4] as corners (x1, y1, x2, y2) in search-crop pixels: centres
    127 + 8 (i - 12), the tracker's five shapes."""
    config = TrackerConfig()
    size = config.score_size
    cx, cy, w, h = (make_anchors(config).astype(np.float64) + [SEARCH // 2, SEARCH // 2, 0, 0]).T
    corners = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)
    return corners.reshape(len(config.ratios), size, size, 4)


def _iou(anchors: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Continuous IoU (no +1) of corner boxes [..., 4] with one box."""
    w = np.clip(np.minimum(anchors[..., 2], box[2]) - np.maximum(anchors[..., 0], box[0]), 0, None)
    h = np.clip(np.minimum(anchors[..., 3], box[3]) - np.maximum(anchors[..., 1], box[1]), 0, None)
    inter = w * h
    area = (anchors[..., 2] - anchors[..., 0]) * (anchors[..., 3] - anchors[..., 1])
    return inter / (area + (box[2] - box[0]) * (box[3] - box[1]) - inter)


def _keep_at_most(mask: np.ndarray, count: int, rng: np.random.RandomState) -> np.ndarray:
    """A copy of boolean ``mask`` with all but a random ``count`` of its True entries cleared."""
    found = np.flatnonzero(mask)
    if found.size <= count:
        return mask.copy()
    kept = np.zeros(mask.size, bool)
    kept[rng.choice(found, count, replace=False)] = True
    return kept.reshape(mask.shape)


def anchor_targets(box: np.ndarray, *, negative_pair: bool, rng: np.random.RandomState,
                   anchors: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Targets of one search crop for target ``box`` (x1, y1, x2, y2 in crop pixels).

    Returns ``label`` [5, 25, 25] (1 positive, 0 negative, -1 ignored), ``delta`` [4, 5, 25, 25],
    ``delta_weight`` [5, 25, 25] (1 / #positives on positives), ``mask_weight`` [25, 25]
    (1 on cells with a positive anchor) and ``iou`` [5, 25, 25]."""
    anchors = training_anchors() if anchors is None else anchors
    box = np.asarray(box, np.float64)
    shape = anchors.shape[:3]
    label = np.full(shape, -1, np.int64)
    delta = np.zeros((4, *shape), np.float32)
    delta_weight = np.zeros(shape, np.float32)
    size = shape[1]
    if negative_pair:
        low, high = size // 2 - NEGATIVE_PAIR_CENTRE // 2, size // 2 + NEGATIVE_PAIR_CENTRE // 2 + 1
        centre = np.zeros(shape, bool)
        centre[:, low:high, low:high] = True
        label[_keep_at_most(centre, MAX_POSITIVES, rng)] = 0
        return {"label": label, "delta": delta, "delta_weight": delta_weight,
                "mask_weight": np.zeros(shape[1:], np.float32), "iou": np.zeros(shape, np.float32)}
    iou = _iou(anchors, box)
    positive = _keep_at_most(iou > POSITIVE_IOU, MAX_POSITIVES, rng)
    negative = _keep_at_most(iou < NEGATIVE_IOU, MAX_ANCHORS - int(positive.sum()), rng)
    label[positive], label[negative] = 1, 0
    aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    acx, acy = anchors[..., 0] + aw / 2, anchors[..., 1] + ah / 2
    tw, th = box[2] - box[0], box[3] - box[1]
    tcx, tcy = box[0] + tw / 2, box[1] + th / 2
    delta[:] = np.stack([(tcx - acx) / aw, (tcy - acy) / ah, np.log(tw / aw), np.log(th / ah)])
    if positive.any():
        delta_weight[positive] = 1.0 / positive.sum()
    return {"label": label, "delta": delta, "delta_weight": delta_weight,
            "mask_weight": positive.any(axis=0).astype(np.float32), "iou": iou.astype(np.float32)}


def classification_loss(score: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """score [B, 10, S, S] (bg x 5, fg x 5), label [B, 5, S, S]: log-softmax over (bg, fg),
    negative log-likelihood averaged over all positives of the batch and over all negatives,
    0.5 x each (a side with no anchors adds 0)."""
    b, channels, h, w = score.shape
    log_p = F.log_softmax(score.view(b, 2, channels // 2, h, w), dim=1)
    loss = score.new_zeros(())
    for value in (1, 0):
        chosen = label == value
        if chosen.any():
            loss = loss + 0.5 * -log_p[:, value][chosen].mean()
    return loss


def box_loss(delta: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Plain L1 (not smooth): delta and target [B, 4 x 5, S, S] / [B, 4, 5, S, S], weight
    [B, 5, S, S]; sum of weight x |error| over coordinates and anchors, divided by the batch."""
    b, _, h, w = delta.shape
    error = (delta.view(b, 4, -1, h, w) - target.view(b, 4, -1, h, w)).abs().sum(dim=1)
    return (error * weight).sum() / b


def mask_windows(labels: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """The 127 x 127 label windows of score-map cells: labels [B, 255, 255] (+1 / -1) zero-padded
    by 32, cell (r, c) of sample b reading from (8c - 32, 8r - 32); -> [N, 127, 127]."""
    padded = F.pad(labels, [MASK_PAD] * 4)
    windows = padded.unfold(1, MASK_OUT, STRIDE).unfold(2, MASK_OUT, STRIDE)  # [B, 25, 25, 127, 127]
    return windows[rows[:, 0], rows[:, 1], cols]


def mask_loss(mask: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """mask [B, 3969, S, S] logits, labels [B, 255, 255] (+1 object, -1 not), weight [B, S, S].
    For each cell with weight 1 its 63 x 63 logits are upsampled (bilinear, align_corners
    True) to 127 x 127 and scored against its label window with log(1 + exp(-y m)), averaged
    over all those pixels (padding pixels have y = 0 and add log 2). Also the IoU of the
    predicted masks (logit >= 0) with the windows: mean, and shares above 0.5 and 0.7."""
    chosen = torch.nonzero(weight > 0)
    if chosen.numel() == 0:
        return mask.sum() * 0.0, {"iou_mean": float("nan"), "iou_5": float("nan"), "iou_7": float("nan")}
    side = int(round(mask.shape[1] ** 0.5))
    logits = mask.permute(0, 2, 3, 1)[chosen[:, 0], chosen[:, 1], chosen[:, 2]].view(-1, 1, side, side)
    logits = F.interpolate(logits, size=(MASK_OUT, MASK_OUT), mode="bilinear", align_corners=True)[:, 0]
    target = mask_windows(labels, chosen[:, :2], chosen[:, 2])
    loss = F.softplus(-target * logits).mean()
    with torch.no_grad():
        predicted, truth = logits >= 0, target > 0
        inter = (predicted & truth).flatten(1).sum(1).float()
        union = (predicted | truth).flatten(1).sum(1).float()
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))
    return loss, {"iou_mean": float(iou.mean()), "iou_5": float((iou > 0.5).float().mean()),
                  "iou_7": float((iou > 0.7).float().mean())}


def total_loss(outputs: tuple[torch.Tensor, ...], targets: dict[str, torch.Tensor],
               weights: LossWeights = REFERENCE_WEIGHTS) -> tuple[torch.Tensor, dict]:
    """w_cls x cls + w_loc x loc + w_mask x mask for the network's (score, delta, mask) and
    the batched targets of :func:`anchor_targets` plus ``mask_label`` [B, 255, 255]."""
    score, delta, mask = outputs[:3]
    cls = classification_loss(score, targets["label"])
    loc = box_loss(delta, targets["delta"], targets["delta_weight"])
    seg, iou = mask_loss(mask, targets["mask_label"], targets["mask_weight"])
    total = weights.cls * cls + weights.loc * loc + weights.mask * seg
    parts = {"loss": total.item(), "cls": cls.item(), "loc": loc.item(), "mask": seg.item()}
    return total, {**parts, **iou}
