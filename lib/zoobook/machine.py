"""Facts about the machine and the software a stage ran with, for its record."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata

from zoobook.paths import project_root

_PACKAGES = ("zoobook", "torch", "numpy", "onnx", "onnxruntime", "onnxsim", "opencv-python-headless",
             "pycocotools", "papermill")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=project_root(),
                              capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=project_root(),
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired, RuntimeError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def machine() -> dict:
    from zoobook.backends.base import cpu_name, cpu_threads

    return {"host_cpu": cpu_name(), "cores": cpu_threads(), "memory_gib": memory_gib(), "platform": platform.platform()}


def memory_gib() -> float | None:
    """The machine's memory (``MemTotal`` of ``/proc/meminfo``), None off Linux."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None
