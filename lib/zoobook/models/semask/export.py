"""SeMask-FPN's port graph: input ``image`` [bs, 3, H, W] (RGB normalised with the ImageNet
mean and std on the 0-255 scale), output ``output`` the class map int64 [bs, H, W] (the
arg-max is inside the graph, as the port's). One static graph per batch size; the port's
size is 1024 x 2048, smaller sizes (multiples of 32) serve quick runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from zoobook.export import export_onnx
from zoobook.models.semask.network import SeMaskFPN

PORT_SIZE = (1024, 2048)
MEAN_RGB = np.array([123.675, 116.28, 103.53])
STD_RGB = np.array([58.395, 57.12, 57.375])


def normalize(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] (or [B, H, W, 3]) -> float32 NCHW, (x - mean) / std computed in
    float64 and cast, as mmseg's Normalize does on the 0-255 scale."""
    batch = rgb[None] if rgb.ndim == 3 else rgb
    x = ((batch.astype(np.float64) - MEAN_RGB) / STD_RGB).astype(np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def graph_shapes(batch_size: int, size: tuple[int, int] = PORT_SIZE) -> dict[str, dict[str, list[int]]]:
    return {"inputs": {"image": [batch_size, 3, *size]}, "outputs": {"output": [batch_size, *size]}}


def export_graph(model: SeMaskFPN, path: str | Path, *, batch_size: int = 1, size: tuple[int, int] = PORT_SIZE,
                 opset: int = 11) -> dict:
    """Export the class-map graph at a static batch size and input size."""
    if size[0] % 32 or size[1] % 32:
        raise ValueError(f"input size {size} must be a multiple of 32 on both sides")
    example = torch.zeros(batch_size, 3, *size)
    return export_onnx(model.eval(), (example,), path, input_names=["image"], output_names=["output"], opset=opset,
                       dynamic_batch=False)
