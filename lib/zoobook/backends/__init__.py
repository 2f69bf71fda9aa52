"""Inference backends behind one small protocol (see :mod:`zoobook.backends.base`).

``get_backend("auto")`` picks Ascend only where ``ais_bench`` imports and a device answers,
else ONNX Runtime; ``get_backend("ascend")`` where either fails is an error saying which.
Heavy imports happen inside each backend, never at package import.
"""

from __future__ import annotations

from zoobook.backends.base import Backend, Session

BACKENDS = ("torch", "onnxruntime", "ascend")


def get_backend(name: str = "auto", **options) -> Backend:
    """Return a backend instance by name (``auto``, ``torch``, ``onnxruntime``, ``ascend``).

    ``ascend`` checks first that ``ais_bench`` imports and ``npu-smi`` answers (the stages
    compile and then run the graph), else an ``AscendError`` says which failed and why;
    ``AscendBackend(soc_version=...)`` itself can still compile on a machine without an NPU.
    """
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
        from zoobook.backends.ascend import AscendBackend, require_npu

        require_npu()
        return AscendBackend(**options)
    raise ValueError(f"unknown backend {name!r}; choose one of auto, {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "Session", "backend_options", "get_backend", "resolve"]


def resolve(name: str) -> str:
    """The backend ``name`` stands for (``auto`` -> ``ascend`` or ``onnxruntime``)."""
    return get_backend(name).name if name == "auto" else name


def backend_options(name: str, *, soc_version: str | None = None, precision_mode: str | None = None,
                    device_id: int = 0, ort_optimization: str | None = None, threads: int | None = None) -> dict:
    """The constructor options that matter to ``name`` (notebook parameters -> backend)."""
    if name == "auto":
        from zoobook.backends.ascend import AscendBackend

        name = "ascend" if AscendBackend.available() else "onnxruntime"
    if name == "ascend":
        return {k: v for k, v in {"soc_version": soc_version, "precision_mode": precision_mode,
                                  "device_id": device_id}.items() if v is not None}
    if name == "onnxruntime":
        return {k: v for k, v in {"compile_optimization": ort_optimization, "threads": threads}.items() if v is not None}
    return {"threads": threads} if threads else {}
