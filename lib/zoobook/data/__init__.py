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
