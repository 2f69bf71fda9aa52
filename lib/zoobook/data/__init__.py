"""Dataset readers (real formats) and generators that write small sets in the same formats."""

from __future__ import annotations

import json
from pathlib import Path


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
