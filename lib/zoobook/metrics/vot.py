"""VOT supervised-experiment scoring, as the SiamMask repository's evaluator does it.

Everything is computed from result files alone (one line per frame: ``1`` initialisation,
``2`` failure, ``0`` skipped, otherwise 8 polygon or 4 box numbers), against the dataset's
ground-truth polygons:

* **Region overlap** (:func:`region_overlap`): region.c's ``compute_polygon_overlap``
  (pysot copy, non-legacy rasteriser), in its arithmetic: vertices in float32; each region's
  box = floor/ceil of its extent cut to the bounds (0..W, 0..H); overlap 0 without
  rasterising when the boxes' IoU is <= 0 (so boxes sharing only an edge give 0) or one box
  is degenerate or outside the bounds; otherwise both polygons are shifted to the union box,
  rounded (C ``round``) and rasterised row by row (:func:`rasterize`), and the IoU of the
  pixel counts is taken in float32; special codes give NaN. Two 100x50 boxes overlapping by
  half give 0.3377, not 1/3, because the counts are inclusive.
* **Accuracy**: overlaps with bounds (W, H), each initialisation frame and the 9 after it
  ignored (burn-in 10); ``np.nanmean`` over all frames of all sequences pooled together
  (sequences in sorted name order).
* **Robustness**: failures per 100 frames, (total failures / total frames) x 100.
* **EAO**: overlaps with bounds (W-1, H-1), no burn-in, cut at failure + 5; see
  :func:`expected_overlap_curve`. The repository averages the curve over [100, 356] for
  VOT2016 (how 0.433 was obtained); VOT2016's own interval is [108, 371].
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from zoobook.atomic import write_text_atomic

EAO_INTERVALS = {"repo": (100, 356), "vot2016": (108, 371)}
BURNIN = 10
SKIPPING = 5
INIT, FAILURE, SKIPPED = 1, 2, 0


class ResultsFormatError(ValueError):
    """A tracker result file that is not in the VOT format; the message names the file and line."""


# ---------------------------------------------------------------------------------------
# Region overlap (utils/pysot/utils/src/region.c, compute_polygon_overlap, non-legacy path)

_NO_NODE = np.iinfo(np.int64).max


def _polygon(region: Sequence[float]) -> tuple[np.ndarray, np.ndarray] | None:
    """The region's vertices as the evaluator stores them (C float): float32 (xs, ys). A box
    x, y, w, h becomes the corners (x, y), (x+w, y), (x+w, y+h), (x, y+h), summed in float64
    before the cast (no -1). None for a one-number code."""
    if len(region) == 1:
        return None
    if len(region) == 4:
        x, y, w, h = (float(v) for v in region)
        region = [x, y, x + w, y, x + w, y + h, x, y + h]
    values = np.asarray([float(v) for v in region], dtype=np.float32)
    return values[0::2], values[1::2]


def _round_half_away(values: np.ndarray) -> np.ndarray:
    """C ``round`` of float32 values (halves away from zero), exact: no float32 ``+ 0.5``."""
    whole = np.trunc(values)
    step = (np.abs(values - whole) >= np.float32(0.5)).astype(np.float32)
    return whole + np.copysign(step, values)


def _extent(xs: np.ndarray, ys: np.ndarray, limit: tuple) -> tuple:
    """float32 (left, top, right, bottom): floor/ceil of the vertices' extent, cut to ``limit``."""
    return (max(np.floor(xs.min()), limit[0]), max(np.floor(ys.min()), limit[1]),
            min(np.ceil(xs.max()), limit[2]), min(np.ceil(ys.max()), limit[3]))


def _skips_rasterising(b1: tuple, b2: tuple) -> bool:
    """region.c's early exits (overlap 0): one box's area under 1e-10 of the other's (or
    negative: a region outside the bounds), or a box IoU <= 0 in float32 (disjoint boxes, and
    boxes that only share an edge although their pixels would overlap)."""
    def area(b):
        return (b[2] - b[0]) * (b[3] - b[1])  # float32

    with np.errstate(all="ignore"):
        a1, a2 = np.float64(area(b1)), np.float64(area(b2))
        inter = (min(b1[2], b2[2]) - max(b1[0], b2[0])) * (min(b1[3], b2[3]) - max(b1[1], b2[1]))
        iou = inter / (area(b1) + area(b2) - inter)
        return bool(a1 / a2 < 1e-10 or a2 / a1 < 1e-10 or iou <= 0)


def _row_nodes(xs: np.ndarray, ys: np.ndarray, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row y: the x where each non-horizontal edge with y in [min, max] of its ends meets
    the row, truncated to int, sorted ([height, n_vertices], unused slots ``_NO_NODE``), and
    how many there are. Edge i runs from vertex i-1 to vertex i; its crossing
    x_i + (y - y_i) / (y_{i-1} - y_i) * (x_{i-1} - x_i) takes the three differences in float32
    and the rest in float64, as region.c does (``r``, ``k`` are doubles)."""
    rows = np.arange(height, dtype=np.float32)[:, None]
    yi, yj = ys[None, :], np.roll(ys, 1)[None, :]
    xi, xj = xs[None, :], np.roll(xs, 1)[None, :]
    meets = (np.minimum(yi, yj) <= rows) & (rows <= np.maximum(yi, yj)) & (yi != yj)
    r, k = (yj - yi).astype(np.float64), (xj - xi).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = xi.astype(np.float64) + (rows - yi).astype(np.float64) / r * k
    nodes = np.where(meets, np.trunc(np.where(meets, x, 0)).astype(np.int64), _NO_NODE)
    nodes.sort(axis=1)
    return nodes, meets.sum(axis=1)


def _row_spans(nodes: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, left, right) of every span region.c fills: walking a row's sorted nodes, a node
    equal to the next one is skipped, otherwise the two form a span and the walk moves past
    both (so nodes 1, 3, 3, 5 give spans 1-3 and 3-5)."""
    height, slots = nodes.shape
    rows, at = np.arange(height), np.zeros(height, dtype=np.int64)
    spans = [(rows[:0], nodes[:0, 0], nodes[:0, 0])]
    for _ in range(slots - 1):  # every step moves a live row on by at least one node
        live = at < count - 1
        left = nodes[rows, np.minimum(at, slots - 2)]
        right = nodes[rows, np.minimum(at, slots - 2) + 1]
        skip, pair = live & (left == right), live & (left != right)
        spans.append((rows[pair], left[pair], right[pair]))
        at += skip + 2 * pair
    return tuple(np.concatenate(part) for part in zip(*spans))


def rasterize(xs: np.ndarray, ys: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boolean [height, width] mask of a polygon whose float32 vertices are already whole
    pixels in mask coordinates: the rows' spans (see :func:`_row_nodes`, :func:`_row_spans`)
    cut to the mask, both ends included."""
    if width <= 0 or height <= 0:
        return np.zeros((max(height, 0), max(width, 0)), dtype=bool)
    rows, left, right = _row_spans(*_row_nodes(xs, ys, height))
    keep = (left < width) & (right >= 0)
    rows, start, stop = rows[keep], np.maximum(left[keep], 0), np.minimum(right[keep], width - 1) + 1
    size = height * (width + 1)
    edges = np.bincount(rows * (width + 1) + start, minlength=size) \
        - np.bincount(rows * (width + 1) + stop, minlength=size)
    return np.cumsum(edges.reshape(height, width + 1)[:, :width], axis=1) > 0


def region_overlap(a: Sequence[float], b: Sequence[float], bounds: tuple[float, float] | None = None) -> float:
    """VOT overlap of two regions (8-number polygons, 4-number boxes or 1-number codes);
    ``bounds`` = (width, height) of the image (None: unbounded). NaN for a special code, 0 for
    the early exits of :func:`_skips_rasterising`, else IoU of the pixel counts in float32
    (NaN when both masks are empty)."""
    pa, pb = _polygon(a), _polygon(b)
    if pa is None or pb is None:
        return math.nan
    far, zero = np.float32(np.inf), np.float32(0)
    if bounds is None:
        limit = (-far, -far, far, far)
    else:
        limit = (zero, zero, np.float32(bounds[0]), np.float32(bounds[1]))
    b1, b2 = _extent(*pa, limit), _extent(*pb, limit)
    x0, y0 = min(b1[0], b2[0]), min(b1[1], b2[1])
    width = int(max(b1[2], b2[2]) - x0) + 1  # float32 difference, truncated
    height = int(max(b1[3], b2[3]) - y0) + 1
    if width < 1 or height < 1 or _skips_rasterising(b1, b2):
        return 0.0
    m1, m2 = (rasterize(_round_half_away(xs - x0), _round_half_away(ys - y0), width, height)
              for xs, ys in (pa, pb))  # shifted in float32, then rounded, as region.c
    inter = int(np.count_nonzero(m1 & m2))
    union = int(np.count_nonzero(m1 | m2))
    if union == 0:
        return math.nan
    return float(np.float32(inter) / np.float32(union))


# ---------------------------------------------------------------------------------------
# Result files


def format_region(region: Sequence[float] | int) -> str:
    if isinstance(region, (int, np.integer)):
        return str(int(region))
    if len(region) == 1:
        return str(int(region[0]))
    return ",".join(f"{v:.4f}" for v in region)


def write_results(path: str | Path, regions: Sequence[Sequence[float] | int]) -> Path:
    """One line per frame, as the reference writes ``<seq>_001.txt`` (written atomically)."""
    return write_text_atomic(path, "".join(format_region(r) + "\n" for r in regions))


def read_results(path: str | Path) -> list[list[float]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tracker result file not found")
    regions = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            values = [float(v) for v in line.split(",")]
        except ValueError as err:
            raise ResultsFormatError(f"{path}:{lineno}: not a list of comma-separated numbers ({line!r})") from err
        if len(values) not in (1, 4, 8) or (len(values) == 1 and values[0] not in (INIT, FAILURE, SKIPPED)):
            raise ResultsFormatError(f"{path}:{lineno}: expected a code 0/1/2, 4 or 8 numbers, found {line!r}")
        regions.append(values)
    return regions


def results_path(folder: str | Path, sequence: str) -> Path:
    """``<folder>/baseline/<seq>/<seq>_001.txt``, the reference's layout."""
    return Path(folder) / "baseline" / sequence / f"{sequence}_001.txt"


# ---------------------------------------------------------------------------------------
# Metrics


def results_agreement(index: dict[str, dict], candidate_folder: str | Path, reference_folder: str | Path) -> dict:
    """Two trackers' result files on the same sequences (``index``: the evaluator's JSON index):
    the share of frames where both wrote the same kind of line (the same code, or both a
    region), and the overlap of their regions where both tracked (within the image bounds)."""
    same, total, overlaps = 0, 0, []
    for name, entry in index.items():
        a = read_results(results_path(candidate_folder, name))
        b = read_results(results_path(reference_folder, name))
        for ra, rb in zip(a, b):
            total += 1
            same += (len(ra) == 1) == (len(rb) == 1) and (len(ra) > 1 or ra == rb)
            if len(ra) > 1 and len(rb) > 1:
                overlaps.append(region_overlap(ra, rb, (entry["width"], entry["height"])))
    overlaps = np.array(overlaps)
    return {"frames": total, "same_kind_of_line": same / total if total else None,
            "mean_region_overlap": float(overlaps.mean()) if overlaps.size else None,
            "min_region_overlap": float(overlaps.min()) if overlaps.size else None}


def failures(regions: Sequence[Sequence[float]]) -> list[int]:
    return [i for i, r in enumerate(regions) if len(r) == 1 and r[0] == FAILURE]


def trajectory_overlaps(regions: Sequence[Sequence[float]], groundtruth: Sequence[Sequence[float]],
                        bounds: tuple[float, float] | None, *, burnin: int = 0) -> np.ndarray:
    """Per-frame overlaps (float64, NaN for codes); with ``burnin`` each initialisation frame
    and the ``burnin - 1`` frames after it are NaN."""
    regions = list(regions)
    if burnin:
        for i in [i for i, r in enumerate(regions) if len(r) == 1 and r[0] == INIT]:
            for j in range(i, min(i + burnin, len(regions))):
                regions[j] = [SKIPPED]
    return np.array([region_overlap(r, g, bounds) for r, g in zip(regions, groundtruth)], dtype=np.float64)


def _fragments(overlaps: np.ndarray, failed: list[int], longest: int, skipping: int) -> tuple[list, list]:
    """One sequence's rows of the reference's fragment table (float64, ``longest`` wide) and
    their weights, for the ``all`` tag (every frame tagged 1; see
    :func:`expected_overlap_curve`)."""
    n = len(overlaps)
    if not failed:  # the whole sequence, NaN kept; weight n / n
        row = np.full(longest, np.nan)
        row[:n] = overlaps
        return [row], [1.0]
    starts = [0] + [f + skipping for f in failed if f + skipping <= n]
    rows, weights = [], []
    for start, end in zip(starts, starts[1:] + [None]):
        if end is None:  # to the end of the sequence, NaN past it
            piece, row = overlaps[start:], np.full(longest, np.nan)
            weight = (n - start) / (n - start + 1e-16)
        else:  # to the next restart inclusive (cut at the sequence's end), 0 past it
            piece, row = overlaps[start:end + 1], np.zeros(longest)
            weight = (min(end + 1, n) - start) / (end - start + 1)
        row[:len(piece)] = np.where(np.isnan(piece), 0.0, piece)
        rows.append(row)
        weights.append(weight)
    return rows, weights


def _weighted_curve(fragments: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Phi(L) = sum_f w_f * mean(fragment_f[1..L]) / sum_f w_f over the fragments whose entry L
    is not NaN; float32, Phi(0) = 1, 0 where no fragment is defined. Every sum runs in order
    (frames left to right, fragments top to bottom), as the reference's numba loop adds."""
    running = np.cumsum(fragments[:, 1:], axis=1)
    means = running / np.arange(1, fragments.shape[1])
    defined = ~np.isnan(fragments[:, 1:])
    weighted = np.cumsum(np.where(defined, means * weights[:, None], 0.0), axis=0)[-1]
    total = np.cumsum(np.where(defined, weights[:, None], 0.0), axis=0)[-1]
    curve = np.zeros(fragments.shape[1], dtype=np.float32)
    curve[0] = 1
    with np.errstate(divide="ignore", invalid="ignore"):
        curve[1:] = np.where(defined.any(axis=0), weighted / total, 0.0)
    return curve


def expected_overlap_curve(sequences: Sequence[tuple[np.ndarray, list[int]]], skipping: int = SKIPPING) -> np.ndarray:
    """Phi(L) for L = 0 .. longest-1 from (EAO-style overlaps, failure frames) per sequence, in
    the order given, as EAOBenchmark (tag ``all``) builds it. A sequence without failures is
    one fragment, NaN kept, weight 1. Otherwise restarts p = failure + ``skipping`` are kept
    while p <= len; fragment [p_k .. p_{k+1}] (inclusive, cut at the end of the sequence) has
    NaN -> 0, is padded with 0 (a failed run keeps scoring 0) and weighs
    (number of its frames) / (p_{k+1} - p_k + 1), below 1 only when p_{k+1} = len; the last
    fragment [p_last ..] has NaN -> 0, is padded with NaN and weighs 1 (0 when empty). Phi(L)
    is the weighted mean of the defined fragments' means over entries 1..L
    (:func:`_weighted_curve`)."""
    longest = max(len(o) for o, _ in sequences)
    rows, weights = [], []
    for overlaps, failed in sequences:
        r, w = _fragments(np.asarray(overlaps, dtype=np.float64), list(failed), longest, skipping)
        rows += r
        weights += w
    return _weighted_curve(np.stack(rows), np.array(weights))


def eao_from_curve(curve: np.ndarray, interval: tuple[int, int]) -> float:
    """Mean of the curve over sequence lengths low..high (array indices low-1 .. high-1, as
    the reference indexes it)."""
    low, high = interval
    weight = np.zeros(len(curve))
    weight[low - 1:high] = 1
    valid = ~np.isnan(curve)
    if not np.sum(weight[valid]):
        return math.nan  # every sequence is shorter than the interval
    return float(np.sum(curve[valid] * weight[valid]) / np.sum(weight[valid]))


def _nanmean(values: np.ndarray) -> float:
    """``np.nanmean`` as the reference takes it (NaN replaced by 0 in the sum, divided by the
    count of the rest); NaN, without a warning, when every value is NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(values))


def evaluate(index: dict[str, dict], results: dict[str, list[list[float]]],
             intervals: dict[str, tuple[int, int]] = EAO_INTERVALS) -> dict:
    """Score ``results`` ({sequence: regions}) against a VOT JSON index (``gt_rect``,
    ``width``, ``height`` per sequence). Every sequence of the index must have results with
    one line per frame. Sequences are taken in sorted name order, as the reference's dataset
    iterates them (the order of the pooled mean and of the EAO fragments)."""
    accuracy_overlaps, per_video_accuracy, per_video_failures, eao_input = [], {}, {}, []
    total_frames = 0
    for name in sorted(index):
        entry = index[name]
        if name not in results:
            raise ResultsFormatError(f"no results for sequence {name!r}")
        regions, gt = results[name], entry["gt_rect"]
        if len(regions) != len(gt):
            raise ResultsFormatError(f"sequence {name!r}: {len(regions)} result lines for {len(gt)} frames")
        w, h = entry["width"], entry["height"]
        acc = trajectory_overlaps(regions, gt, (w, h), burnin=BURNIN)
        failed = failures(regions)
        accuracy_overlaps.append(acc)
        per_video_accuracy[name] = _nanmean(acc)
        per_video_failures[name] = len(failed)
        eao_input.append((trajectory_overlaps(regions, gt, (w - 1, h - 1)), failed))
        total_frames += len(regions)
    pooled = np.concatenate(accuracy_overlaps)
    lost = sum(per_video_failures.values())
    curve = expected_overlap_curve(eao_input)
    return {
        "accuracy": _nanmean(pooled),
        "robustness": lost / total_frames * 100,  # the reference's order of operations
        "lost_number": lost,
        "frames": total_frames,
        "eao": {key: eao_from_curve(curve, interval) for key, interval in intervals.items()},
        "per_video_accuracy": per_video_accuracy,
        "per_video_failures": per_video_failures,
        "curve": curve,
    }


def evaluate_folder(index: dict[str, dict], folder: str | Path, **kwargs) -> dict:
    """:func:`evaluate` on the result files under ``folder`` (``baseline/<seq>/<seq>_001.txt``)."""
    return evaluate(index, {name: read_results(results_path(folder, name)) for name in index}, **kwargs)
