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

from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from zoobook.models.siammask.network import refine_inputs

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


def crop_patch(frame: np.ndarray, centre: np.ndarray, model_size: int, side: int, fill: np.ndarray) -> np.ndarray:
    """Square window of ``side`` px centred at ``centre`` (top-left = round-half-even(centre -
    (side+1)/2)), outside parts filled with ``fill`` (uint8), resized bilinearly (on uint8) to
    ``model_size``. Returns float32 [1, 3, model_size, model_size], BGR, 0..255."""
    h, w = frame.shape[:2]
    left = int(np.round(centre[0] - (side + 1) / 2))
    top = int(np.round(centre[1] - (side + 1) / 2))
    pad_left, pad_top = max(0, -left), max(0, -top)
    pad_right, pad_bottom = max(0, left + side - w), max(0, top + side - h)
    if pad_left or pad_top or pad_right or pad_bottom:
        canvas = np.empty((h + pad_top + pad_bottom, w + pad_left + pad_right, 3), np.uint8)
        canvas[:] = fill
        canvas[pad_top:pad_top + h, pad_left:pad_left + w] = frame
        frame, left, top = canvas, left + pad_left, top + pad_top
    patch = frame[top:top + side, left:left + side]
    if side != model_size:
        patch = cv2.resize(patch, (model_size, model_size))
    return np.ascontiguousarray(patch.transpose(2, 0, 1)[None], dtype=np.float32)


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
    """

    def __init__(self, engine, config: TrackerConfig = TrackerConfig(), *, debug: bool = False) -> None:
        self.engine, self.config, self.debug = engine, config, debug
        self.anchors = make_anchors(config)
        self.window = cosine_window(config)
        self.template_crop: np.ndarray | None = None

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
        cfg = self.config
        scale, side = self._search_side()
        side_px = int(np.round(side))
        crop_origin = self.centre - side_px / 2
        search = crop_patch(frame, self.centre, cfg.instance_size, side_px, self.fill)
        outputs = self.engine.search(search)
        decoded = score_anchors(outputs, self.anchors, self.window, self.size * scale, cfg)
        best = decoded.best
        box = decoded.boxes[:, best] / np.float32(scale)  # float32, as the reference
        lr = float(decoded.penalty[best] * decoded.scores[best]) * cfg.lr
        self.centre = self.centre + box[:2].astype(np.float64)
        self.size = self.size * (1 - lr) + box[2:].astype(np.float64) * lr
        _, row, col = np.unravel_index(best, (len(self.anchors) // cfg.score_size ** 2, cfg.score_size, cfg.score_size))
        logits, probabilities = self._mask(outputs, int(row), int(col))
        pasted = self._paste(probabilities, crop_origin, side_px, int(row), int(col))
        polygon = self._polygon(pasted)
        h, w = self.frame_hw
        self.centre = np.array([min(max(self.centre[0], 0), w), min(max(self.centre[1], 0), h)], dtype=np.float64)
        self.size = np.array([min(max(self.size[0], 10), w), min(max(self.size[1], 10), h)], dtype=np.float64)
        debug = TrackDebug(search, (float(crop_origin[0]), float(crop_origin[1]), side_px), decoded.scores,
                           decoded.penalised, logits) if self.debug else None
        return TrackResult(polygon, self.centre.copy(), self.size.copy(), float(decoded.scores[best]),
                           (int(row), int(col)), pasted, decoded.margin, debug)

    def _mask(self, outputs: dict[str, np.ndarray], row: int, col: int) -> tuple[np.ndarray, np.ndarray]:
        """The chosen cell's logits and probabilities, float32 [out_size, out_size]."""
        side = self.config.out_size
        if self.config.refine:
            tensors = [torch.from_numpy(outputs[k]) for k in ("f0", "f1", "f2", "corr_feature")]
            inputs = {f"p{i}": np.ascontiguousarray(p.numpy()) for i, p in enumerate(refine_inputs(*tensors, row, col))}
            logits = torch.from_numpy(np.ascontiguousarray(self.engine.refine(inputs), dtype=np.float32))
        else:  # a strided view, as in the reference: torch rounds strided and contiguous sigmoids apart
            logits = torch.from_numpy(np.asarray(outputs["mask"], dtype=np.float32))[0, :, row, col]
        probabilities = logits.sigmoid()
        return logits.reshape(side, side).numpy().copy(), probabilities.reshape(side, side).numpy()

    def _paste(self, probabilities: np.ndarray, crop_origin: np.ndarray, side_px: int, row: int, col: int) -> np.ndarray:
        """Warp the out_size x out_size mask into the frame (bilinear, -1 outside)."""
        cfg = self.config
        m = side_px / cfg.instance_size
        sub = (crop_origin[0] + (col - cfg.base_size / 2) * cfg.total_stride * m,
               crop_origin[1] + (row - cfg.base_size / 2) * cfg.total_stride * m, m * cfg.exemplar_size)
        return paste_mask(probabilities, sub, self.frame_hw)

    def _polygon(self, pasted: np.ndarray) -> np.ndarray:
        binary = (pasted > self.config.seg_thr).astype(np.uint8)
        contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        areas = [cv2.contourArea(c) for c in contours]
        if contours and max(areas) > 100:
            corners = cv2.boxPoints(cv2.minAreaRect(contours[int(np.argmax(areas))].reshape(-1, 2)))
        else:
            x, y = self.centre - self.size / 2
            w, h = self.size
            corners = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])
        return np.asarray(corners, dtype=np.float64).ravel()


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
    h, w = frame_hw
    n = probabilities.shape[0]
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
        positions.append((fixed >> 5, (fixed & 31).astype(np.float32) / 32))
    (x0, fx), (y0, fy) = positions
    padded = np.pad(probabilities.astype(np.float32), 1, constant_values=-1.0)
    cols, rows = np.clip(x0 + 1, 0, n + 1), np.clip(y0 + 1, 0, n + 1)
    cols1, rows1 = np.clip(x0 + 2, 0, n + 1), np.clip(y0 + 2, 0, n + 1)
    upper, lower, left, right = (1 - fy)[:, None], fy[:, None], (1 - fx)[None, :], fx[None, :]
    # OpenCV sums the four taps in float32, in this order, with 2-D weights (exact products)
    out = padded[rows][:, cols] * (upper * left) + padded[rows][:, cols1] * (upper * right)
    out = out + padded[rows1][:, cols] * (lower * left)
    out = out + padded[rows1][:, cols1] * (lower * right)
    inside = ((x0 >= -1) & (x0 < n))[None, :] & ((y0 >= -1) & (y0 < n))[:, None]
    return np.where(inside, out, -1.0).astype(np.float32)


def _change(ratio: np.ndarray) -> np.ndarray:
    return np.maximum(ratio, 1.0 / ratio)


def _context_size(w, h):
    pad = (w + h) * 0.5
    return np.sqrt((w + pad) * (h + pad))
