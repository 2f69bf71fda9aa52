"""Dataset readers (real formats) and generators that write small sets in the same formats."""

from __future__ import annotations

import json
from pathlib import Path


def half_present(missing: Path, what: str, present: str, root: Path, remedy: str) -> FileNotFoundError:
    """The error for a real dataset found by halves under ``data/``: ``missing`` (``what``) is
    not there though ``present`` says what is. A user who dropped half of a set meant to use
    it, so this is never a reason to fall back on the generated set; ``remedy`` says how to
    complete it, and moving ``root`` aside gets the generated set back."""
    return FileNotFoundError(f"{missing}: {what} not found, though {present}; {remedy}, or move {root} aside to "
                             "use the generated set (where the profile allows one)")


def read_json(path: str | Path, what: str, error: type[ValueError]):
    """Parse a dataset's JSON file; a missing file or malformed JSON is an error naming the
    file (and the line and column), ``what`` saying which file it should have been."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise error(f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}") from err


def shown_path(path: str | Path) -> str:
    """``path`` as a record or a page may show it, with no folder of this machine in it: under
    the runs folder ``runs/...``, under the data folder ``data/...``, under the project root
    relative to it; any other path unchanged. :func:`resolve_shown` turns it back into the
    path on the machine that reads it (the runs and data folders may live elsewhere there)."""
    from zoobook.paths import data_dir, project_root, runs_dir

    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    for base, shown in ((runs_dir(), "runs"), (data_dir(), "data"), (project_root(), "")):
        for form in (Path(base), Path(base).resolve()):
            try:
                rest = path.relative_to(form)
            except ValueError:
                continue
            return (Path(shown) / rest).as_posix() if shown else (rest.as_posix() or ".")
    return str(path)


def resolve_shown(text: str | Path) -> Path:
    """The path :func:`shown_path` wrote as ``text``, on this machine: ``runs/...`` under the
    runs folder, ``data/...`` under the data folder, another relative path under the project
    root; an absolute path as it is (records written before paths were shown relative)."""
    from zoobook.paths import data_dir, project_root, runs_dir

    path = Path(text)
    if path.is_absolute():
        return path
    head, *rest = path.parts or (".",)
    if head == "runs":
        return runs_dir().joinpath(*rest)
    if head == "data":
        return data_dir().joinpath(*rest)
    return project_root() / path
