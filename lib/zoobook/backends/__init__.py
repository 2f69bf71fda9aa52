"""Inference backends behind one small protocol (see :mod:`zoobook.backends.base`).

``get_backend("auto")`` picks Ascend only where ``ais_bench`` imports and a device answers,
else ONNX Runtime. Heavy imports happen inside each backend, never at package import.
"""

from __future__ import annotations

from zoobook.backends.base import Backend, Session

BACKENDS = ("torch", "onnxruntime", "ascend")


def get_backend(name: str = "auto", **options) -> Backend:
    """Return a backend instance by name (``auto``, ``torch``, ``onnxruntime``, ``ascend``)."""
    if name == "auto":
        from zoobook.backends.ascend import AscendBackend

        name = "ascend" if AscendBackend.available() else "onnxruntime"
    if name == "torch":
        from zoobook.backends.torch_backend import TorchBackend

        return TorchBackend(**options)
    if name == "onnxruntime":
        from zoobook.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(**options)
    if name == "ascend":
        from zoobook.backends.ascend import AscendBackend

        return AscendBackend(**options)
    raise ValueError(f"unknown backend {name!r}; choose one of auto, {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "Session", "get_backend"]
