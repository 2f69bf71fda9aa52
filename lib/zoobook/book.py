"""Assemble the Jupyter Book (1.x) of one profile's run and build it.

The executed notebooks of ``runs/<profile>/<model>/`` are copied to ``book/<model>/`` (a
stage with no run gets a page saying so), ``book/summary.md`` is written from the records
alone, and ``jupyter-book build`` renders everything (``execute_notebooks: off``).
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
from zoobook.tables import markdown_table


def _placeholder(stage: str, profile: str, model: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(
        f"# {stage}\n\nThis stage has not been run in the `{profile}` profile. Run it with\n\n"
        f"```\nzoobook run {model} --stages {stage} --profile {profile}\n```")]
    return nb


def collect_notebooks(profile: str, root: Path) -> list[Path]:
    """Copy executed notebooks into ``<root>/book/<model>/``; returns the pages written."""
    pages = []
    for model in MODELS:
        target_dir = root / "book" / model
        target_dir.mkdir(parents=True, exist_ok=True)
        for stage in get_spec(model).stages:
            source = model_run_dir(profile, model) / f"{stage}.ipynb"
            target = target_dir / f"{stage}.ipynb"
            if source.is_file():
                shutil.copyfile(source, target)
            else:
                nbformat.write(_placeholder(stage, profile, model), target)
            pages.append(target)
    return pages


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
        if prov.get("data"):
            d = prov["data"]
            if "sequences" in d:
                count = f"{d['sequences']} sequences, {d.get('frames', '?')} frames"
            elif "videos_per_set" in d:
                count = f"{d['videos_per_set']} videos per dataset"
            else:
                count = f"{d.get('images_with_annotations', d.get('count', '?'))} images"
            data[(d.get("kind"), d.get("name"), count)] = f"**data**: {d.get('kind')} — {d.get('name')}, {count}"
    return [f"- {line}" for line in [*weights.values(), *data.values()]]


def _present(rows: list[dict], columns: list[str]) -> list[str]:
    """The columns of ``columns`` that some row has, in that order."""
    return [c for c in columns if any(c in r for r in rows)]


def summary_markdown(profile: str) -> str:
    records = read_records(profile)
    lines = [f"# Summary of the `{profile}` run", "",
             f"Built from the {len(records)} stage records under `runs/{profile}/` on "
             f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}; nothing on this page is typed in by hand. "
             "Published figures come from the porting guides and are labelled *published*; every other "
             "number was measured by this run, on the device named beside it.", ""]
    for model in MODELS:
        spec = get_spec(model)
        mine = {r["stage"]: r for r in records if r.get("model") == model}
        lines += [f"## {spec.title}", ""]
        if not mine:
            lines += ["No stage of this model has run in this profile.", ""]
            continue
        stage_rows = []
        for stage in spec.stages:
            r = mine.get(stage)
            if r is None:
                stage_rows.append({"stage": stage, "status": "not run"})
                continue
            device = r.get("device") or {}
            stage_rows.append({"stage": f"[{stage}]({model}/{stage}.ipynb)", "status": r["status"],
                               "backend": r.get("backend"),
                               "device": device.get("name") or (r.get("machine") or {}).get("host_cpu"),
                               "seconds": r.get("duration_s"), "error": (r.get("error") or "")[:200]})
        lines += [markdown_table(stage_rows, digits=1), "", *_provenance_lines(list(mine.values())), ""]
        for stage, title in (("02-export", "Export: ONNX Runtime against PyTorch"),
                             ("03-convert", "Convert: compiled model against ONNX")):
            rows = (mine.get(stage) or {}).get("tables", {}).get("parity")
            if rows:
                columns = ["graph", "output", "matched", "agreement", "differing_pixels", "cosine", "max_abs",
                           "rel_euclidean", "tolerance", "passed"]
                lines += [f"### {title}", "", markdown_table(rows, _present(rows, columns)), ""]
        training = (mine.get("00-train") or {}).get("tables", {})
        if training.get("throughput"):
            lines += ["### Training", "", markdown_table(training["throughput"], digits=3), ""]
            if training.get("published"):
                lines += ["Published (not measured here):", "", markdown_table(training["published"], digits=4), ""]
        accuracy = (mine.get("05-evaluate") or {}).get("tables", {}).get("accuracy")
        if accuracy:
            lines += ["### Accuracy: measured and published", "", markdown_table(accuracy), ""]
        agreement = (mine.get("05-evaluate") or {}).get("tables", {}).get("agreement")
        if agreement:
            lines += ["### Agreement with the PyTorch reference", "", markdown_table(agreement), ""]
        bench = (mine.get("06-benchmark") or {}).get("tables", {})
        if bench.get("graph"):
            isolated = any("rss_loaded_mb" in r for r in bench["graph"])
            how = "each candidate and batch size in a process of its own" if isolated else "candidates interleaved"
            lines += ["### Speed", "", f"Graph latency per call (one batch), warm-up excluded, {how}:", "",
                      markdown_table(bench["graph"], _present(bench["graph"], [
                          "graph", "candidate", "batch_size", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "throughput",
                          "gflop_per_s", "rss_loaded_mb", "peak_rss_mb"]), digits=2), ""]
        if bench.get("end_to_end"):
            lines += ["End to end per image at batch 1 (read, preprocess, graph, host post-processing):", "",
                      markdown_table(bench["end_to_end"], ["candidate", "mean_ms", "p50_ms", "p90_ms", "throughput"],
                                     digits=2), ""]
        if bench.get("host"):
            lines += ["Host side per image, outside the graph:", "",
                      markdown_table(bench["host"], ["candidate", "mean_ms", "p50_ms", "p90_ms"], digits=2), ""]
        if bench.get("tracker"):
            lines += ["Whole tracker per frame (crops, graphs, decoding, mask paste, contour):", "",
                      markdown_table(bench["tracker"], ["candidate", "mean_ms", "p50_ms", "p90_ms", "fps"], digits=2), ""]
        for key in ("speedup", "derived"):
            if bench.get(key):
                lines += ["Derived from the rows above:", "", markdown_table(bench[key], digits=2), ""]
        if bench.get("failures"):
            lines += ["Runs that did not finish:", "", markdown_table(bench["failures"]), ""]
        if bench.get("published"):
            lines += ["Published (not measured here):", "", markdown_table(bench["published"], digits=2), ""]
    return "\n".join(lines)


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
    (root / "book" / "summary.md").write_text(summary_markdown(profile))
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
