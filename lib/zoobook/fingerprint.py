"""Fingerprints: what a stage's result depends on, so that a rerun can be skipped when
nothing it depends on has changed, and a result says when it no longer holds.

A stage's fingerprint has parts, each compared on its own so that staleness has a reason:

- ``notebook``: the stage notebook's cells (type and source; outputs and metadata ignored);
- ``parameters``: the parameters injected into it;
- ``library``: the library's source (every file under ``lib/zoobook`` except the other models'
  packages), with the git commit and whether the tree was dirty kept beside it for reading;
- ``packages``: the versions of the packages a result depends on (:func:`~zoobook.machine.versions`);
- ``upstream``: the keys of the upstream stages' fingerprints;
- ``reads`` and ``inputs``: content hashes of the artifacts it read and of the project's
  data it read (a folder is hashed file by file; an absent one is recorded as absent);
- ``writes``: content hashes of what it wrote, checked to tell that its outputs are present
  and unchanged.

``key`` is the hash of all parts but ``writes``. Content hashes are SHA-256, cached per file
by size and modification time in ``runs/<profile>/<model>/.hashes.json``, so a second look
at unchanged files reads no file again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from zoobook.atomic import jsonable, write_json_atomic
from zoobook.paths import data_dir, project_root

ABSENT = "absent"
PARTS = ("notebook", "parameters", "library", "packages", "upstream", "inputs", "reads")


def digest_json(value: Any) -> str:
    """SHA-256 of ``value`` as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(jsonable(value), sort_keys=True).encode()).hexdigest()


class HashCache:
    """Content hashes of files, reused while a file keeps its size and modification time."""

    def __init__(self, path: Path | None = None, *, hashing: bool = True) -> None:
        """``hashing`` off: :meth:`tree` and :func:`globbed` only list files (hashes "")."""
        self.path, self.hashing = path, hashing
        self._entries: dict[str, list] = {}
        self._changed = False
        if path is not None and path.is_file():
            try:
                self._entries = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                self._entries = {}

    def file(self, path: Path) -> str:
        if not self.hashing:
            return ""
        stat = path.stat()
        key = str(path.resolve())
        entry = self._entries.get(key)
        if entry and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
            return entry[2]
        sha = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
        self._entries[key] = [stat.st_size, stat.st_mtime_ns, sha.hexdigest()]
        self._changed = True
        return sha.hexdigest()

    def tree(self, path: Path, base: Path) -> dict[str, str]:
        """{path relative to ``base``: hash} of a file, or of every file under a folder
        (hidden names skipped)."""
        if path.is_file():
            return {path.relative_to(base).as_posix(): self.file(path)}
        found = {}
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
            for name in sorted(files):
                if not name.startswith("."):
                    file = Path(root) / name
                    found[file.relative_to(base).as_posix()] = self.file(file)
        return found

    def save(self) -> None:
        if self.path is not None and self._changed:
            write_json_atomic(self.path, self._entries)
            self._changed = False


def globbed(base: Path, patterns: list[str] | tuple[str, ...], cache: HashCache) -> dict[str, str]:
    """{path relative to ``base``: hash} of everything ``patterns`` match under ``base``
    (folders they match are hashed file by file)."""
    found: dict[str, str] = {}
    for pattern in patterns:
        for path in sorted(base.glob(pattern)):
            if not path.name.startswith("."):
                found.update(cache.tree(path, base))
    return found


def inputs(paths: list[str] | tuple[str, ...], cache: HashCache) -> dict[str, Any]:
    """{project path: {file: hash} or "absent"} for the project's data a stage reads; a
    ``data/...`` path is looked up in the data folder (``ZOOBOOK_DATA``) first, then in the
    project (where the shipped samples are)."""
    root, found = project_root(), {}
    for path in paths:
        candidates = ([data_dir() / path.removeprefix("data/")] if path.startswith("data/") else []) + [root / path]
        where = next((c for c in candidates if c.exists()), None)
        found[path] = cache.tree(where, where.parent) if where else ABSENT
    return found


def notebook(path: Path) -> str:
    """Hash of a notebook's cells (type and source), so a notebook saved with outputs or
    other metadata keeps its hash."""
    cells = json.loads(path.read_text())["cells"]
    return digest_json([[c["cell_type"], "".join(c["source"])] for c in cells])


#: modules of the library that never run inside a stage: the runner's side, not the stages'
OUTSIDE_STAGES = ("book.py", "cli.py", "fingerprint.py", "parallel.py", "report.py", "runner.py")


def library(model: str, cache: HashCache) -> str:
    """Hash of the library's source as ``model``'s stages run it: everything under
    ``lib/zoobook`` but the other models' packages and :data:`OUTSIDE_STAGES`."""
    package = Path(__file__).resolve().parent
    models = package / "models"
    others = {p for p in models.iterdir() if p.is_dir() and p.name not in (model, "__pycache__")}
    files = {rel: sha for rel, sha in cache.tree(package, package).items()
             if rel not in OUTSIDE_STAGES and not any((package / rel).is_relative_to(o) for o in others)}
    return digest_json(files)


def key(parts: dict) -> str:
    return digest_json({name: parts[name] for name in PARTS})


def compare(recorded: dict | None, current: dict) -> str | None:
    """Why a recorded fingerprint no longer matches ``current`` (its parts, ``writes`` included),
    in words, or None when it does."""
    if not recorded:
        return "no fingerprint (run before fingerprints were kept, or outside the runner)"
    current = json.loads(json.dumps(jsonable(current)))  # as recorded: tuples are lists, keys strings
    for part in PARTS:
        old, new = recorded.get(part), current.get(part)
        if old != new:
            return f"{part} changed" + _detail(part, old, new)
    old, new = recorded.get("writes") or {}, current.get("writes") or {}
    missing = sorted(set(old) - set(new))
    if missing:
        return f"output missing: {_few(missing)}"
    changed = sorted(p for p in old if old[p] != new.get(p))
    if changed:
        return f"output changed: {_few(changed)}"
    return None


def _detail(part: str, old: Any, new: Any) -> str:
    if part in ("parameters", "packages", "upstream", "reads", "inputs") and isinstance(old, dict) \
            and isinstance(new, dict):
        names = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if part == "parameters":
            return ": " + ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in names[:4])
        return f": {_few(names)}"
    return ""


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")
