"""Box utilities. Boxes are ``[N, 4]`` tensors ``(x1, y1, x2, y2)`` unless a name says ``cxcywh``."""

from __future__ import annotations

import torch


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Plain IoU (no "+1" pixel convention) between ``a [..., N, 4]`` and ``b [..., M, 4]``
    -> ``[..., N, M]``; leading dimensions broadcast (batched per class)."""
    top_left = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    bottom_right = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    area_a = ((a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]))[..., :, None]
    area_b = ((b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]))[..., None, :]
    return inter / (area_a + area_b - inter)


def decode_ssd(loc: torch.Tensor, priors_cxcywh: torch.Tensor,
               variances: tuple[float, float] = (0.1, 0.2)) -> torch.Tensor:
    """SSD box decoding: centre offsets scaled by ``variances[0] * prior size``, sizes by
    ``exp(variances[1] * t)``. Returns unclipped ``x1y1x2y2`` in the priors' units."""
    centre = priors_cxcywh[:, :2] + loc[..., :2] * variances[0] * priors_cxcywh[:, 2:]
    size = priors_cxcywh[:, 2:] * torch.exp(loc[..., 2:] * variances[1])
    top_left = centre - size / 2
    return torch.cat([top_left, top_left + size], dim=-1)
