"""Image reading shared by every model: BGR uint8, as ``cv2.imread`` returns it; and
per-channel lookup tables, an exact way to apply any per-value uint8 transform."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np


def read_bgr(path: str | Path) -> np.ndarray:
    """Read an image file as BGR uint8 ``[H, W, 3]``; a clear error when it is missing or
    unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: not a readable image")
    return image


def lookup_planes(image: np.ndarray, tables: np.ndarray, out: np.ndarray,
                  channels: Sequence[int] | None = None) -> np.ndarray:
    """``out[k] = tables[k][image[:, :, channels[k]]]``: uint8 ``image`` [H, W, C] through one
    256-entry table per output plane, written into ``out`` [K, H, W] (the tables' dtype).
    ``channels`` (default 0..K-1) picks the image channel of each plane, e.g. (2, 1, 0) for
    BGR in, RGB planes out. A lookup, so exactly the tables' values; returns ``out``."""
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"expected a uint8 [H, W, C] image, got {image.dtype} {image.shape}")
    if out.shape != (len(tables), *image.shape[:2]) or out.dtype != tables.dtype:
        raise ValueError(f"out must be {tables.dtype} {(len(tables), *image.shape[:2])}, got {out.dtype} {out.shape}")
    planes = cv2.split(np.ascontiguousarray(image))
    for k, channel in enumerate(range(len(tables)) if channels is None else channels):
        written = cv2.LUT(planes[channel], np.ascontiguousarray(tables[k]), dst=out[k])
        if not np.shares_memory(written, out[k]):  # OpenCV allocated instead (e.g. a strided plane)
            out[k] = written
    return out
