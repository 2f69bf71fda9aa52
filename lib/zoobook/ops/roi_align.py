"""RoIAlign in plain torch: the legacy Caffe2 / maskrcnn-benchmark variant (``aligned=False``).

For each RoI (x1, y1, x2, y2 in image pixels) scaled by ``spatial_scale``: no half-pixel
shift; width and height clamped to at least 1 feature pixel; each output bin averages
``sampling_ratio`` x ``sampling_ratio`` bilinear samples at the sub-bin centres; a sample
more than one pixel outside the map contributes 0, one within a pixel is clamped to the
border. This is ONNX ``RoiAlign`` with mode ``avg`` (opset 10-15 default, and
``coordinate_transformation_mode="output_half_pixel"`` from opset 16), which the exported
graph uses through the symbolic below.
"""

from __future__ import annotations

import torch


def _axis(start: torch.Tensor, bin_size: torch.Tensor, bins: int, ratio: int, size: int):
    """Sample positions along one axis -> (low index, high index, weight of high, valid), each [K, bins*ratio]."""
    steps = torch.arange(bins, dtype=start.dtype, device=start.device)
    sub = (torch.arange(ratio, dtype=start.dtype, device=start.device) + 0.5)
    pos = start[:, None, None] + steps[None, :, None] * bin_size[:, None, None] \
        + sub[None, None, :] * bin_size[:, None, None] / ratio
    pos = pos.reshape(len(start), bins * ratio)
    valid = (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.floor().long()
    at_end = low >= size - 1
    low = torch.where(at_end, torch.full_like(low, size - 1), low)
    high = torch.where(at_end, low, low + 1)
    pos = torch.where(at_end, low.to(pos.dtype), pos)
    return low, high, pos - low.to(pos.dtype), valid


def roi_align_reference(features: torch.Tensor, rois: torch.Tensor, batch_index: torch.Tensor, output_size: int,
                        spatial_scale: float, sampling_ratio: int, chunk: int = 64) -> torch.Tensor:
    """``features [N, C, H, W]``, ``rois [K, 4]`` (xyxy), ``batch_index [K]`` -> ``[K, C, S, S]``."""
    if sampling_ratio <= 0:
        raise ValueError("only a fixed sampling_ratio (> 0) is supported")
    n, c, height, width = features.shape
    out = features.new_zeros((len(rois), c, output_size, output_size))
    for first in range(0, len(rois), chunk):
        r = rois[first:first + chunk] * spatial_scale
        b = batch_index[first:first + chunk].long()
        size = (r[:, 2:] - r[:, :2]).clamp(min=1.0)
        bins = size / output_size
        yl, yh, ly, vy = _axis(r[:, 1], bins[:, 1], output_size, sampling_ratio, height)
        xl, xh, lx, vx = _axis(r[:, 0], bins[:, 0], output_size, sampling_ratio, width)
        k = len(r)
        image = b[:, None, None]

        def at(ys, xs):  # gathers only the sampled positions: [k, Y, X, C]
            return features[image, :, ys[:, :, None], xs[:, None, :]]

        hy, hx = (1 - ly)[:, :, None, None], (1 - lx)[:, None, :, None]
        ly4, lx4 = ly[:, :, None, None], lx[:, None, :, None]
        value = hy * hx * at(yl, xl) + hy * lx4 * at(yl, xh) + ly4 * hx * at(yh, xl) + ly4 * lx4 * at(yh, xh)
        value = value * (vy[:, :, None] & vx[:, None, :])[..., None]
        value = value.reshape(k, output_size, sampling_ratio, output_size, sampling_ratio, c).mean(dim=(2, 4))
        out[first:first + chunk] = value.permute(0, 3, 1, 2)
    return out


class _RoIAlign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, rois, batch_index, output_size, spatial_scale, sampling_ratio):
        return roi_align_reference(features, rois, batch_index, output_size, spatial_scale, sampling_ratio)

    @staticmethod
    def symbolic(g, features, rois, batch_index, output_size, spatial_scale, sampling_ratio):
        attrs = {"mode_s": "avg", "output_height_i": output_size, "output_width_i": output_size,
                 "sampling_ratio_i": sampling_ratio, "spatial_scale_f": spatial_scale}
        if g.opset >= 16:
            attrs["coordinate_transformation_mode_s"] = "output_half_pixel"
        return g.op("RoiAlign", features, rois, batch_index, **attrs)


def roi_align(features: torch.Tensor, rois: torch.Tensor, batch_index: torch.Tensor, output_size: int,
              spatial_scale: float, sampling_ratio: int) -> torch.Tensor:
    """Legacy RoIAlign; exports to ONNX ``RoiAlign`` (``batch_index`` int64)."""
    return _RoIAlign.apply(features, rois, batch_index.long(), output_size, float(spatial_scale), sampling_ratio)
