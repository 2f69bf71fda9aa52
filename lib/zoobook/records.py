"""Stage records: one JSON file per model, profile and stage, written atomically.

A record holds model, stage, profile, backend, device, status, timings, parameters,
versions, git commit and provenance (weights and data), plus the stage's metrics and tables.
The book's summary is built from these files alone.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from zoobook.paths import model_run_dir, project_root, runs_dir

STATUSES = ("ok", "failed", "running")
_PACKAGES = ("zoobook", "torch", "numpy", "onnx", "onnxruntime", "onnxsim", "opencv-python-headless",
             "pycocotools", "papermill")


def record_path(profile: str, model: str, stage: str) -> Path:
    return model_run_dir(profile, model) / f"{stage}.json"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write bytes through a temporary file in the same folder and ``os.replace``: a reader
    sees the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write text atomically (see :func:`write_bytes_atomic`)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (see :func:`write_text_atomic`)."""
    return write_text_atomic(path, json.dumps(_jsonable(data), indent=1, sort_keys=False, allow_nan=True) + "\n")


def save_npz_atomic(path: str | Path, arrays: dict[str, np.ndarray], *, compressed: bool = False) -> Path:
    """``np.savez`` (or ``savez_compressed``) through a temporary file and ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        (np.savez_compressed if compressed else np.savez)(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def file_stamps(paths: dict[str, str]) -> dict[str, list]:
    """{name: [path, modification time in ns or None]}: part of a resume key, so that results
    made with a compiled model are not reused once it is rebuilt."""
    return {name: [str(path), Path(path).stat().st_mtime_ns if Path(path).exists() else None]
            for name, path in paths.items()}


def resumable_folder(folder: str | Path, key: Any, *, resume: bool, pattern: str) -> Path:
    """A folder of results that can be resumed. ``key`` says what the results depend on
    (inputs, weights, compiled model...); files matching ``pattern`` are removed unless
    ``resume`` is set and the key saved beside them (``key.json``) is the same."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key_file = folder / "key.json"
    stale = not key_file.is_file() or json.loads(key_file.read_text()) != json.loads(json.dumps(_jsonable(key)))
    if stale or not resume:
        for old in folder.glob(pattern):
            old.unlink()
    write_json_atomic(key_file, key)
    return folder


def generated_once(root: str | Path, meta: dict, generate) -> Path:
    """Call ``generate()`` to write a generated dataset under ``root`` unless it already holds
    one made with the same ``meta`` (parameters such as size and seed, kept beside it in
    ``zoobook-generator.json``); returns ``root``."""
    root = Path(root)
    meta_file = root / "zoobook-generator.json"
    if not meta_file.is_file() or json.loads(meta_file.read_text()) != json.loads(json.dumps(meta)):
        generate()
        write_json_atomic(meta_file, meta)
    return root


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
    from zoobook.backends.base import _cores, cpu_name

    return {"host_cpu": cpu_name(), "cores": _cores(), "memory_gib": memory_gib(), "platform": platform.platform()}


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


def read_record(profile: str, model: str, stage: str) -> dict | None:
    path = record_path(profile, model, stage)
    return json.loads(path.read_text()) if path.is_file() else None


def read_records(profile: str) -> list[dict]:
    """Every record of a profile, sorted by model and stage."""
    root = runs_dir() / profile
    records = []
    for path in sorted(root.glob("*/*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            records.append({"model": path.parent.name, "stage": path.stem, "profile": profile,
                            "status": "failed", "error": f"{path}: unreadable record ({err})"})
    return records


class StageRecorder:
    """Collects what a stage measured and writes its record at the end.

    ``rec = StageRecorder("yolact_edge", "02-export", profile, backend, params)``, then
    ``rec.provenance["weights"] = ...``, ``rec.metrics[...] = ...``, ``rec.tables[...] = rows``
    and finally ``rec.finish()``.

    Inside a notebook kernel, the newest recorder also watches the cells: when one raises an
    error that carries more than its message (a ``details()`` method, e.g. a checkpoint's
    full lists of missing and unexpected keys), it writes a failed record with those details
    at once, under ``error_details``; the runner keeps them when it records the failure.
    """

    def __init__(self, model: str, stage: str, profile: str, backend: str | None = None,
                 parameters: dict | None = None) -> None:
        if backend == "auto":
            from zoobook.backends import resolve

            backend = resolve("auto")
        self.model, self.stage, self.profile, self.backend = model, stage, profile, backend
        self.parameters = dict(parameters or {})
        self.started = dt.datetime.now(dt.timezone.utc)
        self._t0 = time.perf_counter()
        self.provenance: dict[str, Any] = {}
        self.metrics: dict[str, Any] = {}
        self.tables: dict[str, list[dict]] = {}
        self.device: dict[str, Any] = {}
        self.notes: list[str] = []
        self.error_details: dict[str, Any] | None = None
        _watch_cells(self)

    def finish(self, status: str = "ok", error: str | None = None) -> Path:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}")
        record = {
            "model": self.model, "stage": self.stage, "profile": self.profile, "backend": self.backend,
            "status": status, "error": error,
            "started": self.started.isoformat(timespec="seconds"),
            "duration_s": round(time.perf_counter() - self._t0, 2),
            "device": self.device, "machine": machine(), "parameters": self.parameters,
            "provenance": self.provenance, "metrics": self.metrics, "tables": self.tables,
            "notes": self.notes, "versions": versions(), "git_commit": git_commit(),
        }
        if self.error_details is not None:
            record["error_details"] = self.error_details
        return write_json_atomic(record_path(self.profile, self.model, self.stage), record)


_watched: list[StageRecorder] = []  # the kernel's newest recorder, once its cell hook is in place


def _watch_cells(recorder: StageRecorder) -> None:
    """In an IPython kernel, make ``recorder`` the one that :func:`_after_cell` reports to."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    if not _watched:
        shell.events.register("post_run_cell", _after_cell)
    _watched[:] = [recorder]


def _after_cell(result) -> None:
    """IPython's post_run_cell hook: a cell's error with ``details()`` -> a failed record."""
    error = getattr(result, "error_in_exec", None)
    details = getattr(error, "details", None)
    if _watched and callable(details):
        recorder = _watched[0]
        recorder.error_details = details()
        recorder.finish(status="failed", error=f"{type(error).__name__}: {error}")
