"""Small helpers to show lists of dict rows as tables in notebooks."""

from __future__ import annotations

from IPython.display import Markdown


def _fmt(value, digits: int) -> str:
    if isinstance(value, bool):
        return "✔" if value else "✘"
    if isinstance(value, float):
        if value != value:
            return "–"
        if value and (abs(value) < 10 ** -digits or abs(value) >= 1e6):
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)):
        return "×".join(str(v) for v in value)
    return "" if value is None else str(value).replace("|", "\\|")


def markdown_table(rows: list[dict], columns: list[str] | None = None, digits: int = 4) -> str:
    if not rows:
        return "_(no rows)_"
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c), digits) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def show_table(rows: list[dict], columns: list[str] | None = None, digits: int = 4) -> Markdown:
    return Markdown(markdown_table(rows, columns, digits))
