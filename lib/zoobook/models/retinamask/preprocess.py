"""RetinaMask input: the port's (long side to 1344, padded square) and the original's
(short side 800, long side at most 1333, padded to a multiple of 32). Both PIL-bilinear on
uint8 RGB, BGR channel order, minus the BGR mean, no scaling (std 1), zero padding after
the normalisation (so a pad pixel is the mean colour). They subtract the mean in different
precisions: the port takes a float32 image minus the mean as a Python list, which NumPy
computes in float64 and stores as float32; the original (torchvision ``F.normalize``)
subtracts a float32 mean in float32. On integer pixel values the two differ by 1 ulp for
128 of the 256 values of each channel."""

from __future__ import annotations

import numpy as np
from PIL import Image

from zoobook.timing import timed

PIXEL_MEAN_BGR = np.array([102.9801, 115.9465, 122.7717], dtype=np.float64)
PORT_SIZE = 1344
MIN_SIZE, MAX_SIZE, DIVISIBILITY = 800, 1333, 32


def port_resize(rgb: np.ndarray, size: int = PORT_SIZE) -> tuple[np.ndarray, float]:
    """uint8 RGB -> (resized uint8 RGB with long side ``size``, ratio = size / long side)."""
    with timed("preprocess"):
        height, width = rgb.shape[:2]
        ratio = size / max(height, width)
        new = (min(int(width * ratio), size), min(int(height * ratio), size))
        return np.asarray(Image.fromarray(rgb).resize(new, Image.BILINEAR)), ratio


#: the port's value of each uint8 pixel value per channel, BGR: float32(float32(v) - mean),
#: the subtraction in float64 as the port's (see :func:`port_tensor`)
PORT_LUT_BGR = (np.arange(256, dtype=np.float32)[None, :] - PIXEL_MEAN_BGR[:, None]).astype(np.float32)


def port_tensor(resized_rgb: np.ndarray, size: int = PORT_SIZE) -> np.ndarray:
    """Resized uint8 RGB [h, w, 3] -> float32 [1, 3, size, size]: BGR minus the mean
    (float32 image - float64 mean, computed in float64, stored float32), zero-padded
    bottom/right. A uint8 RGB image is looked up in :data:`PORT_LUT_BGR` (the same values)
    and written straight into its channel planes; anything else takes the computation itself."""
    with timed("preprocess"):
        height, width = resized_rgb.shape[:2]
        out = np.zeros((1, 3, size, size), np.float32)
        if resized_rgb.dtype != np.uint8 or resized_rgb.shape[2:] != (3,):
            bgr = (resized_rgb[:, :, ::-1].astype(np.float32) - PIXEL_MEAN_BGR).astype(np.float32)
            out[0, :, :height, :width] = bgr.transpose(2, 0, 1)
            return out
        for channel in range(3):  # B, G, R planes from the R, G, B of the image
            np.take(PORT_LUT_BGR[channel], resized_rgb[:, :, 2 - channel], out=out[0, channel, :height, :width],
                    mode="clip")  # uint8 indices are always in range; NumPy buffers ``out`` only under "raise"
        return out


def original_size(height: int, width: int) -> tuple[int, int]:
    """maskrcnn-benchmark's test size (h, w): short side 800 unless the long side would pass 1333."""
    size = MIN_SIZE
    short, long = float(min(height, width)), float(max(height, width))
    if long / short * size > MAX_SIZE:
        size = int(round(MAX_SIZE * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def original_normalize(resized_rgb: np.ndarray) -> np.ndarray:
    """Resized uint8 RGB [h, w, 3] -> float32 [1, 3, H32, W32] (h, w rounded up to a multiple
    of 32): ToTensor (/255) then x255 in BGR (the reference's float32 round trip), minus the
    float32 mean in float32, zero-padded bottom/right."""
    h, w = resized_rgb.shape[:2]
    scaled = (resized_rgb.astype(np.float32) / np.float32(255))[:, :, ::-1] * np.float32(255)
    scaled = scaled - PIXEL_MEAN_BGR.astype(np.float32)
    ph, pw = -(-h // DIVISIBILITY) * DIVISIBILITY, -(-w // DIVISIBILITY) * DIVISIBILITY
    out = np.zeros((1, 3, ph, pw), np.float32)
    out[0, :, :h, :w] = scaled.transpose(2, 0, 1)
    return out


def original_tensor(rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """uint8 RGB [H, W, 3] -> (float32 [1, 3, H32, W32], resized (h, w)): the test-size PIL
    bilinear resize, then :func:`original_normalize`."""
    h, w = original_size(*rgb.shape[:2])
    resized = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
    return original_normalize(resized), (h, w)
