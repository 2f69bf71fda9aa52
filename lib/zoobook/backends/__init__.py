"""Inference backends behind one small protocol (see :mod:`zoobook.backends.base`).

``get_backend("auto")`` picks Ascend only where ``ais_bench`` imports and a device answers,
else ONNX Runtime; ``get_backend("ascend")`` where either fails is an error saying which.
Heavy imports happen inside each backend, never at package import.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from zoobook.backends.base import Backend, Session


@dataclass(frozen=True)
class BackendInfo:
    """A registered backend and what it can do, so that callers ask for a capability instead
    of comparing names.

    ``compiles``: it has a compile step that turns the ONNX graph into an artifact of its own
    (ONNX Runtime's optimised graph, ATC's ``.om``); the PyTorch reference runs the module.
    ``static_batch``: a compiled artifact takes exactly the batch it was compiled for.
    ``precision``: the arithmetic it is expected to run in ("fp32", or "fp16" for an NPU
    compiled with ATC's default), which sets how closely it should match the ONNX graph.
    ``device_time``: it reports device compute time apart from host time. ``reference``: it
    is the PyTorch reference every other backend is compared with. ``needs_device``: it runs
    only where its accelerator answers. ``compiler``: the tool its compile step is (a model
    may have to rewrite its graph for one, as RetinaMask's port does for ATC). ``runs_onnx``:
    it can also open an exported ONNX file that was not compiled. ``options``: notebook
    parameter -> constructor option, for the parameters this backend takes. ``emulates``: it
    rewrites the exported graph to mimic a device's arithmetic on the CPU (the fp16 emulation),
    so the per-operator locator can run it itself.
    ``cls``: "module:Class", imported on first use.
    """

    name: str
    cls: str
    compiles: bool
    static_batch: bool
    precision: str
    device_time: bool
    reference: bool = False
    needs_device: bool = False
    compiler: str | None = None
    runs_onnx: bool = False
    options: tuple[tuple[str, str], ...] = ()
    emulates: bool = False

    def load(self) -> type[Backend]:
        module, _, attr = self.cls.partition(":")
        return getattr(importlib.import_module(module), attr)


REGISTRY: dict[str, BackendInfo] = {info.name: info for info in (
    BackendInfo("torch", "zoobook.backends.torch_backend:TorchBackend", compiles=False, static_batch=False,
                precision="fp32", device_time=False, reference=True, options=(("threads", "threads"),)),
    BackendInfo("onnxruntime", "zoobook.backends.onnxruntime_backend:OnnxRuntimeBackend", compiles=True,
                static_batch=False, precision="fp32", device_time=False, compiler="onnxruntime", runs_onnx=True,
                options=(("ort_optimization", "compile_optimization"), ("threads", "threads"))),
    BackendInfo("onnxruntime-fp16", "zoobook.backends.fp16:Fp16EmulationBackend", compiles=True, static_batch=False,
                precision="fp16", device_time=False, compiler="onnxruntime", runs_onnx=False, emulates=True,
                options=(("precision_mode", "precision_mode"), ("keep_dtype", "keep_dtype"), ("threads", "threads"))),
    BackendInfo("ascend", "zoobook.backends.ascend:AscendBackend", compiles=True, static_batch=True,
                precision="fp16", device_time=True, needs_device=True, compiler="atc",
                options=(("soc_version", "soc_version"), ("precision_mode", "precision_mode"),
                         ("device_id", "device_id"))),
)}
BACKENDS = tuple(REGISTRY)  # the names, in the order the CLI offers them
EMBEDDED_DEFAULT = "onnxruntime"  # what ``auto`` means where no accelerator answers
REFERENCE = next(info.name for info in REGISTRY.values() if info.reference)
#: the candidate that emulates an accelerator's fp16 storage on the CPU (03-convert checks it beside the backend)
FP16_EMULATION = next(info.name for info in REGISTRY.values() if info.emulates)


def with_reference(backend: str, reference: bool = True) -> list[str]:
    """The candidates a stage scores: ``backend``, then the PyTorch reference where asked for
    and not ``backend`` itself."""
    return [backend] + ([REFERENCE] if reference and backend != REFERENCE else [])


def benchmark_candidates(backend: str) -> list[str]:
    """What a benchmark times side by side: the reference, the embedded default, and
    ``backend`` where it is neither."""
    return [REFERENCE, EMBEDDED_DEFAULT] + ([backend] if backend not in (REFERENCE, EMBEDDED_DEFAULT) else [])


def capabilities(name: str) -> BackendInfo:
    """The registry entry of ``name`` (``auto`` resolved first); a clear error for a typo."""
    name = resolve(name)
    if name not in REGISTRY:
        raise ValueError(f"unknown backend {name!r}; choose one of auto, {', '.join(BACKENDS)}")
    return REGISTRY[name]


def _auto() -> str:
    """The first registered backend that needs a device and has one, else the embedded default."""
    for info in REGISTRY.values():
        if info.needs_device and info.load().available():
            return info.name
    return EMBEDDED_DEFAULT


def get_backend(name: str = "auto", **options) -> Backend:
    """Return a backend instance by name (``auto`` or a :data:`REGISTRY` name).

    A backend that needs a device checks first that it is usable (for ``ascend``: that
    ``ais_bench`` imports and ``npu-smi`` answers), else its error says which failed and why;
    ``AscendBackend(soc_version=...)`` itself can still compile on a machine without an NPU.
    """
    info = capabilities(name)
    backend = info.load()
    if info.needs_device:
        backend.require_device()
    return backend(**options)


__all__ = ["BACKENDS", "EMBEDDED_DEFAULT", "FP16_EMULATION", "REFERENCE", "REGISTRY", "Backend", "BackendInfo", "Session",
           "backend_options", "benchmark_candidates", "capabilities", "get_backend", "resolve", "with_reference"]


def resolve(name: str) -> str:
    """The backend ``name`` stands for (``auto`` -> ``ascend`` where an NPU answers, else
    ``onnxruntime``)."""
    return _auto() if name == "auto" else name


def backend_options(name: str, **parameters) -> dict:
    """The constructor options of backend ``name`` from notebook parameters (those it takes,
    per its registry entry; None and unknown parameters left out)."""
    info = capabilities(name)
    return {option: parameters[param] for param, option in info.options
            if parameters.get(param) is not None and (param != "threads" or parameters[param])}
