"""SeMask-FPN's port graph: input ``image`` [bs, 3, H, W] (RGB normalised with the ImageNet
mean and std on the 0-255 scale), output ``output`` the class map int64 [bs, H, W] (the
arg-max is inside the graph, as the port's). One static graph per batch size; the port's
size is 1024 x 2048, smaller sizes (multiples of 32) serve quick runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from zoobook.export import export_onnx, pin_batches
from zoobook.models.semask.network import SeMaskFPN

PORT_SIZE = (1024, 2048)
#: mmseg's Normalize stores them as float32
MEAN_RGB = np.array([123.675, 116.28, 103.53], np.float32)
STD_RGB = np.array([58.395, 57.12, 57.375], np.float32)


def normalize(rgb: np.ndarray, *, to_rgb: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 RGB [H, W, 3] (or [B, H, W, 3]) -> float32 NCHW on the 0-255 scale, bit for bit
    as mmseg's Normalize (mmcv ``imnormalize``): OpenCV subtracts the float32 mean in float64
    and stores float32, then multiplies by 1 / std (float64 of the float32 std) in float64
    and stores float32. Two roundings, and a reciprocal rather than a division.

    ``to_rgb=True``: the image is BGR (as ``cv2.imread`` gives it) and is taken as RGB, as
    mmseg's ``Normalize(to_rgb=True)``. ``out``: a float32 [B, 3, H, W] array to write into
    (returned); by default a new one.

    The result depends only on each value and its channel, so uint8 images go through a
    256-entry table per channel, computed with the arithmetic above (exact by construction);
    other dtypes are computed directly."""
    from zoobook.data.images import lookup_planes

    def mmseg(values: np.ndarray) -> np.ndarray:  # [..., 3] in RGB order -> float32, OpenCV's two steps
        centred = (values.astype(np.float64) - MEAN_RGB.astype(np.float64)).astype(np.float32)
        return (centred.astype(np.float64) * (1 / STD_RGB.astype(np.float64))).astype(np.float32)

    batch = rgb[None] if rgb.ndim == 3 else rgb
    channels = (2, 1, 0) if to_rgb else (0, 1, 2)
    if out is None:
        out = np.empty((batch.shape[0], 3, *batch.shape[1:3]), np.float32)
    if batch.dtype != np.uint8:
        out[:] = mmseg(batch[..., list(channels)]).transpose(0, 3, 1, 2)
        return out
    tables = np.ascontiguousarray(mmseg(np.arange(256)[:, None]).T)  # [3, 256]: R, G, B
    for image, planes in zip(batch, out):
        lookup_planes(image, tables, planes, channels)
    return out


def graph_shapes(batch_size: int, size: tuple[int, int] = PORT_SIZE) -> dict[str, dict[str, list[int]]]:
    return {"inputs": {"image": [batch_size, 3, *size]}, "outputs": {"output": [batch_size, *size]}}


def export_graphs(model: SeMaskFPN, folder: str | Path, *, batch_sizes: list[int] = (1, 4, 8),
                  size: tuple[int, int] = PORT_SIZE, opset: int = 11, stem: str = "semask") -> dict[int, dict]:
    """The port's class-map graphs, one static graph per batch size, ``<stem>_bs<N>.onnx``.

    The port traces once per batch size; tracing batch 8 at 1024 x 2048 needs more than 24 GB
    of host memory. So the model is traced once at batch 1 with a dynamic batch axis
    (``<stem>_dynamic.onnx``) and each static graph is that graph with its batch pinned and
    simplified again (:func:`zoobook.export.pin_batches`): the same graph a trace at that batch
    gives, its shape arithmetic folded."""
    if size[0] % 32 or size[1] % 32:
        raise ValueError(f"input size {size} must be a multiple of 32 on both sides")
    folder = Path(folder)
    dynamic = folder / f"{stem}_dynamic.onnx"
    traced = export_onnx(model.eval(), (torch.zeros(1, 3, *size),), dynamic, input_names=["image"],
                         output_names=["output"], opset=opset, dynamic_batch=True)
    pinned = pin_batches(dynamic, {bs: folder / f"{stem}_bs{bs}.onnx" for bs in batch_sizes})
    dynamic.unlink()
    return {bs: {**pinned[bs], "opset": opset, "nodes_traced": traced["nodes_raw"], "traced_batch": 1}
            for bs in batch_sizes}
