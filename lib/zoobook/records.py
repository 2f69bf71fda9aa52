"""Stage records: one JSON file per model, profile and stage, written atomically
(:mod:`zoobook.atomic`; machine facts from :mod:`zoobook.machine`).

A record holds model, stage, profile, backend, device, status, timings, parameters,
versions, git commit and provenance (weights and data), plus the stage's metrics and tables.
The book's summary is built from these files alone.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

from zoobook.atomic import write_json_atomic
from zoobook.machine import git_commit, machine, versions
from zoobook.paths import model_run_dir, runs_dir

#: what a record's ``status`` may say (see :mod:`zoobook.runner` for each one's meaning)
STATUSES = ("ok", "failed", "running", "interrupted", "blocked")


def record_path(profile: str, model: str, stage: str) -> Path:
    return model_run_dir(profile, model) / f"{stage}.json"


def read_record(profile: str, model: str, stage: str) -> dict | None:
    path = record_path(profile, model, stage)
    return json.loads(path.read_text()) if path.is_file() else None


def read_records(profile: str) -> list[dict]:
    """Every record of a profile, sorted by model and stage."""
    root = runs_dir() / profile
    records = []
    for path in sorted(p for p in root.glob("*/*.json") if not p.name.startswith(".")):
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
                 parameters: dict | None = None, *, check: bool = True) -> None:
        if check:  # bad values stop the notebook here, before any work
            from zoobook.params import check_values

            check_values(model, stage, dict(parameters or {}))
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

    def finish(self, status: str = "ok", error: str | None = None, **extra: Any) -> Path:
        """Write the record; ``extra`` adds fields (the runner's ``host`` and ``pid`` of a
        running stage, ``notes``, ``error_details``) where they are not None."""
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
        record.update({k: v for k, v in extra.items() if v is not None})
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
