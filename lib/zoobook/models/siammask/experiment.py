"""The VOT supervised ("baseline") experiment, as the reference's ``track_vot`` runs it.

Frame ``start`` (0 at first): initialise from the ground-truth polygon (area-preserving
box) and write ``1``. Each later frame: track; the output polygon is scored against the
ground truth with the VOT rasteriser inside the image. An overlap of exactly 0 is a
failure: write ``2`` and re-initialise 5 frames later (the frames between are ``0``).
Otherwise write the polygon.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np

from zoobook.data.images import read_bgr
from zoobook.data.vot import VotSequence, polygon_to_box
from zoobook.metrics.vot import FAILURE, INIT, SKIPPED, region_overlap

RESTART_AFTER = 5


def run_sequence(tracker, sequence: VotSequence, *, frames: Iterable[np.ndarray] | None = None,
                 on_frame: Callable[[int], None] | None = None) -> dict:
    """Run ``tracker`` (a :class:`~zoobook.models.siammask.tracker.SiamMaskTracker`) over one
    sequence. Returns ``regions`` (the result file's lines), ``failures`` (frame indices),
    ``tracking_s`` (init and track calls only, no image reading) and ``fps`` as the
    reference reports it: tracked frames / tracking time."""
    regions: list = []
    failures: list[int] = []
    start, seconds = 0, 0.0
    images = frames if frames is not None else (read_bgr(p) for p in sequence.frames)
    for index, (frame, gt) in enumerate(zip(images, sequence.groundtruth)):
        if index == start:
            cx, cy, w, h = polygon_to_box(np.asarray(gt))
            tic = time.perf_counter()
            tracker.start(frame, (cx, cy), (w, h))
            seconds += time.perf_counter() - tic
            regions.append(INIT)
        elif index > start:
            tic = time.perf_counter()
            result = tracker.track(frame)
            seconds += time.perf_counter() - tic
            if region_overlap(result.polygon, gt, (frame.shape[1], frame.shape[0])) == 0:
                regions.append(FAILURE)
                failures.append(index)
                start = index + RESTART_AFTER
            else:
                regions.append(result.polygon.tolist())
        else:
            regions.append(SKIPPED)
        if on_frame:
            on_frame(index)
    return {"regions": regions, "failures": failures, "tracking_s": seconds,
            "fps": (len(regions) - 1) / seconds if seconds else None}
