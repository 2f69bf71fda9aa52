"""The backend protocol: compile an ONNX file to an artifact, open a session on it, run a
dict of named numpy arrays, and report device time where the backend measures it."""

from __future__ import annotations

import platform
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np


class Session(ABC):
    """An open model. ``run`` takes and returns ``{name: np.ndarray}`` in graph order."""

    backend: str = "?"
    input_names: list[str]
    output_names: list[str]

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def device_times_ms(self, reset: bool = True) -> list[float] | None:
        """Per-call device compute times since the last reset, where the backend measures
        them (Ascend); ``None`` where device time is not separable from host time."""
        return None

    def close(self) -> None:
        pass

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Backend(ABC):
    name: str = "?"

    @classmethod
    def available(cls) -> bool:
        return True

    @classmethod
    def require_device(cls) -> None:
        """Raise an error saying what is missing where this backend's device is not usable."""

    @abstractmethod
    def compile(self, onnx_path: str | Path, out_dir: str | Path, *,
                input_shapes: dict[str, list[int]], name: str | None = None) -> Path:
        """Compile ``onnx_path`` for fixed ``input_shapes``; returns the artifact path."""

    @abstractmethod
    def open(self, artifact: Any) -> Session: ...

    def device(self) -> dict:
        """What runs the model, for records: never call a CPU an NPU."""
        return {"backend": self.name, "kind": "cpu", "name": cpu_name(), "cores": cpu_threads()}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_threads() -> int:
    """The CPUs this process may run on (its affinity where the OS says, else all)."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
