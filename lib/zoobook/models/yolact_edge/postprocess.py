"""YolactEdge host-side post-processing, shared by every backend.

From the six graph outputs (P3..P7, prototypes NHWC) to detections: the shared prediction
head (in torch, as the port does on the host), priors, SSD box decoding, YOLACT fast NMS,
then mask assembly at the original image size. Boxes inside are relative ``x1y1x2y2`` of the
550 input, which equals relative coordinates of the original image (the resize ignores the
aspect ratio).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from zoobook.ops.boxes import decode_ssd
from zoobook.ops.nms import fast_nms_best
from zoobook.timing import timed

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
    best kept (:func:`~zoobook.ops.nms.fast_nms_best`, which sorts only the scores that can
    make the 100).
    """
    priors = make_priors() if priors is None else priors
    with timed("decode"):
        boxes = decode_ssd(loc, priors)
        scores = F.softmax(conf_logits, dim=-1)[:, 1:].t()
    with timed("nms"):
        index, classes, class_scores = fast_nms_best(
            boxes, scores, score_threshold=CONF_THRESHOLD, iou_threshold=NMS_THRESHOLD, top_k=NMS_TOP_K,
            max_detections=MAX_DETECTIONS)
    return Detections(boxes[index], classes, class_scores, coefs[index], prototypes)


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
    the original size, > 0.5 (:func:`paste_masks`). Boxes: scale to pixels, order, clamp,
    truncate to integers."""
    if len(det) == 0:
        return InstanceResult(np.zeros((0, 4), np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32),
                              np.zeros((0, height, width), bool))
    with timed("masks"):
        masks = paste_masks(torch.sigmoid_(det.prototypes @ det.coefs.t()), det.boxes, height, width)
        x1, x2 = _sanitize(det.boxes[:, 0], det.boxes[:, 2], width)
        y1, y2 = _sanitize(det.boxes[:, 1], det.boxes[:, 3], height)
        boxes = torch.stack([x1, y1, x2, y2], 1).long()
    return InstanceResult(boxes.numpy(), det.classes.numpy(), det.scores.numpy(), masks)


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, height: int, width: int) -> np.ndarray:
    """Binary masks ``[N, height, width]`` from sigmoid masks ``[h, w, N]`` at prototype size and
    relative boxes ``[N, 4]``: exactly ``crop_masks``, ``F.interpolate(bilinear,
    align_corners=False)`` and ``> 0.5``, computed only where the result can be true.

    An output pixel can be non-zero only if one of its bilinear taps lies in the crop, so each
    mask is upsampled in that window alone (elsewhere it is 0, False), as two small products
    with the interpolation matrices restricted to the crop. Those round differently from
    torch, by far less than :data:`_NEAR_THRESHOLD`; the pixels that close to 0.5 are then
    recomputed with torch's exact sequence of float32 operations (:func:`_bilinear_arithmetic`).
    Where that sequence is unknown, where a mask holds NaN, or where torch takes its other
    kernel (:func:`_generic_kernel`), torch upsamples the whole image as before.
    """
    planes = masks.detach().numpy()
    if planes.size == 0:
        return np.zeros((planes.shape[-1], height, width), bool)
    fused = _bilinear_arithmetic() if _generic_kernel(planes.shape[-1], height, width) else None
    if fused is None or np.isnan(planes.max()):
        cropped = crop_masks(masks, boxes).permute(2, 0, 1).contiguous()
        upsampled = F.interpolate(cropped[None], (height, width), mode="bilinear", align_corners=False)[0]
        return (upsampled > MASK_THRESHOLD).numpy()
    h, w, n = planes.shape
    rows_in, cols_in = _crop_ranges(boxes[:, 1], boxes[:, 3], h), _crop_ranges(boxes[:, 0], boxes[:, 2], w)
    row_taps, col_taps = _bilinear_taps(h, height, fused), _bilinear_taps(w, width, fused)
    along_rows, along_cols = _bilinear_matrix(h, height, fused), _bilinear_matrix(w, width, fused).T
    (top, bottom), (left, right) = _ends(rows_in), _ends(cols_in)
    (ylo, yhi), (xlo, xhi) = _windows(top, bottom, rows_in, row_taps), _windows(left, right, cols_in, col_taps)
    out = _zeros_untouched((n, height, width))
    windows = np.flatnonzero((ylo < yhi) & (xlo < xhi))
    values = []
    for k in windows:
        crop, ys, xs = np.s_[top[k]:bottom[k], left[k]:right[k]], np.s_[ylo[k]:yhi[k]], np.s_[xlo[k]:xhi[k]]
        value = _product(along_rows[ys, crop[0]], planes[crop + (k,)], along_cols[crop[1], xs])
        np.greater(value, MASK_THRESHOLD, out=out[k, ys, xs])
        values.append(value.ravel())
    if len(windows):
        near = _near_threshold(values, windows, ylo, xlo, xhi - xlo)
        if len(near[0]):
            k, y, x = near
            out[k, y, x] = _exact_values(planes, rows_in, cols_in, row_taps, col_taps, k, y, x, fused) > MASK_THRESHOLD
    return out


def _zeros_untouched(shape: tuple[int, ...]) -> np.ndarray:
    """A zeroed bool array whose memory costs nothing until written: anonymous pages that the
    kernel zero-fills 4 KiB at a time on first write. (``np.zeros`` asks for huge pages on large
    arrays, so writing a window zero-fills the 2 MiB around it, nearly the whole output.)"""
    size = int(np.prod(shape))
    if size < 1 << 22 or not hasattr(mmap, "MAP_PRIVATE"):
        return np.zeros(shape, bool)
    pages = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return np.frombuffer(pages, bool).reshape(shape)


def _generic_kernel(channels: int, height: int, width: int) -> bool:
    """Whether torch upsamples ``[1, channels, h, w]`` (contiguous) with its generic kernel, the
    one :func:`_bilinear_value` mirrors: not for small outputs (``height + width <= 128``) nor
    for 3 channels on one thread, which go to its channels-last kernel (another sequence of
    operations). 3 channels are left to torch whatever the thread count."""
    return height + width > 128 and channels != 3


#: values are in [0, 1]; torch's round at most 4 times (2.4e-7), the matrix products 5 times
#: (3e-7, once more where two taps coincide): 1e-5 is about 20 times their difference
_NEAR_THRESHOLD = 1e-5


def _crop_ranges(a: torch.Tensor, b: torch.Tensor, size: int) -> np.ndarray:
    """``[N, size]`` bool: which prototype rows (or columns) :func:`crop_masks` keeps."""
    low, high = _sanitize(a, b, size, padding=1)
    pixels = torch.arange(size, dtype=low.dtype)[None]
    return ((pixels >= low[:, None]) & (pixels < high[:, None])).numpy()


def _ends(inside: np.ndarray) -> np.ndarray:
    """``[2, N]``: first and past-the-last index of each range in ``inside [N, size]``."""
    return np.stack([inside.argmax(1), inside.shape[1] - inside[:, ::-1].argmax(1)])


def _windows(first: np.ndarray, end: np.ndarray, inside: np.ndarray, taps: tuple[np.ndarray, ...]) -> np.ndarray:
    """``[2, N]`` output ranges ``[lo, hi)`` whose taps ``(i0, i1)`` touch each range ``[first,
    end)`` of ``inside [N, size]`` (empty where that range is)."""
    window = np.stack([np.searchsorted(taps[1], first), np.searchsorted(taps[0], end)])
    window[:, ~inside.any(1)] = 0
    return window


def _product(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``a @ b @ c``, in the cheaper order."""
    (m, k), n, p = a.shape, b.shape[1], c.shape[1]
    return (a @ b) @ c if m * n * (k + p) <= k * p * (n + m) else a @ (b @ c)


def _near_threshold(values: list[np.ndarray], windows: np.ndarray, ylo: np.ndarray, xlo: np.ndarray,
                    wide: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mask, row, column)`` of the pixels whose value (``values`` of each window, row-major)
    is within :data:`_NEAR_THRESHOLD` of the threshold."""
    flat = np.concatenate(values)
    near = np.flatnonzero(np.abs(flat - MASK_THRESHOLD) <= _NEAR_THRESHOLD)
    starts = np.cumsum([0] + [len(v) for v in values])
    which = np.searchsorted(starts, near, side="right") - 1
    k = windows[which]
    row, column = np.divmod(near - starts[which], wide[k])
    return k, ylo[k] + row, xlo[k] + column


def _exact_values(planes, rows_in, cols_in, row_taps, col_taps, k, y, x, fused: bool) -> np.ndarray:
    """torch's float32 values at pixels ``(k, y, x)`` of the cropped, upsampled masks."""
    (y0, y1, h0, h1), (x0, x1, w0, w1) = ([t[i] for t in taps] for taps, i in ((row_taps, y), (col_taps, x)))

    def tap(r, c):
        return planes[r, c, k] * (rows_in[k, r] & cols_in[k, c])  # crop_masks's product

    return _bilinear_value(tap(y0, x0), tap(y0, x1), tap(y1, x0), tap(y1, x1), w0, w1, h0, h1, fused)


# torch's CPU bilinear kernel (aten/src/ATen/native/cpu/UpSampleKernel.cpp, generic path) in
# float32: source x = scale * (dst + 0.5) - 0.5 with scale = in / out, clamped at 0; i0 =
# min(floor(x), in - 1), i1 = i0 + (i0 < in - 1); l1 = clamp(x - i0, 0, 1), l0 = 1 - l1 (and
# i1 = i0, l0 = 1, l1 = 0 when in == out); a value is t0 * l0 + t1 * l1 along the rows of
# t = v0 * w0 + v1 * w1 along the columns. Compilers may fuse each "a * b + c" into one
# rounding (an FMA): the x86-64 builds do, as fma(scale, dst + 0.5, -0.5) and
# fma(t0, l0, t1 * l1); a build without FMA rounds every step.


@lru_cache(maxsize=8)
def _bilinear_taps(in_size: int, out_size: int, fused: bool) -> tuple[np.ndarray, ...]:
    """Per output index: source taps ``i0, i1`` (int64) and weights ``l0, l1`` (float32)."""
    f32 = np.float32
    if in_size == out_size:
        same = np.arange(out_size)
        return _read_only(same, same, np.ones(out_size, f32), np.zeros(out_size, f32))
    scale = f32(in_size) / f32(out_size)
    centre = np.arange(out_size, dtype=f32) + f32(0.5)
    x = _fma(np.full_like(centre, scale), centre, np.full_like(centre, -0.5)) if fused else scale * centre - f32(0.5)
    x = np.where(x < 0, f32(0), x)
    i0 = np.minimum(np.floor(x).astype(np.int64), in_size - 1)
    l1 = np.clip(x - i0.astype(f32), f32(0), f32(1))
    return _read_only(i0, i0 + (i0 < in_size - 1), f32(1) - l1, l1)


@lru_cache(maxsize=8)
def _bilinear_matrix(in_size: int, out_size: int, fused: bool) -> np.ndarray:
    """``[out_size, in_size]`` float32: row ``o`` holds the weights of output ``o``'s taps."""
    i0, i1, l0, l1 = _bilinear_taps(in_size, out_size, fused)
    matrix = np.zeros((out_size, in_size), np.float32)
    np.add.at(matrix, (np.arange(out_size), i0), l0)
    np.add.at(matrix, (np.arange(out_size), i1), l1)
    return _read_only(matrix)[0]


def _read_only(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """The arrays, made read-only (they are cached and shared)."""
    for array in arrays:
        array.flags.writeable = False
    return arrays


def _bilinear_value(v00, v01, v10, v11, w0, w1, h0, h1, fused: bool) -> np.ndarray:
    """torch's float32 value from the four taps (rows 0/1, columns 0/1) and their weights."""
    if fused:
        return _fma(_fma(v00, w0, v01 * w1), h0, _fma(v10, w0, v11 * w1) * h1)
    return (v00 * w0 + v01 * w1) * h0 + (v10 * w0 + v11 * w1) * h1


def _fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 ``a * b + c`` rounded once, like a fused multiply-add."""
    f64 = np.float64
    product = a.astype(f64) * b.astype(f64)  # exact: 24 + 24 bits
    total = product + c.astype(f64)  # rounded in float64, maybe
    rounded = total.astype(np.float32)
    # rounding float64 then float32 errs only when float64 rounded onto a float32 tie: there,
    # the float64 sum's own rounding error (exact, by TwoSum) says on which side the true sum is
    neighbour = np.nextafter(rounded, np.where(total > rounded, np.inf, -np.inf).astype(np.float32))
    tie = (rounded.astype(f64) + neighbour.astype(f64)) / 2 == total
    if tie.any():
        back = total - product
        error = (product - (total - back)) + (c.astype(f64) - back)
        toward = np.sign(error) == np.sign(neighbour.astype(f64) - rounded.astype(f64))
        rounded = np.where(tie & (error != 0) & toward, neighbour, rounded)
    return rounded


@lru_cache(maxsize=1)
def _bilinear_arithmetic() -> bool | None:
    """Whether this torch's bilinear upsampling fuses multiply-adds (True) or not (False),
    found by comparing both with it bit for bit on a fixed random input; None if neither."""
    planes = np.random.default_rng(0).random((2, 138, 138), dtype=np.float32)
    sizes = [(150, 211), (97, 60), (138, 300), (500, 40)]  # up, down, same, mixed; h + w > 128
    expected = [F.interpolate(torch.from_numpy(planes)[None], size, mode="bilinear", align_corners=False)[0].numpy()
                for size in sizes]
    for fused in (True, False):
        if all(np.array_equal(_bilinear_full(planes, size, fused), e) for size, e in zip(sizes, expected)):
            return fused
    return None


def _bilinear_full(planes: np.ndarray, size: tuple[int, int], fused: bool) -> np.ndarray:
    """Every pixel of ``planes [C, h, w]`` upsampled to ``size`` with the given arithmetic."""
    (y0, y1, h0, h1), (x0, x1, w0, w1) = (_bilinear_taps(n, m, fused) for n, m in zip(planes.shape[1:], size))
    y0, y1, h0, h1 = y0[:, None], y1[:, None], h0[:, None], h1[:, None]
    return _bilinear_value(planes[:, y0, x0], planes[:, y0, x1], planes[:, y1, x0], planes[:, y1, x1],
                           w0, w1, h0, h1, fused)


def postprocess(head, outputs: list[np.ndarray] | list[torch.Tensor], image_sizes: list[tuple[int, int]]) -> list[InstanceResult]:
    """Graph outputs of a batch (P3..P7 NCHW, prototypes NHWC) -> one result per image.

    ``head`` is the model's :class:`~.network.PredictionHead` (run on the host in torch).
    ``image_sizes`` are the original ``(height, width)`` of each image.
    """
    tensors = [torch.as_tensor(np.asarray(o)) for o in outputs]
    with torch.no_grad():
        with timed("head"):
            loc, conf, coefs = head(tensors[:5])
        return detections_to_results(loc, conf, coefs, tensors[5], image_sizes)


def detections_to_results(loc, conf, coefs, prototypes, image_sizes: list[tuple[int, int]]) -> list[InstanceResult]:
    """The prediction head's outputs of a batch (loc [B, P, 4], conf logits [B, P, 81], coefs
    [B, P, 32], prototypes [B, 138, 138, 32]; tensors or arrays) -> one result per image: what
    follows the head, on the host whichever side of the graph the head ran."""
    loc, conf, coefs, prototypes = (torch.as_tensor(np.asarray(t)) for t in (loc, conf, coefs, prototypes))
    with torch.no_grad():
        return [assemble(detect(loc[i], conf[i], coefs[i], prototypes[i]), h, w)
                for i, (h, w) in enumerate(image_sizes)]
