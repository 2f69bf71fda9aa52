"""Assemble the Jupyter Book (1.x) of one profile's run and build it.

The executed notebooks of ``runs/<profile>/<model>/`` are copied to ``book/<model>/`` (a
stage with no run gets a page saying so), ``book/summary.md`` is written from the records
alone, and ``jupyter-book build`` renders everything (``execute_notebooks: off``).

The copies are made for reading (:func:`collect_notebooks`), the run's own files are never
changed: each page starts with its verdict (ok and the stage's key figure, or its state and
why) and a download of the stage's record, copied beside it; the plumbing cells (parameters,
imports, the recorder) are folded behind a toggle; images are re-encoded smaller; and no
absolute path of the building machine is shown (runs, data, project, temporary and home
folders are written relative). Wide tables scroll in their box (``book/_static/zoobook.css``).

The summary shows, per model, the tables its spec declares
(:attr:`~zoobook.stages.spec.ModelSpec.sections`) and nothing else: each under its title and
note, with its kind's columns and digits, after checking its rows against the kind's
contract (:data:`~zoobook.stages.spec.SECTION_KINDS`).
"""

from __future__ import annotations

import ast
import base64
import datetime as dt
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

from zoobook.models import MODELS, get_spec
from zoobook.paths import model_run_dir, project_root, runs_dir
from zoobook.records import read_records
from zoobook.stages.spec import ModelSpec, Section
from zoobook.tables import markdown_table


def _title(model: str, stage: str) -> str:
    """The stage notebook's own title (its first heading), so every page is named alike; where
    the notebook cannot be read, the same pattern from the model's spec ("# SiamMask · 05 ·
    Evaluate"), never the bare stage name."""
    from zoobook.runner import notebook_path

    source = notebook_path(model, stage)
    if source.is_file():
        for cell in nbformat.read(source, as_version=4).cells:
            for line in cell.source.splitlines():
                if cell.cell_type == "markdown" and line.startswith("# "):
                    return line
    number, _, name = stage.partition("-")
    return f"# {get_spec(model).title.split(' (')[0]} · {number} · {name.replace('-', ' ').capitalize() or stage}"


# ---------------------------------------------------------------------------------------
# The line a stage page starts with


def _number(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if value != value:
        return "NaN"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _escape(text: str) -> str:
    """``text`` (an error message, a reason, a figure) as literal Markdown on one line, its
    paths made relative (:func:`_relative_paths`)."""
    text = " ".join(_relative_paths(str(text)).split())
    return re.sub(r"([\\`*_\[\]<>{}$|#~])", r"\\\1", text)


def _rows(record: dict, table: str) -> list[dict]:
    rows = (record.get("tables") or {}).get(table)
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def _train_figure(record: dict) -> str | None:
    """00-train: the final loss of each run (``final_loss_<N>p``)."""
    losses = [(k[len("final_loss_"):].rstrip("p"), v) for k, v in (record.get("metrics") or {}).items()
              if k.startswith("final_loss_")]
    if not losses:
        return None
    return "final loss " + ", ".join(f"{_number(v)} ({n} process{'es' if n != '1' else ''})" for n, v in losses)


def _data_figure(record: dict) -> str | None:
    """01-data: the data's provenance, as the summary names it."""
    data = (record.get("provenance") or {}).get("data")
    if not data:
        return None
    count = ", ".join(text.format(data[key]) for key, text in DATA_COUNTS if key in data)
    return f"{data.get('kind')} data: {data.get('name')}" + (f", {count}" if count else "")


def _parity_figure(record: dict) -> str | None:
    """02-export, 03-convert: parity passed or failed, with the largest ``max_abs`` (the lowest
    ``agreement`` for class maps)."""
    rows = _rows(record, "parity")
    passed = (record.get("metrics") or {}).get("parity_passed")
    if not rows and passed is None:
        return None
    if passed is None:
        passed = all(r.get("passed") for r in rows)
    failing = sum(1 for r in rows if r.get("passed") is False)
    text = f"parity {'passed' if passed else 'failed'}" + (
        f" on {len(rows)} outputs" if passed or not failing else f" on {failing} of {len(rows)} outputs")
    max_abs = [r["max_abs"] for r in rows if isinstance(r.get("max_abs"), (int, float))]
    agreement = [r["agreement"] for r in rows if isinstance(r.get("agreement"), (int, float))]
    if max_abs:
        text += f", largest max_abs {max(max_abs):.3g}"
    elif agreement:
        text += f", lowest agreement {min(agreement):.6g}"
    return text


def _infer_figure(record: dict) -> str | None:
    """04-infer: how many items it ran (or the tracker's frames per second per candidate)."""
    metrics = record.get("metrics") or {}
    if isinstance(metrics.get("items"), int):
        done = [f"{metrics[k]} {k}" for k in ("computed", "skipped") if isinstance(metrics.get(k), int)]
        return f"{metrics['items']} items" + (f" ({', '.join(done)})" if done else "")
    fps = [(k[:-len("_fps")], v) for k, v in metrics.items() if k.endswith("_fps") and isinstance(v, (int, float))]
    if fps:
        return "tracked at " + ", ".join(f"{name} {_number(v)} FPS" for name, v in fps)
    return None


#: columns of an accuracy row that say what was measured, not how well
_ACCURACY_LABELS = ("source", "backend", "candidate", "weights", "data", "conventions", "failures", "frames")


def _evaluate_figure(record: dict) -> str | None:
    """05-evaluate: the first measured row of ``tables.accuracy``, its first three task metrics."""
    for row in _rows(record, "accuracy"):
        if row.get("source") != "measured":
            continue
        metrics = [(k, v) for k, v in row.items() if k not in _ACCURACY_LABELS
                   and isinstance(v, (int, float)) and not isinstance(v, bool)][:3]
        if metrics:
            who = row.get("backend") or row.get("candidate") or "measured"
            return f"{who}: " + ", ".join(f"{k} {_number(v)}" for k, v in metrics)
    return None


def _benchmark_figure(record: dict) -> str | None:
    """06-benchmark: the row of ``tables.graph`` with the best throughput."""
    rows = [r for r in _rows(record, "graph") if isinstance(r.get("throughput"), (int, float))]
    if not rows:
        return None
    best = max(rows, key=lambda r: r["throughput"])
    where = ", ".join(part for part in (str(best.get("candidate") or ""),
                                        f"{best['graph']} graph" if best.get("graph") else "",
                                        f"batch {best['batch_size']}" if best.get("batch_size") else "") if part)
    mean = f", mean {best['mean_ms']:.3g} ms" if isinstance(best.get("mean_ms"), (int, float)) else ""
    return f"best throughput {_number(best['throughput'])}/s ({where}{mean})"


#: the key figure of each stage kind (the stage's name after its number)
KEY_FIGURES = {"train": _train_figure, "data": _data_figure, "export": _parity_figure, "convert": _parity_figure,
               "infer": _infer_figure, "evaluate": _evaluate_figure, "benchmark": _benchmark_figure}


def key_figure(record: dict | None) -> str:
    """A stage's key figure from its record (:data:`KEY_FIGURES`, by the stage's kind); its
    duration where the rule finds nothing."""
    if not record:
        return ""
    rule = KEY_FIGURES.get(str(record.get("stage", "")).partition("-")[2])
    try:
        figure = rule(record) if rule else None
    except (TypeError, ValueError, KeyError):  # a record written by another version
        figure = None
    if figure:
        return figure
    seconds = record.get("duration_s")
    return f"ran in {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""


def _verdict(state) -> str:
    """The one line a stage page starts with: ``**ok**: <key figure>``, ``**failed**: <the
    error's first line>``, ``**stale**: <why>; last result: <key figure>``, and likewise for
    interrupted, blocked, running and not run."""
    record = state.record
    if state.state == "ok":
        detail = _escape(key_figure(record)) + (f" ({_escape(state.reason)})" if state.reason else "")
    elif state.state in ("failed", "interrupted", "blocked"):
        first = next((line for line in (state.reason or "").splitlines() if line.strip()), "")
        detail = _escape(first)
    elif state.state == "stale":
        figure = key_figure(record) if record and record.get("status") == "ok" else ""
        detail = _escape(state.reason) + (f"; last result: {_escape(figure)}" if figure else "")
    else:
        detail = _escape(state.reason)
    return f"**{state.state}**" + (f": {detail}" if detail else "")


def _record_line(stage: str) -> str:
    """The download of the stage's record, copied beside its page (the page's own download
    button offers the executed notebook)."""
    return f"The stage's record: {{download}}`{stage}.json`; the executed notebook: the page's download button."


def _placeholder(model: str, state, profile: str, record_copied: bool = False) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    action = {"running": "It is running now.", "blocked": "It did not run: an upstream stage is not ok."}
    command = f"zoobook run {model} --stages {state.stage} --profile {profile}"
    nb.cells = [nbformat.v4.new_markdown_cell(_title(model, state.stage)),
                nbformat.v4.new_markdown_cell(
                    f"{_verdict(state)}\n\n" + (f"{_record_line(state.stage)}\n\n" if record_copied else "")
                    + f"{action.get(state.state, '')} This stage has no executed notebook in the `{profile}` "
                    f"profile. Run it with\n\n```\n{command}\n```")]
    return nb


# ---------------------------------------------------------------------------------------
# Cells the book folds away


#: papermill's tags: the notebook's defaults and the values the run injected
PARAMETER_TAGS = ("parameters", "injected-parameters")
#: tags that already say how a cell is shown; such a cell is left as it is
SHOWN_AS = ("hide-input", "hide-output", "hide-cell", "remove-input", "remove-output", "remove-cell")


def _called(node: ast.AST) -> str | None:
    """The name a call calls: ``f(...)`` -> f, ``a.b.f(...)`` -> f."""
    func = node.func if isinstance(node, ast.Call) else None
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _recorders(nb: nbformat.NotebookNode) -> set[str]:
    """The names a notebook binds to a ``StageRecorder(...)``."""
    names = set()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and _called(node.value) == "StageRecorder":
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def is_plumbing(cell, recorders: set[str] = frozenset({"rec"})) -> bool:
    """Whether a code cell is the notebook's plumbing, not its result: papermill's
    ``parameters`` or ``injected-parameters`` cell; a cell whose statements are all imports; a
    cell that constructs the ``StageRecorder`` (the setup: imports, ``open_run``, the recorder);
    a cell that finishes it (``rec.finish()``: what goes into the record, then the record
    written). Every other cell, the calls that produce the results, stays in view."""
    if cell.cell_type != "code":
        return False
    if set(cell.metadata.get("tags", [])) & set(PARAMETER_TAGS):
        return True
    try:
        tree = ast.parse(cell.source)
    except SyntaxError:  # IPython magics: not plumbing by this rule
        return False
    if tree.body and all(isinstance(s, (ast.Import, ast.ImportFrom)) for s in tree.body):
        return True
    for node in ast.walk(tree):
        if _called(node) == "StageRecorder":
            return True
        if (_called(node) == "finish" and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id in recorders):
            return True
    return False


def _has_output(cell) -> bool:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error" or (out.get("output_type") == "stream" and out.get("text", "").strip()):
            return True
        if out.get("output_type") in ("display_data", "execute_result") and out.get("data"):
            return True
    return False


def hide_plumbing(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Fold the plumbing cells (:func:`is_plumbing`) behind Jupyter Book's toggle: ``hide-input``
    where the cell shows something (its output stays in view: the resolved backend, the device,
    an error), ``hide-cell`` where it shows nothing. Cells already tagged with a way to be
    shown keep it. Returns ``nb``, changed in place."""
    recorders = _recorders(nb) or {"rec"}
    for cell in nb.cells:
        tags = list(cell.metadata.get("tags", []))
        if set(tags) & set(SHOWN_AS) or not is_plumbing(cell, recorders):
            continue
        cell.metadata["tags"] = [*tags, "hide-input" if _has_output(cell) else "hide-cell"]
    return nb


def _insert_after_title(nb: nbformat.NotebookNode, cell) -> None:
    """``cell`` right after the notebook's title (its first Markdown cell starting with '# ')."""
    for k, existing in enumerate(nb.cells):
        if existing.cell_type == "markdown" and existing.source.lstrip().startswith("# "):
            nb.cells.insert(k + 1, cell)
            return
    nb.cells.insert(0, cell)


# ---------------------------------------------------------------------------------------
# No path of the building machine in a page


#: a base64 data URI inside a text output (an animation in HTML): never rewritten
_DATA_URI = re.compile(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]*")


def _path_prefixes() -> dict[str, str]:
    """Absolute folders of the building machine and what a page says instead: the runs folder
    ``runs``, the data folder ``data``, the project root ``.``, the temporary folder ``{tmp}``,
    the home folder ``~`` (each as given and resolved)."""
    from zoobook.paths import data_dir

    pairs = [(runs_dir(), "runs"), (data_dir(), "data"), (project_root(), "."),
             (Path(tempfile.gettempdir()), "{tmp}"), (Path.home(), "~")]
    prefixes: dict[str, str] = {}
    for path, shown in pairs:
        for form in (str(path), str(Path(path).resolve())):
            form = form.rstrip("/")
            if form and form != "/" and form not in prefixes:
                prefixes[form] = shown
    return prefixes


def _relative_paths(text: str, prefixes: dict[str, str] | None = None) -> str:
    """``text`` with every absolute path under :func:`_path_prefixes` made relative: a prefix
    counts where it starts a path (after a quote, a space, a colour code, ...) and ends at a
    path separator or the path's end; base64 data URIs are left alone."""
    prefixes = _path_prefixes() if prefixes is None else prefixes
    if not any(p in text for p in prefixes):
        return text
    names = "|".join(re.escape(p) for p in sorted(prefixes, key=len, reverse=True))
    pattern = re.compile(rf"(^|[^\w.+\-/~]|\x1b\[[0-9;]*m)({names})(/(?=[\w.~{{-])|(?![\w.\-]))")

    def shown(match: re.Match) -> str:
        pre, path, slash = match.groups()
        replacement = prefixes[path]
        if replacement == ".":
            return pre + ("" if slash else ".")
        return pre + replacement + slash

    parts, last = [], 0
    for uri in _DATA_URI.finditer(text):
        parts += [pattern.sub(shown, text[last:uri.start()]), uri.group(0)]
        last = uri.end()
    return "".join(parts + [pattern.sub(shown, text[last:])])


def _relative_everywhere(value, prefixes: dict[str, str]):
    """``value`` (a notebook or a record as JSON) with :func:`_relative_paths` applied to every
    string but image data."""
    if isinstance(value, str):
        return _relative_paths(value, prefixes)
    if isinstance(value, list):
        return [_relative_everywhere(v, prefixes) for v in value]
    if isinstance(value, dict):
        return {k: v if str(k).startswith("image/") else _relative_everywhere(v, prefixes) for k, v in value.items()}
    return value


def _copy_record(record: dict, target: Path) -> None:
    """The stage's record, paths made relative, beside its page (the page links it)."""
    text = json.dumps(_relative_everywhere(record, _path_prefixes()), indent=2, ensure_ascii=False) + "\n"
    _write_if_changed(target, text)


# ---------------------------------------------------------------------------------------
# Images small enough for a book


#: longest side of an image in a page (about twice the width of the text column)
MAX_SIDE = 1800
#: more distinct colours than this: a photograph (JPEG); fewer: a plot or a diagram (256-colour PNG)
PHOTO_COLOURS = 4096
JPEG_QUALITY = 85
WEBP_QUALITY = 80


def shrink_image(data: bytes) -> tuple[str, bytes]:
    """A PNG (or JPEG) as a smaller file for the book: ``(mime, bytes)``. Downscaled to
    :data:`MAX_SIDE`; then a photograph (more than :data:`PHOTO_COLOURS` colours, no
    transparency: sample grids, tracked frames) as JPEG at :data:`JPEG_QUALITY`, anything else
    (plots) quantised to a 256-colour PNG. The original is kept where that is not smaller."""
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception:  # noqa: BLE001 - not an image Pillow reads: leave it
        return "", data
    original = "image/" + (image.format or "png").lower()
    if getattr(image, "n_frames", 1) > 1:
        return original, data
    if max(image.size) > MAX_SIDE:
        scale = MAX_SIDE / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.LANCZOS)
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if "transparency" in image.info or image.mode in ("LA", "PA") else "RGB")
    opaque = image.mode == "RGB" or image.getchannel("A").getextrema()[0] == 255
    out = io.BytesIO()
    if opaque and image.getcolors(PHOTO_COLOURS) is None:
        image.convert("RGB").save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
        mime = "image/jpeg"
    else:
        image = image.convert("RGB") if opaque else image  # median cut keeps white white; RGBA needs octree
        method = Image.Quantize.MEDIANCUT if opaque else Image.Quantize.FASTOCTREE
        image.quantize(256, method=method, dither=Image.Dither.NONE).save(out, "PNG", optimize=True)
        mime = "image/png"
    return (mime, out.getvalue()) if out.tell() < len(data) else (original, data)


def shrink_animation(data: bytes) -> tuple[str, bytes]:
    """An animated GIF as an animated WebP (:data:`WEBP_QUALITY`, same frames and timing) where
    that is smaller; else the GIF."""
    from PIL import Image, ImageSequence, features

    if not features.check("webp"):
        return "image/gif", data
    try:
        gif = Image.open(io.BytesIO(data))
        frames = [frame.convert("RGB") for frame in ImageSequence.Iterator(gif)]
        durations = [frame.info.get("duration", 100) for frame in ImageSequence.Iterator(gif)]
        out = io.BytesIO()
        frames[0].save(out, "WEBP", save_all=True, append_images=frames[1:], duration=durations,
                       loop=gif.info.get("loop", 0), quality=WEBP_QUALITY, method=4)
    except Exception:  # noqa: BLE001 - an animation Pillow cannot rewrite: leave it
        return "image/gif", data
    return ("image/webp", out.getvalue()) if out.tell() < len(data) else ("image/gif", data)


_HTML_IMAGE = re.compile(r"data:(image/(?:png|gif));base64,([A-Za-z0-9+/=]+)")


def _shrink_html(html: str) -> str:
    def smaller(match: re.Match) -> str:
        mime, data = match.group(1), base64.b64decode(match.group(2))
        new_mime, new = (shrink_animation if mime == "image/gif" else shrink_image)(data)
        return match.group(0) if new is data else f"data:{new_mime};base64,{base64.b64encode(new).decode('ascii')}"

    return _HTML_IMAGE.sub(smaller, html)


def shrink_outputs(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Every PNG output (:func:`shrink_image`) and every image embedded in an HTML output (a
    GIF animation: :func:`shrink_animation`) made smaller; changed in place, returns ``nb``."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data") or {}
            if isinstance(data.get("image/png"), str):
                mime, new = shrink_image(base64.b64decode(data["image/png"]))
                if mime and mime != "image/png":
                    del data["image/png"]
                    meta = out.get("metadata") or {}
                    if "image/png" in meta:
                        meta[mime] = meta.pop("image/png")
                if mime:
                    data[mime] = base64.b64encode(new).decode("ascii")
            html = data.get("text/html")
            if isinstance(html, list):
                html = "".join(html)
            if isinstance(html, str) and "base64," in html:
                data["text/html"] = _shrink_html(html)
    return nb


# ---------------------------------------------------------------------------------------
# The pages


def book_notebook(source: Path, state) -> nbformat.NotebookNode:
    """A stage's executed notebook as its page shows it: plumbing folded
    (:func:`hide_plumbing`), the verdict and the record's download right after the title,
    images made smaller (:func:`shrink_outputs`), no absolute path of this machine."""
    nb = hide_plumbing(shrink_outputs(nbformat.read(source, as_version=4)))
    lines = [_verdict(state)] + ([_record_line(state.stage)] if state.record else [])
    _insert_after_title(nb, nbformat.v4.new_markdown_cell("\n\n".join(lines)))
    return nbformat.from_dict(_relative_everywhere(nb, _path_prefixes()))


def collect_notebooks(profile: str, root: Path) -> list[Path]:
    """Copy executed notebooks into ``<root>/book/<model>/`` (:func:`book_notebook`), each
    stage's record beside its page (``<stage>.json``, paths made relative); returns the pages.
    Every page starts, right after its title, with the stage's verdict (:func:`_verdict`): ok
    and its key figure, or its state and why (stale, failed, interrupted); a stage with no
    executed notebook, or blocked, or running, gets a page titled like the others saying so.
    A page is rewritten only when it changes, so the book builds incrementally."""
    from zoobook.runner import stage_states

    pages = []
    for model in MODELS:
        target_dir = root / "book" / model
        target_dir.mkdir(parents=True, exist_ok=True)
        for state in stage_states(model, profile):
            source = model_run_dir(profile, model) / f"{state.stage}.ipynb"
            target = target_dir / f"{state.stage}.ipynb"
            record_copy = target_dir / f"{state.stage}.json"
            if state.record:
                _copy_record(state.record, record_copy)
            else:
                record_copy.unlink(missing_ok=True)
            if source.is_file() and state.state not in ("not run", "blocked", "running"):
                nb = book_notebook(source, state)
            else:
                nb = _placeholder(model, state, profile, record_copied=bool(state.record))
            _write_if_changed(target, nbformat.writes(nb))
            pages.append(target)
    return pages


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


#: how a dataset's provenance states its size: the keys each dataset reader uses, in order
#: (VOT: sequences; crop511: videos per set; COCO: annotated images; Cityscapes: count)
DATA_COUNTS = (("sequences", "{} sequences"), ("frames", "{} frames"), ("videos_per_set", "{} videos per dataset"),
               ("images_with_annotations", "{} images"), ("count", "{} images"))


def _provenance_lines(records: list[dict]) -> list[str]:
    """One line per distinct weights and data provenance found in a model's records."""
    weights, data = {}, {}
    for r in records:
        prov = r.get("provenance") or {}
        for w in (prov.get("weights"), prov.get("trained_weights")):
            if w:
                weights[(w.get("kind"), w.get("sha256"))] = (
                    f"**weights**: {w.get('kind')}" + (f", sha256 `{w['sha256'][:16]}`" if w.get("sha256") else "")
                    + (f" — {w['note']}" if w.get("note") else ""))
        d = prov.get("data")
        if d:
            count = ", ".join(text.format(d[key]) for key, text in DATA_COUNTS if key in d)
            line = f"**data**: {d.get('kind')} — {d.get('name')}" + (f", {count}" if count else "")
            data[line] = line
    return [f"- {line}" for line in [*weights.values(), *data.values()]]


def section_markdown(section: Section, rows: list[dict]) -> list[str]:
    """``section`` of a record as book lines: its title, its note, and the table with its
    kind's columns and digits; a table that breaks the contract (rows that are not records,
    or lack a required column) gets a one-line error in its place."""
    lines = [f"### {section.title}", ""] + ([section.note, ""] if section.note else [])
    try:
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"table {section.table!r} of {section.stage} is not a list of rows")
        section.check(rows)
    except ValueError as err:
        return lines + [f"**Not shown, the table breaks its contract**: {err}", ""]
    return lines + [markdown_table(rows, section.columns(rows), digits=section.decimals), ""]


def _stage_rows(spec: ModelSpec, records: dict[str, dict], profile: str) -> list[dict]:
    """One row per stage: its state (:func:`zoobook.runner.stage_states`) and why, where it ran."""
    from zoobook.runner import stage_states

    rows = []
    for state in stage_states(spec.name, profile):
        r = records.get(state.stage) or {}
        device = (r.get("device") or {}).get("name") or (r.get("machine") or {}).get("host_cpu")
        rows.append({"stage": f"[{state.stage}]({spec.name}/{state.stage}.ipynb)", "state": state.state,
                     "backend": r.get("backend"), "device": device, "seconds": r.get("duration_s"),
                     "why": state.reason[:200]})
    return rows


def model_markdown(spec: ModelSpec, records: dict[str, dict], profile: str = "default") -> list[str]:
    """One model's part of the summary from its records (``{stage: record}``): the stages'
    status, the provenance, then the sections its spec declares, in the spec's order (those
    its records hold rows for). Tables a record holds that no section declares are named,
    not shown."""
    lines = [f"## {spec.title}", ""]
    if not records:
        return lines + ["No stage of this model has run in this profile.", ""]
    lines += [markdown_table(_stage_rows(spec, records, profile), digits=1), "",
              *_provenance_lines(list(records.values())), ""]
    for section in spec.sections:
        rows = ((records.get(section.stage) or {}).get("tables") or {}).get(section.table)
        if rows:
            lines += section_markdown(section, rows)
    declared = {(s.stage, s.table) for s in spec.sections}
    undeclared = [f"`{stage}` `{table}`" for stage, r in records.items() for table in (r.get("tables") or {})
                  if (stage, table) not in declared]
    if undeclared:
        lines += [f"Recorded but declared by no section of the model's spec, so not shown: {', '.join(undeclared)}.",
                  ""]
    return lines


def summary_markdown(profile: str) -> str:
    records = read_records(profile)
    lines = [f"# Summary of the `{profile}` run", "",
             f"Built from the {len(records)} stage records under `runs/{profile}/` on "
             f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}; nothing on this page is typed in by hand. "
             "Published figures come from the porting guides and are labelled *published*; every other "
             "number was measured by this run, on the device named beside it.", ""]
    lines += time_markdown(records)
    for model in MODELS:
        lines += model_markdown(get_spec(model), {r["stage"]: r for r in records if r.get("model") == model}, profile)
    return "\n".join(lines)


def time_markdown(records: list[dict], slowest: int = 8) -> list[str]:
    """Where the run's time went: each model's stage seconds and total, and the ``slowest``
    stages of all, so the next slow stage is plain to see."""
    timed = [r for r in records if isinstance(r.get("duration_s"), (int, float))]
    if not timed:
        return []
    totals: dict[str, float] = {}
    for r in timed:
        totals[r["model"]] = totals.get(r["model"], 0.0) + r["duration_s"]
    whole = sum(totals.values()) or 1.0  # records of stages that took no time at all
    per_model = [{"model": m, "stages": sum(r["model"] == m for r in timed), "seconds": t,
                  "share (%)": 100 * t / whole} for m, t in totals.items()]
    per_model.append({"model": "all", "stages": len(timed), "seconds": sum(totals.values()), "share (%)": 100.0})
    top = sorted(timed, key=lambda r: -r["duration_s"])[:slowest]
    rows = [{"stage": f"{r['model']} {r['stage']}", "seconds": r["duration_s"], "status": r.get("status")} for r in top]
    return ["## Where the run's time went", "",
            "Seconds of each stage's last run as recorded (a stage skipped as up to date keeps the time of the run "
            "that made it).", "", markdown_table(per_model, digits=1), "", f"The {len(rows)} slowest stages:", "",
            markdown_table(rows, digits=1), ""]


def jupyter_book_executable() -> str:
    local = Path(sys.executable).parent / "jupyter-book"
    found = str(local) if local.is_file() else shutil.which("jupyter-book")
    if not found:
        raise RuntimeError("jupyter-book (1.x) is not installed in this environment")
    return found


def build_book(profile: str = "default", root: str | Path | None = None, compare: str | Path | None = None) -> Path:
    """Collect notebooks, write the matrix, the summary and the comparison page, run
    ``jupyter-book build``; returns index.html.

    ``root`` holds ``_config.yml``, ``_toc.yml`` and ``book/`` (default: the project root).
    ``compare``: a run to set beside this one (a profile or a run folder, see
    :class:`zoobook.report.RunFolder`); the comparison page reads it as A and this run as B."""
    from zoobook.report import RunFolder, compare_markdown, matrix_markdown, no_comparison_markdown

    root = Path(root) if root else project_root()
    collect_notebooks(profile, root)
    _write_if_changed(root / "book" / "matrix.md", matrix_markdown(profile))
    _write_if_changed(root / "book" / "summary.md", summary_markdown(profile))
    comparison = (compare_markdown(RunFolder.open(compare), RunFolder.open(runs_dir() / profile, profile))[0]
                  if compare else no_comparison_markdown())
    _write_if_changed(root / "book" / "compare.md", comparison)
    (runs_dir() / profile).mkdir(parents=True, exist_ok=True)
    done = subprocess.run([jupyter_book_executable(), "build", str(root), "--path-output", str(root)],
                          capture_output=True, text=True)
    log = root / "_build" / "jupyter-book.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(done.stdout + done.stderr)
    index = root / "_build" / "html" / "index.html"
    if done.returncode != 0 or not index.is_file():
        raise RuntimeError(f"jupyter-book build failed ({done.returncode}); see {log}\n{done.stderr[-3000:]}")
    return index
