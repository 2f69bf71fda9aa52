"""VOT supervised-experiment scoring, as the SiamMask repository's evaluator does it.

Everything is computed from result files alone (one line per frame: ``1`` initialisation,
``2`` failure, ``0`` skipped, otherwise 8 polygon or 4 box numbers), against the dataset's
ground-truth polygons:

* **Region overlap** (:func:`region_overlap`): the VOT rasteriser. Vertices are rounded to
  whole pixels (half away from zero); the masks cover the union of the two bounding boxes,
  each first cut to the bounds (0..W, 0..H); a row takes the x of every edge it meets (ends
  included, truncated to int, repeated values once) and fills between pairs of them, both
  ends included. IoU of the pixel counts in float32; special codes give NaN. Two 100x50
  boxes overlapping by half give 0.3377, not 1/3, because the counts are inclusive.
* **Accuracy**: overlaps with bounds (W, H), each initialisation frame and the 9 after it
  ignored (burn-in 10); the mean over all frames of all sequences pooled together.
* **Robustness**: failures per 100 frames (total failures / total frames x 100).
* **EAO**: overlaps with bounds (W-1, H-1), no burn-in, cut at failure + 5; see
  :func:`expected_overlap_curve`. The repository averages the curve over [100, 356] for
  VOT2016 (how 0.433 was obtained); VOT2016's own interval is [108, 371].
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from zoobook.records import write_text_atomic

EAO_INTERVALS = {"repo": (100, 356), "vot2016": (108, 371)}
BURNIN = 10
SKIPPING = 5
INIT, FAILURE, SKIPPED = 1, 2, 0


class ResultsFormatError(ValueError):
    """A tracker result file that is not in the VOT format; the message names the file and line."""


# ---------------------------------------------------------------------------------------
# Region overlap


def _vertices(region: Sequence[float]) -> tuple[np.ndarray, np.ndarray] | None:
    """float32 vertex arrays rounded half away from zero; None for a special code."""
    if len(region) == 1:
        return None
    if len(region) == 4:  # x, y, w, h as the evaluator reads it (no -1)
        x, y, w, h = region
        region = [x, y, x + w, y, x + w, y + h, x, y + h]
    values = np.asarray(region, dtype=np.float32)
    rounded = (np.sign(values) * np.floor(np.abs(values) + np.float32(0.5))).astype(np.float32)
    return rounded[0::2], rounded[1::2]


def rasterize(xs: np.ndarray, ys: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boolean [height, width] mask of a polygon whose vertices are already whole pixels in
    mask coordinates (see the module docstring for the rules)."""
    if width <= 0 or height <= 0:
        return np.zeros((max(height, 0), max(width, 0)), dtype=bool)
    rows = np.arange(height, dtype=np.float32)[:, None]
    yi, yj = ys[None, :], np.roll(ys, 1)[None, :]  # edge from vertex i-1 to vertex i
    xi, xj = xs[None, :], np.roll(xs, 1)[None, :]
    meets = ((yi <= rows) & (yj > rows)) | ((yj <= rows) & (yi > rows)) \
        | ((yi < rows) & (yj >= rows)) | ((yj < rows) & (yi >= rows))
    dy = (yj - yi).astype(np.float64)
    meets &= dy != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        x = xi + (rows - yi).astype(np.float64) / dy * (xj - xi).astype(np.float64)
    big = np.iinfo(np.int64).max
    nodes = np.where(meets, np.trunc(np.where(meets, x, 0)).astype(np.int64), big)
    nodes.sort(axis=1)
    repeated = np.zeros_like(meets)
    repeated[:, 1:] = (nodes[:, 1:] == nodes[:, :-1]) & (nodes[:, 1:] != big)
    nodes[repeated] = big
    nodes.sort(axis=1)
    count = (nodes != big).sum(axis=1)
    if nodes.shape[1] % 2:
        nodes = np.pad(nodes, ((0, 0), (0, 1)), constant_values=big)
    left, right = nodes[:, 0::2], nodes[:, 1::2]
    pair = np.arange(left.shape[1])[None, :]
    keep = (2 * pair + 1 < count[:, None]) & (left < width) & (right >= 0)
    row_index = np.broadcast_to(np.arange(height)[:, None], left.shape)[keep]
    start, stop = np.maximum(left[keep], 0), np.minimum(right[keep], width - 1) + 1
    edges = np.zeros((height, width + 1), dtype=np.int32)
    np.add.at(edges, (row_index, start), 1)
    np.add.at(edges, (row_index, stop), -1)
    return np.cumsum(edges[:, :width], axis=1) > 0


def region_overlap(a: Sequence[float], b: Sequence[float], bounds: tuple[float, float] | None = None) -> float:
    """VOT overlap of two regions (8-number polygons, 4-number boxes or 1-number codes);
    ``bounds`` = (width, height) of the image (None: unbounded). NaN for a special code or
    when both regions are empty inside the bounds."""
    pa, pb = _vertices(a), _vertices(b)
    if pa is None or pb is None:
        return math.nan
    limit = (-math.inf, -math.inf, math.inf, math.inf) if bounds is None else (0, 0, bounds[0], bounds[1])
    boxes = [(max(xs.min(), limit[0]), max(ys.min(), limit[1]), min(xs.max(), limit[2]), min(ys.max(), limit[3]))
             for xs, ys in (pa, pb)]
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    width = int(max(b[2] for b in boxes) - x0) + 1
    height = int(max(b[3] for b in boxes) - y0) + 1
    masks = [rasterize(xs - np.float32(x0), ys - np.float32(y0), width, height) for xs, ys in (pa, pb)]
    inter = int(np.count_nonzero(masks[0] & masks[1]))
    union = int(np.count_nonzero(masks[0])) + int(np.count_nonzero(masks[1])) - inter
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


def expected_overlap_curve(sequences: Sequence[tuple[np.ndarray, list[int]]], skipping: int = SKIPPING) -> np.ndarray:
    """Phi(L) for L = 0 .. longest-1 (float32; Phi(0) = 1) from (EAO-style overlaps, failure
    frames) per sequence. A sequence is cut at each failure f (next start f + skipping); a
    cut segment runs to the next start inclusive, with NaN -> 0, and is padded with 0 to the
    longest length (after a failure the tracker keeps scoring 0); the last segment runs to
    the end, NaN -> 0, padded with NaN. A sequence without failures is used as is (NaN kept).
    Phi(L) = mean over the segments defined at L of the mean of their entries 1..L."""
    longest = max(len(o) for o, _ in sequences)
    segments = []
    for overlaps, failed in sequences:
        if not failed:
            row = np.full(longest, np.nan)
            row[:len(overlaps)] = overlaps
            segments.append(row)
            continue
        points = [0] + [f + skipping for f in failed if f + skipping <= len(overlaps)]
        for k, start in enumerate(points):
            last = k == len(points) - 1
            piece = np.array(overlaps[start:] if last else overlaps[start:points[k + 1] + 1], dtype=np.float64)
            piece[np.isnan(piece)] = 0
            row = np.full(longest, np.nan if last else 0.0)
            row[:len(piece)] = piece
            segments.append(row)
    fragments = np.stack(segments)
    curve = np.zeros(longest, dtype=np.float32)
    curve[0] = 1
    for length in range(1, longest):
        defined = ~np.isnan(fragments[:, length])
        if defined.any():
            curve[length] = np.mean(np.sum(fragments[defined, 1:length + 1], axis=1) / length)
    return curve


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
    """Mean of the non-NaN values; NaN when there are none (every frame in burn-in or failed)."""
    values = values[~np.isnan(values)]
    return float(np.mean(values)) if values.size else math.nan


def evaluate(index: dict[str, dict], results: dict[str, list[list[float]]],
             intervals: dict[str, tuple[int, int]] = EAO_INTERVALS) -> dict:
    """Score ``results`` ({sequence: regions}) against a VOT JSON index (``gt_rect``,
    ``width``, ``height`` per sequence). Every sequence of the index must have results with
    one line per frame."""
    accuracy_overlaps, per_video_accuracy, per_video_failures, eao_input = [], {}, {}, []
    total_frames = 0
    for name, entry in index.items():
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
        "robustness": 100.0 * lost / total_frames,
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
