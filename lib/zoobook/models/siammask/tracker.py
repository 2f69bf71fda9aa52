"""The SiamMask tracker (VOT settings), over any inference engine.

``tracker.init(frame, box)`` then ``tracker.track(frame)`` per frame, as the reference's
``siamese_init`` / ``siamese_track`` do: context crops padded with the first frame's
(truncated) mean colour, anchors and cosine window, scale and ratio penalties, learning-rate
update of the box, the refined mask pasted back into the frame with threshold 0.3, and the
output region = the minimum-area rectangle of the largest contour (axis-aligned box fallback).
The state is driven by the box branch only; the mask and polygon are outputs.

Frames are BGR uint8 [H, W, 3]. Engines (:class:`TorchEngine`, :class:`SessionEngine`) take
crops as float32 [1, 3, S, S] holding 0..255 (no normalisation).

Arithmetic follows the reference as it ran, under NumPy 1.x promotion rules: the foreground
probability is torch's softmax; the box decode and the penalties are float32 (the network
outputs and the anchors are float32, and the float64 target size enters as a float32
scalar); the window term and the penalised score are float64; the chosen box is divided by
the scale in float32; the position and size update is float64; the mask sigmoid is torch's.
Fed the reference's own network outputs, the state comes out bit for bit as the reference's.

For review, :class:`TrackResult` carries the margin between the best and second-best
penalised scores, the tracker keeps the float mean colour beside the uint8 fill, and
``SiamMaskTracker(..., debug=True)`` keeps each frame's crop, scores and mask logits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from zoobook.timing import timed

OUTPUTS = ("score", "delta", "mask", "f0", "f1", "f2", "corr_feature")


@dataclass(frozen=True)
class TrackerConfig:
    """Hyper-parameters; the defaults are ``config_vot.json`` of the reference (VOT2016)."""

    penalty_k: float = 0.04
    window_influence: float = 0.42
    lr: float = 0.25
    seg_thr: float = 0.30
    out_size: int = 127  # 127 with refine, 63 with the mask branch alone
    refine: bool = True
    exemplar_size: int = 127
    instance_size: int = 255
    total_stride: int = 8
    base_size: int = 8
    context_amount: float = 0.5
    ratios: tuple[float, ...] = (0.33, 0.5, 1.0, 2.0, 3.0)
    scales: tuple[int, ...] = (8,)

    @property
    def score_size(self) -> int:
        return (self.instance_size - self.exemplar_size) // self.total_stride + 1 + self.base_size


def make_anchors(config: TrackerConfig = TrackerConfig()) -> np.ndarray:
    """Anchors [A*S*S, 4] as (cx, cy, w, h) in search-crop pixels relative to its centre;
    flat index = anchor * S * S + row * S + col."""
    base = config.total_stride ** 2
    shapes = []
    for ratio in config.ratios:
        ws = int(np.sqrt(base / ratio))
        hs = int(ws * ratio)
        shapes += [(ws * scale, hs * scale) for scale in config.scales]
    size = config.score_size
    offsets = -(size // 2) * config.total_stride + config.total_stride * np.arange(size)
    ys, xs = np.meshgrid(offsets, offsets, indexing="ij")
    anchors = [np.stack([xs.ravel(), ys.ravel(), np.full(size * size, w), np.full(size * size, h)], 1)
               for w, h in shapes]
    return np.concatenate(anchors).astype(np.float32)


def cosine_window(config: TrackerConfig = TrackerConfig()) -> np.ndarray:
    window = np.outer(np.hanning(config.score_size), np.hanning(config.score_size)).ravel()
    return np.tile(window, len(config.ratios) * len(config.scales))


def crop_patch(frame: np.ndarray, centre: np.ndarray, model_size: int, side: int, fill: np.ndarray, *,
               scratch: Scratch | None = None) -> np.ndarray:
    """Square window of ``side`` px centred at ``centre`` (top-left = round-half-even(centre -
    (side+1)/2)), outside parts filled with ``fill`` (uint8), resized bilinearly (on uint8) to
    ``model_size``. Returns float32 [1, 3, model_size, model_size], BGR, 0..255.

    Only the window is built, never the padded frame: ``cv2.resize`` sees the same side x side
    pixels as the reference's padded crop. With ``scratch`` the window is a reused canvas of
    ``fill`` into which only the frame part is copied (and cleared again afterwards)."""
    h, w = frame.shape[:2]
    left = int(np.round(centre[0] - (side + 1) / 2))
    top = int(np.round(centre[1] - (side + 1) / 2))
    x0, y0 = min(max(left, 0), w), min(max(top, 0), h)  # the part of the window inside the frame
    x1, y1 = max(min(left + side, w), x0), max(min(top + side, h), y0)
    inside = frame[y0:y1, x0:x1]
    if inside.shape[:2] == (side, side):
        return _resized(inside, model_size)
    if scratch is not None:
        with scratch.canvas(side, fill, inside, (y0 - top, x0 - left)) as window:
            return _resized(window, model_size)
    border = (y0 - top, top + side - y1, x0 - left, left + side - x1)  # top, bottom, left, right
    if inside.size == 0:  # the window misses the frame: all fill
        inside, border = np.asarray(fill, np.uint8).reshape(1, 1, -1), (0, side - 1, 0, side - 1)
    return _resized(cv2.copyMakeBorder(inside, *border, cv2.BORDER_CONSTANT, value=[float(v) for v in fill]),
                    model_size)


def _resized(patch: np.ndarray, model_size: int) -> np.ndarray:
    """uint8 [S, S, C] -> bilinear resize to ``model_size`` when S differs -> float32 [1, C, M, M]."""
    if patch.shape[0] != model_size:
        patch = cv2.resize(patch, (model_size, model_size))
    crop = np.empty((1, patch.shape[2], model_size, model_size), np.float32)
    for channel, plane in enumerate(cv2.split(patch)):  # HWC uint8 -> CHW float32, exact
        crop[0, channel] = plane
    return crop


class Scratch:
    """Host buffers a tracker reuses from frame to frame, for intermediates that never leave a
    call (outputs are fresh arrays). Writing a fresh multi-megabyte array costs page faults,
    and a search window can be much larger than the frame."""

    def __init__(self) -> None:
        self._flat: dict[str, np.ndarray] = {}
        self._fill: np.ndarray | None = None

    def array(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """A C-contiguous array of ``shape`` and ``dtype``, contents undefined: the buffer
        ``name`` again, grown (with headroom) when too small."""
        size = int(np.prod(shape))
        flat = self._flat.get(name)
        if flat is None or flat.dtype != dtype or flat.size < size:
            flat = self._flat[name] = np.empty(size + size // 4, dtype)
        return flat[:size].reshape(shape)

    @contextmanager
    def canvas(self, side: int, fill: np.ndarray, part: np.ndarray, at: tuple[int, int]) -> Iterator[np.ndarray]:
        """A uint8 [side, side, C] window of ``fill`` with ``part`` [h, w, C] at (row, col)
        ``at``. The buffer behind it holds only ``fill`` between calls: the part is cleared on
        exit, so only the frame part is written, not the whole window."""
        fill = np.asarray(fill, np.uint8)
        size = side * side * len(fill)
        flat = self._flat.get("canvas")
        if flat is None or flat.size < size or self._fill is None or not np.array_equal(fill, self._fill):
            grown = side + side // 8  # headroom: the window side drifts from frame to frame
            flat = cv2.copyMakeBorder(fill.reshape(1, 1, -1), 0, grown - 1, 0, grown - 1, cv2.BORDER_CONSTANT,
                                      value=[float(v) for v in fill]).reshape(-1)
            self._flat["canvas"], self._fill = flat, fill.copy()
            self._flat.pop("fill row", None)
        window = flat[:size].reshape(side, side, len(fill))
        target = window[at[0]:at[0] + part.shape[0], at[1]:at[1] + part.shape[1]]
        target[...] = part
        try:
            yield window
        finally:
            target[...] = self._fill_rows(part.shape[1])

    def _fill_rows(self, width: int) -> np.ndarray:
        """One row of ``width`` fill pixels, [1, width, C] (broadcast over rows it is a copy of
        contiguous rows, unlike broadcasting the C values over every pixel)."""
        row = self._flat.get("fill row")
        if row is None or len(row) < width:
            row = self._flat["fill row"] = np.tile(self._fill, (width, 1))
        return row[None, :width]


class TorchEngine:
    """The network in PyTorch; the template branch runs once per sequence."""

    def __init__(self, model) -> None:
        self.model = model.eval()
        self.kernels = None

    def set_template(self, template: np.ndarray) -> None:
        with torch.inference_mode():
            self.kernels = self.model.template(torch.from_numpy(template))

    def search(self, search: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            outputs = self.model.track(torch.from_numpy(search), self.kernels)
        return {name: out.numpy() for name, out in zip(OUTPUTS, outputs)}

    def refine(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return self.model.refine(*(torch.from_numpy(inputs[k]) for k in ("p0", "p1", "p2", "p3"))).numpy()


class SessionEngine:
    """Backend sessions. ``split``: a template session (template -> kernel_cls, kernel_loc,
    kernel_mask) run once and a search session per frame. ``port``: the port's "mask" session
    (template and search every frame). Both with the port's "refine" session."""

    def __init__(self, refine, *, search=None, template=None, mask=None) -> None:
        if mask is None and (search is None or template is None):
            raise ValueError("give either mask= (the port's graph) or template= and search= (the split)")
        self.refine_session, self.search_session, self.template_session, self.mask_session = refine, search, template, mask
        self.template = None
        self.kernels: dict[str, np.ndarray] | None = None

    def set_template(self, template: np.ndarray) -> None:
        self.template = template
        if self.mask_session is None:
            self.kernels = self.template_session.run({"template": template})

    def search(self, search: np.ndarray) -> dict[str, np.ndarray]:
        if self.mask_session is not None:
            return self.mask_session.run({"template": self.template, "search": search})
        return self.search_session.run({"search": search, **self.kernels})

    def refine(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.refine_session.run(inputs)["mask"]


@dataclass
class TrackDebug:
    """What one frame fed the engines and got back; kept only with ``SiamMaskTracker(debug=True)``.

    ``search_crop``: float32 [1, 3, I, I] (I = ``instance_size``, 255), BGR, 0..255, exactly
    the array ``engine.search`` received. ``search_box``: (x, y, side) of that crop's window
    in frame pixels before resizing to I (x, y = centre - side/2, the reference's ``crop_box``).
    ``scores``: float32 [A*S*S] foreground probabilities (A = 5 anchors, S = 25; flat index =
    anchor*S*S + row*S + col). ``penalised_scores``: float64 [A*S*S], the scores after the
    scale/ratio penalty and the cosine window; the chosen anchor is their argmax.
    ``mask_logits``: float32 [out_size, out_size] (127x127 with refine; 63x63 from the mask
    branch when ``config.refine`` is False), row-major, before the sigmoid, for the chosen cell.
    """

    search_crop: np.ndarray = field(repr=False)
    search_box: tuple[float, float, int]
    scores: np.ndarray = field(repr=False)
    penalised_scores: np.ndarray = field(repr=False)
    mask_logits: np.ndarray = field(repr=False)


@dataclass
class TrackResult:
    """One frame: ``polygon`` float64 [8] (x1, y1, ..., x4, y4) in frame pixels; ``centre``
    (x, y) and ``size`` (w, h), float64 [2], the clipped box state; ``score`` the foreground
    probability of the chosen anchor; ``cell`` the (row, col) used for the mask; ``margin``
    the best minus the second-best penalised score (>= 0; near 0 means another anchor almost
    won); ``mask`` float32 [H, W], the pasted probabilities (-1 outside the pasted window);
    ``debug`` the frame's :class:`TrackDebug` when the tracker was built with ``debug=True``,
    else None."""

    polygon: np.ndarray
    centre: np.ndarray
    size: np.ndarray
    score: float
    cell: tuple[int, int]
    mask: np.ndarray | None = field(default=None, repr=False)
    margin: float = float("nan")
    debug: TrackDebug | None = field(default=None, repr=False)


@dataclass
class AnchorScores:
    """The search outputs decoded per anchor (flat index anchor*S*S + row*S + col).

    ``scores`` float32 [N] foreground probabilities; ``boxes`` float32 [4, N] (cx, cy, w, h)
    in search-crop pixels relative to the crop centre; ``penalty`` float32 [N] the scale/ratio
    penalty; ``penalised`` float64 [N] penalty*score*(1 - window_influence) + window*window_influence.
    """

    scores: np.ndarray
    boxes: np.ndarray
    penalty: np.ndarray
    penalised: np.ndarray

    @property
    def best(self) -> int:
        return int(np.argmax(self.penalised))

    @property
    def margin(self) -> float:
        """Best minus second-best penalised score (0 on a tie)."""
        second, first = np.partition(self.penalised, -2)[-2:]
        return float(first - second)


def score_anchors(outputs: dict[str, np.ndarray], anchors: np.ndarray, window: np.ndarray,
                  target_in_crop: np.ndarray, config: TrackerConfig = TrackerConfig()) -> AnchorScores:
    """Decode ``score`` [1, 2A, S, S] and ``delta`` [1, 4A, S, S] and penalise them, for a
    target of size ``target_in_crop`` (w, h) in search-crop pixels (float64). ``anchors``
    float32 [N, 4] (:func:`make_anchors`) and ``window`` float64 [N] (:func:`cosine_window`),
    N = A*S*S. Dtypes as the reference: decode and penalty float32, penalised scores float64."""
    logits = torch.from_numpy(outputs["score"][0].reshape(2, -1).astype(np.float32))
    scores = torch.softmax(logits.T, dim=1)[:, 1].numpy()  # the reference's softmax, (bg, fg) pairs
    delta = outputs["delta"][0].reshape(4, -1).astype(np.float32)
    boxes = np.stack([delta[0] * anchors[:, 2] + anchors[:, 0], delta[1] * anchors[:, 3] + anchors[:, 1],
                      np.exp(delta[2]) * anchors[:, 2], np.exp(delta[3]) * anchors[:, 3]])
    target_context = np.float32(_context_size(*target_in_crop))
    scale_change = _change(_context_size(boxes[2], boxes[3]) / target_context)
    ratio_change = _change(np.float32(target_in_crop[0] / target_in_crop[1]) / (boxes[2] / boxes[3]))
    penalty = np.exp(-(ratio_change * scale_change - 1) * float(config.penalty_k))
    influence = float(config.window_influence)
    penalised = penalty * scores * (1 - influence) + window * influence
    return AnchorScores(scores, boxes, penalty, penalised)


class SiamMaskTracker:
    """``init(frame, box)`` or ``start(frame, centre, size)``, then ``track(frame)`` per frame.

    After ``start``: ``mean_colour`` float64 [3], the frame's per-channel mean in BGR order
    (the reference's ``avg_chans``), and ``fill`` uint8 [3], that mean truncated as the
    reference writes it into its uint8 padding buffer, the colour every crop is padded with.
    ``debug=True`` keeps ``template_crop`` (float32 [1, 3, E, E], E = ``exemplar_size``, BGR,
    0..255) and a :class:`TrackDebug` in every :class:`TrackResult`; off, no crop is kept.
    ``scratch``: the :class:`Scratch` buffers the host steps reuse (one tracker, one thread).
    """

    def __init__(self, engine, config: TrackerConfig = TrackerConfig(), *, debug: bool = False) -> None:
        self.engine, self.config, self.debug = engine, config, debug
        self.anchors = make_anchors(config)
        self.window = cosine_window(config)
        self.template_crop: np.ndarray | None = None
        self.scratch = Scratch()

    def init(self, frame: np.ndarray, box: tuple[float, float, float, float]) -> None:
        """``box`` = (x, y, w, h) of the target in ``frame``."""
        x, y, w, h = box
        self.start(frame, (x + w / 2, y + h / 2), (w, h))

    def start(self, frame: np.ndarray, centre: tuple[float, float], size: tuple[float, float]) -> None:
        """Initialise from the target's centre (x, y) and size (w, h)."""
        self.centre = np.array(centre, dtype=np.float64)
        self.size = np.array(size, dtype=np.float64)
        self.frame_hw = frame.shape[:2]
        self.mean_colour = np.mean(frame, axis=(0, 1), dtype=np.float64)
        self.fill = self.mean_colour.astype(np.uint8)  # truncated, as a float written into uint8
        context = self.config.context_amount * self.size.sum()
        side = int(np.round(np.sqrt((self.size[0] + context) * (self.size[1] + context))))
        template = crop_patch(frame, self.centre, self.config.exemplar_size, side, self.fill)
        self.template_crop = template if self.debug else None
        self.engine.set_template(template)

    def _search_side(self) -> tuple[float, float]:
        cfg = self.config
        context = cfg.context_amount * self.size.sum()
        s = np.sqrt((self.size[0] + context) * (self.size[1] + context))
        scale = cfg.exemplar_size / s
        return scale, s + 2 * ((cfg.instance_size - cfg.exemplar_size) / 2 / scale)

    def track(self, frame: np.ndarray) -> TrackResult:
        """One frame. Host steps are marked for :func:`zoobook.timing.recording` (crop, decode,
        mask, paste, polygon; the engine calls as graph)."""
        cfg = self.config
        with timed("crop"):
            scale, side = self._search_side()
            side_px = int(np.round(side))
            crop_origin = self.centre - side_px / 2
            search = crop_patch(frame, self.centre, cfg.instance_size, side_px, self.fill, scratch=self.scratch)
        with timed("graph"):
            outputs = self.engine.search(search)
        with timed("decode"):
            decoded = score_anchors(outputs, self.anchors, self.window, self.size * scale, cfg)
            best, margin = decoded.best, decoded.margin
            box = decoded.boxes[:, best] / np.float32(scale)  # float32, as the reference
            lr = float(decoded.penalty[best] * decoded.scores[best]) * cfg.lr
            centre = self.centre + box[:2].astype(np.float64)
            size = self.size * (1 - lr) + box[2:].astype(np.float64) * lr
            _, row, col = np.unravel_index(best, (len(self.anchors) // cfg.score_size ** 2, cfg.score_size,
                                                  cfg.score_size))
            row, col = int(row), int(col)
            h, w = self.frame_hw
            self.centre = np.array([min(max(centre[0], 0), w), min(max(centre[1], 0), h)], dtype=np.float64)
            self.size = np.array([min(max(size[0], 10), w), min(max(size[1], 10), h)], dtype=np.float64)
        with timed("mask"):
            logits, probabilities = self._mask(outputs, row, col)
        with timed("paste"):
            pasted, covered = self._paste(probabilities, crop_origin, side_px, row, col)
        with timed("polygon"):
            polygon = self._polygon(pasted, covered, centre, size)
        debug = TrackDebug(search, (float(crop_origin[0]), float(crop_origin[1]), side_px), decoded.scores,
                           decoded.penalised, logits) if self.debug else None
        return TrackResult(polygon, self.centre.copy(), self.size.copy(), float(decoded.scores[best]),
                           (row, col), pasted, margin, debug)

    def _mask(self, outputs: dict[str, np.ndarray], row: int, col: int) -> tuple[np.ndarray, np.ndarray]:
        """The chosen cell's logits and probabilities, float32 [out_size, out_size]."""
        side = self.config.out_size
        if self.config.refine:
            inputs = refine_windows(outputs, row, col)
            with timed("graph"):
                refined = self.engine.refine(inputs)
            logits = torch.from_numpy(np.ascontiguousarray(refined, dtype=np.float32))
        else:  # a strided view, as in the reference: torch rounds strided and contiguous sigmoids apart
            logits = torch.from_numpy(np.asarray(outputs["mask"], dtype=np.float32))[0, :, row, col]
        probabilities = logits.sigmoid()
        return logits.reshape(side, side).numpy().copy(), probabilities.reshape(side, side).numpy()

    def _paste(self, probabilities: np.ndarray, crop_origin: np.ndarray, side_px: int, row: int,
               col: int) -> tuple[np.ndarray, tuple[slice, slice]]:
        """Warp the out_size x out_size mask into the frame (bilinear, -1 outside); also the
        (rows, cols) slices of the frame the map covers."""
        cfg = self.config
        m = side_px / cfg.instance_size
        sub = (crop_origin[0] + (col - cfg.base_size / 2) * cfg.total_stride * m,
               crop_origin[1] + (row - cfg.base_size / 2) * cfg.total_stride * m, m * cfg.exemplar_size)
        return _paste_covered(probabilities, sub, self.frame_hw, self.scratch)

    def _polygon(self, pasted: np.ndarray, covered: tuple[slice, slice], centre: np.ndarray,
                 size: np.ndarray) -> np.ndarray:
        """The min-area rectangle of the largest contour of ``pasted > seg_thr``, else the box
        (``centre``, ``size``, before clipping). Only ``covered`` can pass the threshold (the
        rest is -1); contours traced there with its offset are the whole frame's."""
        rows, cols = covered
        contours = ()
        if rows.stop > rows.start and cols.stop > cols.start:
            block = pasted[rows, cols]
            binary = np.greater(block, self.config.seg_thr, out=self.scratch.array("binary", block.shape, bool))
            binary = binary.view(np.uint8)
            contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE,
                                           offset=(cols.start, rows.start))
        areas = [cv2.contourArea(c) for c in contours]
        if contours and max(areas) > 100:
            corners = cv2.boxPoints(cv2.minAreaRect(contours[int(np.argmax(areas))].reshape(-1, 2)))
        else:
            x, y = centre - size / 2
            w, h = size
            corners = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])
        return np.asarray(corners, dtype=np.float64).ravel()


def refine_windows(outputs: dict[str, np.ndarray], row: int, col: int) -> dict[str, np.ndarray]:
    """The refine graph's inputs p0..p3 for score-map cell (row, col), as
    :func:`~zoobook.models.siammask.network.refine_inputs` (f0, f1, f2 zero-padded by 16, 8, 4,
    windows of 61, 31, 15 at 4, 2, 1 px per cell; p3 = corr_feature[:, :, row, col]) without
    padding whole maps: zeros plus the part of each window inside its map."""
    windows = {"p0": ("f0", 16, 61, 4), "p1": ("f1", 8, 31, 2), "p2": ("f2", 4, 15, 1)}
    inputs = {}
    for name, (key, pad, side, stride) in windows.items():
        feature = outputs[key]
        top, left = stride * row - pad, stride * col - pad
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + side, feature.shape[2]), min(left + side, feature.shape[3])
        inside = (y0, x0, y1, x1) == (top, left, top + side, left + side)
        window = (np.empty if inside else np.zeros)((*feature.shape[:2], side, side), feature.dtype)
        if y1 > y0 and x1 > x0:
            window[:, :, y0 - top:y1 - top, x0 - left:x1 - left] = feature[:, :, y0:y1, x0:x1]
        inputs[name] = window
    corr = outputs["corr_feature"]
    inputs["p3"] = np.ascontiguousarray(corr[:, :, row, col]).reshape(*corr.shape[:2], 1, 1)
    return inputs


def paste_mask(probabilities: np.ndarray, window: tuple[float, float, float], frame_hw: tuple[int, int]) -> np.ndarray:
    """Paste a square probability map into a frame of ``frame_hw``: the map covers the frame
    window (x, y, side); pixels outside it are -1.

    The reference does this with ``cv2.warpAffine`` (bilinear, constant border -1) and the
    forward map x_frame = a * x_map + a * x * k with k = n / side and a = (W - 1) / (W * k)
    (likewise for y with H). OpenCV 4 samples at source positions rounded to 1/32 px (fixed
    point: 1/1024 first); OpenCV 5 does not, which moves probabilities by up to 0.03. This
    function follows OpenCV 4's rules, as the reference ran, whichever OpenCV is installed:
    ``probabilities`` float32 [n, n] in, float32 [H, W] out, bit-identical to OpenCV 4.9's
    ``warpAffine`` of the reference's float64 matrix (checked on random windows).
    """
    return _paste_covered(probabilities, window, frame_hw)[0]


def _paste_covered(probabilities: np.ndarray, window: tuple[float, float, float], frame_hw: tuple[int, int],
                   scratch: Scratch | None = None) -> tuple[np.ndarray, tuple[slice, slice]]:
    """:func:`paste_mask`, and the (rows, cols) slices of the frame whose first tap falls on
    the map or its 1-px -1 border (OpenCV's "inside"); only they are computed, the rest is -1.
    The sample positions are monotonic in the pixel index, so those pixels are one block."""
    h, w = frame_hw
    n = probabilities.shape[0]
    (x0, fx), (y0, fy) = _sample_positions(n, window, (h, w))
    pasted = np.full((h, w), -1.0, np.float32)
    rows, cols = _run(y0, n), _run(x0, n)
    if rows.stop > rows.start and cols.stop > cols.start:
        _bilinear(probabilities, y0[rows] + 1, fy[rows], x0[cols] + 1, fx[cols], pasted[rows, cols],
                  scratch or Scratch())
    return pasted, (rows, cols)


def _sample_positions(n: int, window: tuple[float, float, float],
                      frame_hw: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per frame column and per frame row: the map index of the first tap (int64, may lie
    outside 0..n-1) and the tap fraction in 1/32 (int64 0..31), as OpenCV 4 rounds them."""
    h, w = frame_hw
    k = n / window[2]
    positions = []
    for axis, (size, start) in enumerate(((w, window[0]), (h, window[1]))):
        a = (size - 1) / (size * k)
        scale, offset = 1.0 / a, -(a * start * k) / a  # the inverse map, as OpenCV computes it
        steps = np.arange(size)
        if axis == 0:  # columns: per-column step and row offset rounded apart
            fixed = np.round(scale * steps * 1024).astype(np.int64) + int(np.round(offset * 1024))
        else:  # rows: one rounding of the whole coordinate
            fixed = np.round((scale * steps + offset) * 1024).astype(np.int64)
        fixed = (fixed + 16) >> 5  # to 1/32 px
        positions.append((fixed >> 5, fixed & 31))
    return positions


def _run(first_tap: np.ndarray, n: int) -> slice:
    """The frame pixels whose first tap is in -1..n-1 (one run: the taps are monotonic)."""
    inside = np.flatnonzero((first_tap >= -1) & (first_tap < n))
    return slice(int(inside[0]), int(inside[-1]) + 1) if inside.size else slice(0, 0)


#: tap weights k / 32 for k = 0..32, exact in float32
_FRACTIONS = np.arange(33, dtype=np.float32) / 32


def _bilinear(probabilities: np.ndarray, rows: np.ndarray, fy: np.ndarray, cols: np.ndarray, fx: np.ndarray,
              out: np.ndarray, scratch: Scratch) -> None:
    """OpenCV 4's bilinear taps into ``out`` [R, C]: the map padded with -1 is sampled at
    padded rows ``rows``, ``rows + 1`` and columns ``cols``, ``cols + 1`` with fractions
    ``fy``, ``fx`` (in 1/32). As OpenCV: float32, 2-D weights (exact products of the 1-D
    ones), the four taps summed in the order (top-left, top-right, bottom-left, bottom-right).
    A weight row for each of the 33 possible row fractions, gathered per row, gives those
    products without an outer product per tap."""
    padded = np.pad(probabilities.astype(np.float32), 1, constant_values=-1.0)
    # mode="clip" (the indices are in range) lets take() write straight into its out buffer
    left = padded.take(cols, axis=1, out=scratch.array("left", (len(padded), len(cols)), np.float32), mode="clip")
    right = padded.take(cols + 1, axis=1, out=scratch.array("right", left.shape, np.float32), mode="clip")
    left_weights = np.multiply.outer(_FRACTIONS, _FRACTIONS[32 - fx])  # [33, C]: (k/32) * (1 - fx)
    right_weights = np.multiply.outer(_FRACTIONS, _FRACTIONS[fx])  # (k/32) * fx
    upper, lower = 32 - fy, fy
    taps, weights = scratch.array("taps", out.shape, np.float32), scratch.array("weights", out.shape, np.float32)
    terms = ((left, rows, left_weights, upper), (right, rows, right_weights, upper),
             (left, rows + 1, left_weights, lower), (right, rows + 1, right_weights, lower))
    for i, (values, at, row_weights, fraction) in enumerate(terms):
        values.take(at, axis=0, out=taps, mode="clip")
        row_weights.take(fraction, axis=0, out=weights, mode="clip")
        if i == 0:
            np.multiply(taps, weights, out=out)
        else:
            np.multiply(taps, weights, out=taps)
            out += taps


def _change(ratio: np.ndarray) -> np.ndarray:
    return np.maximum(ratio, 1.0 / ratio)


def _context_size(w, h):
    pad = (w + h) * 0.5
    return np.sqrt((w + pad) * (h + pad))
