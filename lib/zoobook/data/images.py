"""Image reading shared by every model: BGR uint8, as ``cv2.imread`` returns it."""

from __future__ import annotations

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
