"""YolactEdge preprocessing, as the reference ``BaseTransform`` and the port's preprocess.py.

Input: a BGR uint8 image ``[H, W, 3]`` as ``cv2.imread`` returns it. Output: float32
``[3, 550, 550]`` RGB, resized *without* keeping the aspect ratio (bilinear, on the float
image), normalised with the repository's own BGR mean/std (not torchvision's).
"""

from __future__ import annotations

import cv2
import numpy as np

from zoobook.data.images import read_bgr  # noqa: F401  (re-exported for notebooks)
from zoobook.timing import timed

INPUT_SIZE = 550
MEAN_BGR = np.array([103.94, 116.78, 123.68], dtype=np.float32)
STD_BGR = np.array([57.38, 57.12, 58.40], dtype=np.float32)


def preprocess(image_bgr: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """BGR uint8 ``[H, W, 3]`` -> float32 RGB ``[3, size, size]``.

    Each output plane is written once, straight from its BGR channel: the same float32
    subtraction and division as ``(resized - MEAN_BGR) / STD_BGR`` then the RGB, CHW reorder.
    """
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise ValueError(f"expected a BGR image [H, W, 3], got shape {image_bgr.shape}")
    with timed("preprocess"):
        resized = cv2.resize(image_bgr.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
        planes = np.empty((3, size, size), np.float32)
        for plane, channel in zip(planes, (2, 1, 0)):
            np.subtract(resized[:, :, channel], MEAN_BGR[channel], out=plane)
            np.divide(plane, STD_BGR[channel], out=plane)
        return planes
