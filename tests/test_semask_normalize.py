"""SeMask's input against mmseg's test pipeline arithmetic (Picsart-AI-Research/SeMask-Segmentation,
SeMask-FPN/mmseg/datasets/pipelines/transforms.py ``Normalize``, which calls mmcv 1.x
``imnormalize``): float32 mean and std; OpenCV subtracts the mean and multiplies by 1 / std,
each in float64 with a float32 result."""

from __future__ import annotations

import cv2
import numpy as np

from zoobook.models.semask.export import normalize


def _opencv_normalize(rgb: np.ndarray) -> np.ndarray:
    """The reference's two OpenCV calls on a float32 RGB image [H, W, 3]: a float64 [1, 3]
    row is a per-channel scalar to OpenCV, so it works in float64 and writes float32."""
    mean = np.array([123.675, 116.28, 103.53], np.float32).astype(np.float64)[None]
    reciprocal = 1 / np.array([58.395, 57.12, 57.375], np.float32).astype(np.float64)[None]
    centred = cv2.subtract(rgb.astype(np.float32), mean)
    return cv2.multiply(centred, reciprocal)


def test_normalize_is_bit_exact_with_mmseg():
    """Every uint8 value in every channel. E.g. red 6: 6 - float32(123.675) = -117.67500305
    (exact in float32), times 1 / float64(float32(58.395)) -> float32 -2.0151556; the single
    rounding of (6 - 123.675) / 58.395 in float64 gives -2.0151553 instead."""
    values = np.arange(256, dtype=np.uint8)
    rgb = np.stack([values, values[::-1], np.roll(values, 7)], axis=-1).reshape(16, 16, 3)
    got = normalize(rgb)
    assert got.dtype == np.float32 and got.shape == (1, 3, 16, 16)
    np.testing.assert_array_equal(got[0].transpose(1, 2, 0), _opencv_normalize(rgb))
    red6 = normalize(np.full((1, 1, 3), 6, np.uint8))[0, 0, 0, 0]
    assert red6 == np.float32(-2.0151556) != np.float32((6 - 123.675) / 58.395)
