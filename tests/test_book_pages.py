"""The stage pages of the book as a reader gets them (lib/zoobook/book.py): plumbing cells
folded, a one-line verdict and the record's download after the title, images made small, no
absolute path of the building machine, every page titled like the others. Fast tests work on
the committed notebooks and on a made-up run; one test builds the book from the smoke run."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image

from zoobook import book
from zoobook.models import MODELS, get_spec
from zoobook.paths import project_root, runs_dir
from zoobook.runner import StageState, notebook_path

from .conftest import run_smoke

ROOT = Path(__file__).resolve().parents[1]


def _committed(model: str, stage: str) -> nbformat.NotebookNode:
    return nbformat.read(notebook_path(model, stage), as_version=4)


def _tags(cell) -> list[str]:
    return list(cell.metadata.get("tags", []))


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _photo(width: int = 1500, height: int = 400, seed: int = 0) -> Image.Image:
    """A noisy colour gradient with a few shapes: what the sample grids look like."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, width)[None, :, None]
    y = np.linspace(0, 1, height)[:, None, None]
    base = np.concatenate([200 * x + 30 * y, 120 + 80 * y + 0 * x, 220 - 150 * x + 0 * y], axis=2)
    noisy = base + rng.normal(0, 12, (height, width, 3))
    noisy[100:200, 300:500] = (60, 140, 90)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def _plot(width: int = 640, height: int = 390) -> Image.Image:
    """A plot-like image: white, a few coloured lines, RGBA as matplotlib writes it."""
    image = Image.new("RGBA", (width, height), (255, 255, 255, 255))
    pixels = image.load()
    for k, colour in enumerate([(31, 119, 180, 255), (255, 127, 14, 255), (44, 160, 44, 255)]):
        for i in range(40, width - 40):
            j = int(height / 2 + (k + 1) * 30 * np.sin(i / 40))
            for d in range(2):
                pixels[i, j + d] = colour
    return image


# ---------------------------------------------------------------------------------------
# Plumbing folded away, results in view


@pytest.mark.parametrize("model,stage", [(m, s) for m in MODELS for s in get_spec(m).stages])
def test_the_committed_notebooks_plumbing_cells_are_the_ones_folded(model, stage):
    """Folded: the parameters cell, the setup cell that constructs the recorder, the cell that
    finishes it. In view: every other code cell (the calls that produce the results)."""
    nb = book.hide_plumbing(_committed(model, stage))
    for cell in nb.cells:
        if cell.cell_type != "code":
            assert not _tags(cell) or not set(_tags(cell)) & set(book.SHOWN_AS)
            continue
        plumbing = ("parameters" in _tags(cell) or "StageRecorder(" in cell.source or "rec.finish(" in cell.source
                    or all(line.startswith(("from ", "import ")) for line in cell.source.splitlines() if line))
        hidden = [t for t in _tags(cell) if t in book.SHOWN_AS]
        assert hidden == (["hide-cell"] if plumbing else []), (model, stage, cell.source[:200])
    folded = [c for c in nb.cells if "hide-cell" in _tags(c)]
    assert len(folded) == 3, (model, stage)  # parameters, setup, finish
    assert any("StageRecorder(" in c.source for c in folded) and any("rec.finish(" in c.source for c in folded)


def test_a_plumbing_cell_with_output_keeps_the_output_in_view():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Model · 01 · Data"),
        nbformat.v4.new_code_cell("profile = 'smoke'\n", metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_code_cell("import json\nfrom pathlib import Path"),
        nbformat.v4.new_code_cell("recorder = StageRecorder('m', '01-data', profile)\nbackend", outputs=[
            nbformat.v4.new_output("execute_result", {"text/plain": "'onnxruntime'"}, execution_count=1)]),
        nbformat.v4.new_code_cell("result = steps.run(recorder)\nshow_table(result)"),
        nbformat.v4.new_code_cell("%time recorder.finish()"),  # a magic: not Python, left in view
        nbformat.v4.new_code_cell("recorder.finish()", metadata={"tags": ["remove-input"]}),
        nbformat.v4.new_code_cell("recorder.metrics['x'] = 1\nrecorder.finish()", outputs=[
            nbformat.v4.new_output("error", ename="AssertionError", evalue="", traceback=["boom"])]),
        nbformat.v4.new_code_cell("other.finish()"),  # not the recorder
    ]
    book.hide_plumbing(nb)
    assert [[t for t in _tags(c) if t in book.SHOWN_AS] for c in nb.cells] == [
        [], ["hide-cell"], ["hide-cell"], ["hide-input"], [], [], ["remove-input"], ["hide-input"], []]


# ---------------------------------------------------------------------------------------
# The verdict line


def _record(stage: str, **fields) -> dict:
    return {"model": "yolact_edge", "stage": stage, "status": "ok", "duration_s": 12.34, **fields}


PARITY = [{"output": "a", "max_abs": 2e-6, "passed": True}, {"output": "b", "max_abs": 3.5e-4, "passed": True}]


@pytest.mark.parametrize("record,line", [
    (_record("02-export", metrics={"parity_passed": True}, tables={"parity": PARITY}),
     "**ok**: parity passed on 2 outputs, largest max\\_abs 0.00035"),
    (_record("03-convert", metrics={"parity_passed": False},
             tables={"parity": [PARITY[0], {**PARITY[1], "passed": False}]}),
     "**ok**: parity failed on 1 of 2 outputs, largest max\\_abs 0.00035"),
    (_record("03-convert", tables={"parity": [{"graph": "bs1", "agreement": 0.99995, "passed": True}]}),
     "**ok**: parity passed on 1 outputs, lowest agreement 0.99995"),
    (_record("05-evaluate", tables={"accuracy": [
        {"source": "published", "backend": "Ascend", "bbox mAP": None, "segm mAP": 27.96},
        {"source": "measured", "backend": "onnxruntime", "bbox mAP": 31.25, "segm mAP": 28.5, "weights": "recipe"},
        {"source": "measured", "backend": "torch", "bbox mAP": 31.0, "segm mAP": 28.0}]}),
     "**ok**: onnxruntime: bbox mAP 31.25, segm mAP 28.5"),
    (_record("06-benchmark", tables={"graph": [
        {"candidate": "torch", "batch_size": 1, "throughput": 1.5, "mean_ms": 660.0},
        {"candidate": "onnxruntime", "batch_size": 2, "throughput": 2.153, "mean_ms": 929.0},
        {"candidate": "onnxruntime", "batch_size": 1, "throughput": 2.12, "mean_ms": 470.0}]}),
     "**ok**: best throughput 2.153/s (onnxruntime, batch 2, mean 929 ms)"),
    (_record("01-data", provenance={"data": {"kind": "synthetic", "name": "generated COCO-format set",
                                             "images_with_annotations": 3}}),
     "**ok**: synthetic data: generated COCO-format set, 3 images"),
    (_record("00-train", metrics={"final_loss_1p": 30.349, "final_loss_2p": 30.16, "handed_over": "x"}),
     "**ok**: final loss 30.35 (1 process), 30.16 (2 processes)"),
    (_record("04-infer", metrics={"items": 24, "computed": 20, "skipped": 4}),
     "**ok**: 24 items (20 computed, 4 skipped)"),
    (_record("04-infer", metrics={"onnxruntime_fps": 11.537, "torch_fps": 10.5}),
     "**ok**: tracked at onnxruntime 11.54 FPS, torch 10.5 FPS"),
    (_record("05-evaluate", tables={}), "**ok**: ran in 12.3 s"),  # nothing to go by: the duration
])
def test_an_ok_page_starts_with_ok_and_its_key_figure(record, line):
    assert book._verdict(StageState("yolact_edge", record["stage"], "ok", "", record)) == line


def test_a_failed_page_starts_with_failed_and_the_first_line_of_the_error():
    error = (f"\nFileNotFoundError: {runs_dir()}/smoke/datasets/x/*.json not found\n"
             f"Traceback (most recent call last):\n  File \"{project_root()}/lib/zoobook/x.py\"")
    record = _record("05-evaluate", status="failed", error=error)
    assert book._verdict(StageState("yolact_edge", "05-evaluate", "failed", error, record)) == (
        "**failed**: FileNotFoundError: runs/smoke/datasets/x/\\*.json not found")


def test_other_states_read_alike():
    record = _record("02-export", metrics={"parity_passed": True}, tables={"parity": PARITY})
    assert book._verdict(StageState("yolact_edge", "02-export", "stale", "upstream 01-data is stale", record)) == (
        "**stale**: upstream 01-data is stale; last result: parity passed on 2 outputs, largest max\\_abs 0.00035")
    assert book._verdict(StageState("yolact_edge", "02-export", "interrupted", "its process is gone", record)) == (
        "**interrupted**: its process is gone")
    assert book._verdict(StageState("yolact_edge", "02-export", "not run")) == "**not run**"


# ---------------------------------------------------------------------------------------
# Titles of pages with no executed notebook


@pytest.mark.parametrize("model", MODELS)
def test_a_stage_that_has_not_run_or_is_running_has_a_page_titled_like_the_others(model):
    for stage in get_spec(model).stages:
        title = next(line for c in _committed(model, stage).cells if c.cell_type == "markdown"
                     for line in c.source.splitlines() if line.startswith("# "))
        for state in ("not run", "running", "blocked"):
            nb = book._placeholder(model, StageState(model, stage, state), "smoke")
            assert nb.cells[0].source == title and nb.cells[0].source != f"# {stage}"
            assert nb.cells[1].source.startswith(f"**{state}**")


def test_a_placeholder_with_no_notebook_to_read_is_still_titled(monkeypatch, tmp_path):
    monkeypatch.setattr("zoobook.runner.notebook_path", lambda model, stage: tmp_path / "absent.ipynb")
    assert book._title("siammask", "05-evaluate") == "# SiamMask · 05 · Evaluate"
    assert book._title("semask", "01-data") == "# SeMask-FPN · 01 · Data"


# ---------------------------------------------------------------------------------------
# Paths and images


def test_paths_are_shown_relative_and_read_back():
    from zoobook.data import resolve_shown, shown_path
    from zoobook.paths import data_dir

    for path, shown in [(runs_dir() / "smoke" / "datasets" / "x", "runs/smoke/datasets/x"),
                        (data_dir() / "coco" / "a.json", "data/coco/a.json"),
                        (project_root() / "lib" / "zoobook", "lib/zoobook"), (Path("/usr/lib/x"), "/usr/lib/x")]:
        assert shown_path(path) == shown
        assert resolve_shown(shown) == path


def test_absolute_prefixes_are_rewritten_where_a_path_starts_and_nowhere_else():
    prefixes = {"/work/proj/runs": "runs", "/work/proj": ".", "/tmp": "{tmp}"}
    text = ("'/work/proj/runs/smoke/a.onnx' \x1b[32m/work/proj/lib/x.py\x1b[0m /work/proj /work/project/x "
            "/tmp/pytest-1/b /tmpfile x/tmp/y data:image/png;base64,AB/tmp/CD+/work/proj/E= /tmp")
    assert book._relative_paths(text, prefixes) == (
        "'runs/smoke/a.onnx' \x1b[32mlib/x.py\x1b[0m . /work/project/x "
        "{tmp}/pytest-1/b /tmpfile x/tmp/y data:image/png;base64,AB/tmp/CD+/work/proj/E= {tmp}")


def test_a_photograph_becomes_a_small_jpeg_and_a_plot_a_small_png():
    photo = _png(_photo())
    mime, small = book.shrink_image(photo)
    assert mime == "image/jpeg" and len(small) < len(photo) / 4 and len(small) < 200_000
    plot = _png(_plot())
    mime, small = book.shrink_image(plot)
    assert mime == "image/png" and len(small) < len(plot)
    shrunk = Image.open(io.BytesIO(small)).convert("RGB")
    assert shrunk.getpixel((0, 0)) == (255, 255, 255)  # white stays white
    big = _png(_photo(4000, 1000))
    assert max(Image.open(io.BytesIO(book.shrink_image(big)[1])).size) == book.MAX_SIDE
    see_through = Image.new("RGBA", (300, 200), (255, 0, 0, 0))
    assert book.shrink_image(_png(see_through))[0] == "image/png"  # transparency: never JPEG


def test_an_animation_becomes_a_smaller_webp():
    frames = [_photo(360, 200, seed) for seed in range(4)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
    mime, small = book.shrink_animation(out.getvalue())
    assert mime == "image/webp" and len(small) < out.tell()
    assert getattr(Image.open(io.BytesIO(small)), "n_frames", 1) == 4


# ---------------------------------------------------------------------------------------
# A made-up run through collect_notebooks


def _executed(runs: Path, tmp: Path) -> nbformat.NotebookNode:
    gif = io.BytesIO()
    frames = [_photo(360, 200, seed) for seed in range(3)]
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
    html = f'<img src="data:image/gif;base64,{base64.b64encode(gif.getvalue()).decode()}" alt="track"/>'
    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"input_path": str(ROOT / "notebooks/yolact_edge/02-export.ipynb"),
                                "output_path": str(runs / "smoke/yolact_edge/02-export.ipynb")}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# YolactEdge · 02 · Export\n\nWhat the stage does."),
        nbformat.v4.new_code_cell("profile = 'default'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(f"profile = 'smoke'\nweights = '{ROOT}/data/weights/w.pth'",
                                  metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_code_cell("from zoobook.records import StageRecorder\nrec = StageRecorder('yolact_edge', "
                                  "'02-export', profile)"),
        nbformat.v4.new_code_cell("result = steps.export(run)\nresult['path']", outputs=[
            nbformat.v4.new_output("execute_result", {"text/plain": f"'{runs}/smoke/yolact_edge/a.onnx'"},
                                   execution_count=1),
            nbformat.v4.new_output("stream", name="stderr", text=f"wrote {tmp}/scratch/b.bin\n"),
            nbformat.v4.new_output("display_data", {"image/png": base64.b64encode(_png(_photo())).decode(),
                                                    "text/plain": "<Figure>"}),
            nbformat.v4.new_output("display_data", {"text/html": html, "text/plain": "<HTML>"})]),
        nbformat.v4.new_code_cell("rec.finish();"),
    ]
    return nb


def test_collect_notebooks_makes_pages_to_read(monkeypatch, tmp_path):
    runs = tmp_path / "runs"
    monkeypatch.setenv("ZOOBOOK_RUNS", str(runs))
    folder = runs / "smoke" / "yolact_edge"
    folder.mkdir(parents=True)
    executed = _executed(runs, tmp_path)
    nbformat.write(executed, folder / "02-export.ipynb")
    before = (folder / "02-export.ipynb").read_text()
    record = _record("02-export", metrics={"parity_passed": True}, tables={"parity": PARITY},
                     provenance={"data": {"annotation_file": str(runs / "smoke/datasets/c/a.json")}},
                     parameters={"weights": str(ROOT / "data/weights/w.pth")}, notes=[f"scratch in {tmp_path}/s"])
    running = _record("05-evaluate", status="running", host="h", pid=1)

    def states(model, profile):
        found = []
        for stage in get_spec(model).stages:
            if model == "yolact_edge" and stage == "02-export":
                found.append(StageState(model, stage, "ok", "", record))
            elif model == "yolact_edge" and stage == "05-evaluate":
                found.append(StageState(model, stage, "running", "", running))
            else:
                found.append(StageState(model, stage, "not run"))
        return found

    monkeypatch.setattr("zoobook.runner.stage_states", states)
    root = tmp_path / "root"
    pages = book.collect_notebooks("smoke", root)
    assert len(pages) == sum(len(get_spec(m).stages) for m in MODELS)

    page = nbformat.read(root / "book/yolact_edge/02-export.ipynb", as_version=4)
    assert page.cells[0].source.startswith("# YolactEdge · 02 · Export")
    verdict = page.cells[1].source
    assert verdict.splitlines()[0] == "**ok**: parity passed on 2 outputs, largest max\\_abs 0.00035"
    assert "{download}`02-export.json`" in verdict
    assert [[t for t in _tags(c) if t in book.SHOWN_AS] for c in page.cells if c.cell_type == "code"] == [
        ["hide-cell"], ["hide-cell"], ["hide-cell"], [], ["hide-cell"]]

    outputs = page.cells[5].outputs
    assert outputs[0]["data"]["text/plain"] == "'runs/smoke/yolact_edge/a.onnx'"
    assert "image/png" not in outputs[2]["data"] and len(outputs[2]["data"]["image/jpeg"]) < 200_000
    assert "data:image/webp;base64," in outputs[3]["data"]["text/html"]
    assert page.cells[3].source == "profile = 'smoke'\nweights = 'data/weights/w.pth'"

    copied = json.loads((root / "book/yolact_edge/02-export.json").read_text())
    assert copied["provenance"]["data"]["annotation_file"] == "runs/smoke/datasets/c/a.json"
    assert copied["parameters"]["weights"] == "data/weights/w.pth"
    for text in ((root / "book/yolact_edge/02-export.ipynb").read_text(),
                 (root / "book/yolact_edge/02-export.json").read_text()):
        for prefix in (str(tmp_path), str(ROOT), str(runs)):
            assert prefix not in text

    placeholder = nbformat.read(root / "book/yolact_edge/05-evaluate.ipynb", as_version=4)
    assert placeholder.cells[0].source == "# YolactEdge · 05 · Evaluate"
    assert placeholder.cells[1].source.startswith("**running**")
    assert "{download}`05-evaluate.json`" in placeholder.cells[1].source
    assert (root / "book/yolact_edge/05-evaluate.json").is_file()
    assert not (root / "book/yolact_edge/06-benchmark.json").exists()  # no record, no download
    assert "{download}" not in nbformat.read(root / "book/yolact_edge/06-benchmark.ipynb", as_version=4).cells[1].source
    # the run's own notebook is never changed
    assert (folder / "02-export.ipynb").read_text() == before


# ---------------------------------------------------------------------------------------
# The book built from the smoke run


@pytest.fixture(scope="module")
def smoke_run():
    return run_smoke("yolact_edge")


def test_the_smoke_book_reads_well(smoke_run, tmp_path, tmp_path_factory):
    """Pages from the smoke run (other models not run: their pages are placeholders)."""
    for name in ("_config.yml", "_toc.yml"):
        shutil.copyfile(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "book", tmp_path / "book",
                    ignore=shutil.ignore_patterns("*.ipynb", "summary.md", "[0-9][0-9]-*.json"))
    book.build_book("smoke", root=tmp_path)
    html = tmp_path / "_build" / "html"

    page = (html / "book/yolact_edge/05-evaluate.html").read_text()
    assert re.search(r"<p><strong>ok</strong>: onnxruntime: bbox mAP [^<]*</p>", page)
    assert 'class="cell tag_parameters tag_hide-cell' in page and "tag_injected-parameters tag_hide-cell" in page
    assert page.count("tag_hide-cell") == 4  # parameters, injected parameters, setup, finish
    link = re.search(r'href="(\.\./\.\./_downloads/[0-9a-f]+/05-evaluate\.json)"', page)
    assert link and json.loads((html / "book/yolact_edge" / link.group(1)).read_text())["stage"] == "05-evaluate"
    assert "_static/zoobook.css" in page and (html / "_static/zoobook.css").is_file()

    bare = re.findall(r'class="reference internal" href="[^"]*">\s*(\d\d-[a-z]+)\s*<', page)
    assert not bare, bare  # the navigation names every page by its title
    assert "SiamMask · 05 · Evaluate" in page

    machine = [str(runs_dir()), str(ROOT), str(tmp_path_factory.getbasetemp()), os.path.realpath(tmp_path)]
    published = [*html.joinpath("book").rglob("*.html"), *html.joinpath("_sources").rglob("*.ipynb"),
                 *html.joinpath("_downloads").rglob("*.json"), *tmp_path.joinpath("book").rglob("*.json")]
    assert len(published) > 40
    for path in published:
        text = path.read_text()
        assert not [m for m in machine if m in text], path

    images = list(html.joinpath("_images").iterdir())
    assert images and all(p.stat().st_size < 250_000 for p in images), [
        (p.name, p.stat().st_size) for p in images if p.stat().st_size >= 250_000]
