"""Assemble the Jupyter Book (1.x) of one profile's run and build it.

The executed notebooks of ``runs/<profile>/<model>/`` are copied to ``book/<model>/`` (a
stage with no run gets a page saying so), ``book/summary.md`` is written from the records
alone, and ``jupyter-book build`` renders everything (``execute_notebooks: off``).

The summary shows, per model, the tables its spec declares
(:attr:`~zoobook.stages.spec.ModelSpec.sections`) and nothing else: each under its title and
note, with its kind's columns and digits, after checking its rows against the kind's
contract (:data:`~zoobook.stages.spec.SECTION_KINDS`).
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

from zoobook.models import MODELS, get_spec
from zoobook.paths import model_run_dir, project_root, runs_dir
from zoobook.records import read_records
from zoobook.stages.spec import ModelSpec, Section
from zoobook.tables import markdown_table


def _title(model: str, stage: str) -> str:
    """The stage notebook's own title (its first heading), so every page is named alike."""
    from zoobook.runner import notebook_path

    source = notebook_path(model, stage)
    if source.is_file():
        for cell in nbformat.read(source, as_version=4).cells:
            for line in cell.source.splitlines():
                if cell.cell_type == "markdown" and line.startswith("# "):
                    return line
    return f"# {stage}"


def _verdict(state) -> str:
    """The line a page starts with when its result is not simply ok."""
    return f"**State: {state.state}**" + (f": {state.reason}" if state.reason else "")


def _placeholder(model: str, state, profile: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    action = {"running": "It is running now.", "blocked": "It did not run: an upstream stage is not ok."}
    nb.cells = [nbformat.v4.new_markdown_cell(
        f"{_title(model, state.stage)}\n\n{_verdict(state)}\n\n{action.get(state.state, '')} "
        f"This stage has no executed notebook in the `{profile}` profile. Run it with\n\n"
        f"```\nzoobook run {model} --stages {state.stage} --profile {profile}\n```")]
    return nb


def collect_notebooks(profile: str, root: Path) -> list[Path]:
    """Copy executed notebooks into ``<root>/book/<model>/``; returns the pages. A page whose
    stage is not ok starts with its state and why (stale, failed, interrupted); a stage with
    no executed notebook, or blocked, or running, gets a page titled like the others saying
    so. A page is rewritten only when it changes, so the book builds incrementally."""
    from zoobook.runner import stage_states

    pages = []
    for model in MODELS:
        target_dir = root / "book" / model
        target_dir.mkdir(parents=True, exist_ok=True)
        for state in stage_states(model, profile):
            source = model_run_dir(profile, model) / f"{state.stage}.ipynb"
            target = target_dir / f"{state.stage}.ipynb"
            if source.is_file() and state.state not in ("not run", "blocked", "running"):
                nb = nbformat.read(source, as_version=4)
                if state.state != "ok":
                    nb.cells.insert(0, nbformat.v4.new_markdown_cell(_verdict(state)))
            else:
                nb = _placeholder(model, state, profile)
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


def build_book(profile: str = "default", root: str | Path | None = None) -> Path:
    """Collect notebooks, write the summary, run ``jupyter-book build``; returns index.html.

    ``root`` holds ``_config.yml``, ``_toc.yml`` and ``book/`` (default: the project root)."""
    root = Path(root) if root else project_root()
    collect_notebooks(profile, root)
    _write_if_changed(root / "book" / "summary.md", summary_markdown(profile))
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
