"""What lets work be skipped when it was already done with the same inputs: resume keys of
result folders and datasets generated once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zoobook.atomic import jsonable, write_json_atomic


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
    stale = not key_file.is_file() or json.loads(key_file.read_text()) != json.loads(json.dumps(jsonable(key)))
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
