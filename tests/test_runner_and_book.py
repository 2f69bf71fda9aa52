"""YolactEdge's smoke run in detail, the CLI, the stage declarations, and the Jupyter Book
built from records: its summary shows the sections each model declares (the stage protocol's
checks for every model are in test_stages.py)."""

from __future__ import annotations

import ast
import os
import shutil
from pathlib import Path

import nbformat
import pytest

from zoobook.cli import _parse_overrides, main
from zoobook.models import MODELS, get_port, get_spec
from zoobook.paths import PROFILES
from zoobook.records import read_record
from zoobook.runner import declaration, notebook_parameters, notebook_path, run_model
from zoobook.stages import steps
from zoobook.stages.spec import SECTION_KINDS

from .conftest import run_smoke

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def smoke_run():
    return run_smoke("yolact_edge")


def test_records_carry_results_and_provenance(smoke_run):
    export = read_record("smoke", "yolact_edge", "02-export")
    assert export["provenance"]["weights"]["kind"] == "recipe"
    assert export["metrics"]["parity_passed"] and len(export["tables"]["parity"]) == 6
    convert = read_record("smoke", "yolact_edge", "03-convert")
    assert convert["backend"] == "onnxruntime" and convert["metrics"]["parity_passed"]
    evaluate = read_record("smoke", "yolact_edge", "05-evaluate")
    assert evaluate["metrics"]["agreement"]["recall"] > 0.99
    assert {r["source"] for r in evaluate["tables"]["accuracy"]} == {"measured", "published"}
    bench = read_record("smoke", "yolact_edge", "06-benchmark")
    assert {(r["candidate"], r["batch_size"]) for r in bench["tables"]["graph"]} == {
        ("torch", 1), ("onnxruntime", 1), ("onnxruntime", 2)}  # the smoke profile: reference_batch_sizes [1]
    assert [(r["candidate"], r["batch_size"]) for r in bench["tables"]["speedup"]] == [("onnxruntime", 1)]
    assert {"head", "decode", "nms", "masks"} <= set(bench["tables"]["host"][0])
    assert [r["loop"] for r in bench["tables"]["pipeline"]] == [
        "sequential", "pipelined", "sequential, device stand-in", "pipelined, device stand-in"]
    assert all(r["same_outputs"] for r in bench["tables"]["pipeline"])
    bound = bench["tables"]["deployment"][0]
    assert bound["device_ms"] == pytest.approx(1000 / 270.35)
    assert bound["overlapped_fps"] == pytest.approx(1000 / max(bound["host_ms"], bound["device_ms"]))
    harness = bench["tables"]["harness"][0]
    call_ms = next(r["mean_ms"] for r in bench["tables"]["graph"] if r["candidate"] == "onnxruntime" and r["batch_size"] == 1)
    if call_ms > steps.HARNESS_MAX_CALL_MS:  # a busy machine: the check says why it did not run
        assert "bare_ms" not in harness and harness["note"].startswith("not measured")
    else:
        assert harness["bare_ms"] > 0
    cut, whole = bench["tables"]["cut"]
    assert whole["graph_gflop"] > cut["graph_gflop"] and all(r["passed"] for r in bench["tables"]["cut_parity"])


def test_executed_notebooks_keep_outputs_and_committed_ones_do_not(smoke_run):
    executed = nbformat.read(smoke_run["05-evaluate"].notebook, as_version=4)
    assert any(c.get("outputs") for c in executed.cells if c.cell_type == "code")
    for path in (ROOT / "notebooks").rglob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        assert not any(c.get("outputs") or c.get("execution_count") for c in nb.cells if c.cell_type == "code"), path
        assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), path


def test_overrides_are_parsed_as_yaml():
    assert _parse_overrides(["batch_sizes=[1,4]", "opset=13", "weights=null", "name=abc"]) == {
        "batch_sizes": [1, 4], "opset": 13, "weights": None, "name": "abc"}
    with pytest.raises(SystemExit):
        _parse_overrides(["novalue"])


def test_cli_list(capsys):
    assert main(["list"]) == 0
    assert "yolact_edge" in capsys.readouterr().out


def test_book_builds_from_records(smoke_run, tmp_path):
    from zoobook.book import build_book

    for name in ("_config.yml", "_toc.yml"):
        shutil.copyfile(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "book", tmp_path / "book", ignore=shutil.ignore_patterns("*.ipynb", "summary.md"))
    index = build_book("smoke", root=tmp_path)
    assert index == tmp_path / "_build" / "html" / "index.html" and index.is_file()
    summary = (tmp_path / "_build" / "html" / "book" / "summary.html").read_text()
    assert "06-benchmark" in summary and "published" in summary and "recipe" in summary
    assert "Speed-up over PyTorch eager" in summary and "Where the time goes per item" in summary  # declared sections
    assert "breaks its contract" not in summary and "declared by no section" not in summary
    assert (tmp_path / "_build" / "html" / "book" / "protocol.html").is_file()
    matrix = (tmp_path / "_build" / "html" / "book" / "matrix.html").read_text()
    assert all(get_spec(m).title in matrix for m in MODELS) and "export parity" in matrix
    assert "compares with no other run" in (tmp_path / "_build" / "html" / "book" / "compare.html").read_text()
    page = (tmp_path / "_build" / "html" / "book" / "yolact_edge" / "06-benchmark.html").read_text()
    assert "<img" in page  # the throughput plot


def test_a_wrong_checkpoint_fails_export_with_a_short_error_and_the_full_lists_in_the_record(
        smoke_run, monkeypatch, tmp_path):
    """A SiamMask-like file where the YolactEdge checkpoint belongs: the stage fails, its record's
    error is a short summary naming the file and what it looks like, and the record keeps every
    missing and unexpected key (written by the notebook's recorder, kept by the runner)."""
    import torch

    runs, weights = tmp_path / "runs", tmp_path / "data" / "weights"
    shutil.copytree(Path(os.environ["ZOOBOOK_RUNS"]) / "smoke" / "yolact_edge", runs / "smoke" / "yolact_edge",
                    ignore=shutil.ignore_patterns("outputs", "compiled", "results", "*.onnx", ".lock*"))
    weights.mkdir(parents=True)
    keys = [f"{prefix}{i}.weight" for prefix in ("features.features.layer", "rpn_model.cls.", "mask_model.mask.",
                                                  "refine_model.v") for i in range(3)]
    torch.save({key: torch.zeros(1) for key in keys}, weights / "yolact_edge_resnet50_54_800000.pth")
    monkeypatch.setenv("ZOOBOOK_RUNS", str(runs))
    monkeypatch.setenv("ZOOBOOK_DATA", str(tmp_path / "data"))
    (result,) = run_model("yolact_edge", ["export"], profile="smoke", timeout=600)
    assert result.status == "failed"
    record = read_record("smoke", "yolact_edge", "02-export")
    assert record["status"] == "failed" and len(record["error"]) < 2000
    assert "yolact_edge_resnet50_54_800000.pth" in record["error"] and "SiamMask" in record["error"]
    details = record["error_details"]
    assert sorted(details["unexpected"]) == sorted(keys)
    assert len(details["missing"]) == len(details["missing_official"]) > 100


# ---------------------------------------------------------------------------------------
# What the book shows: the sections each model declares


def _is_tables(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "tables"


def _recorded_tables(path: Path) -> set[str]:
    """The table keys a stage notebook records, read from its code cells:
    ``rec.tables["key"] = rows`` and ``rec.tables.update(key=rows, ...)``."""
    source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    keys = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Subscript) and _is_tables(node.value):
            assert isinstance(node.slice, ast.Constant), f"{path}: a table key that is not spelled out"
            keys.add(node.slice.value)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and _is_tables(node.func.value):
            assert node.func.attr == "update" and not node.args and all(k.arg for k in node.keywords), \
                f"{path}: rec.tables.{node.func.attr} with keys not spelled out"
            keys |= {k.arg for k in node.keywords}
    return keys


@pytest.mark.parametrize("model", MODELS)
def test_book_sections_are_exactly_the_tables_the_notebooks_record(model):
    spec = get_spec(model)
    recorded = {(stage, key) for stage in spec.stages for key in _recorded_tables(notebook_path(model, stage))}
    declared = [(s.stage, s.table) for s in spec.sections]
    assert not recorded - set(declared), f"recorded by a notebook, declared by no section: {recorded - set(declared)}"
    assert not set(declared) - recorded, f"declared, recorded by no notebook: {set(declared) - recorded}"
    assert len(set(declared)) == len(declared) and len({s.title for s in spec.sections}) == len(declared)


def _rows(kind: str) -> list[dict]:
    """Two rows with every column the kind names, and one it does not."""
    columns = (*SECTION_KINDS[kind].required, *SECTION_KINDS[kind].columns, "not_a_column")
    return [{c: True if c == "passed" else 1.234567 for c in columns} for _ in range(2)]


def _write_records(model: str, tables: dict[str, dict[str, list]]) -> None:
    from zoobook.records import StageRecorder

    for stage, by_key in tables.items():
        rec = StageRecorder(model, stage, "smoke", "onnxruntime")
        rec.tables.update(by_key)
        rec.finish()


def _part(summary: str, title: str) -> str:
    """The lines of ``summary`` from the heading ``## title`` to the next model's."""
    return summary.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_book_summary_shows_the_declared_sections_in_spec_order(monkeypatch, tmp_path):
    """Records written stage by stage, each with its tables in reverse order and a table no
    section declares: the summary shows every declared section in the spec's order, with its
    note, its kind's columns and digits, and names the undeclared table without showing it."""
    from zoobook.book import summary_markdown

    monkeypatch.setenv("ZOOBOOK_RUNS", str(tmp_path / "runs"))
    for model in MODELS:
        tables: dict[str, dict[str, list]] = {}
        for section in reversed(get_spec(model).sections):
            tables.setdefault(section.stage, {})[section.table] = _rows(section.kind)
        tables[section.stage]["scratch"] = [{"x": 1}]
        _write_records(model, tables)
    summary = summary_markdown("smoke")
    for model in MODELS:
        spec = get_spec(model)
        part = _part(summary, spec.title)
        assert [line[4:] for line in part.splitlines() if line.startswith("### ")] == [s.title for s in spec.sections]
        assert f"`{spec.sections[0].stage}` `scratch`" in part
    speed = next(s for s in get_spec("yolact_edge").sections if s.kind == "speed")
    shown = _part(summary, get_spec("yolact_edge").title).split(f"### {speed.title}\n\n{speed.note}\n\n", 1)[1]
    header, _, first = shown.splitlines()[:3]
    assert header == "| " + " | ".join(SECTION_KINDS["speed"].columns) + " |"
    assert first.startswith("| 1.23 | 1.23 |")  # the speed kind's two digits


def test_book_shows_a_table_that_breaks_its_contract_as_one_line(monkeypatch, tmp_path):
    from zoobook.book import summary_markdown

    monkeypatch.setenv("ZOOBOOK_RUNS", str(tmp_path / "runs"))
    _write_records("yolact_edge", {"02-export": {"parity": [{"output": "output0", "cosine": 1.0}]},
                                   "06-benchmark": {"graph": {"candidate": "torch"}}})
    part = _part(summary_markdown("smoke"), get_spec("yolact_edge").title)
    assert "breaks its contract**: table 'parity' (parity) of 02-export: row 0 lacks ['passed']" in part
    assert "breaks its contract**: table 'graph' of 06-benchmark is not a list of rows" in part
    assert "output0" not in part


@pytest.mark.parametrize("data, line", [
    ({"kind": "synthetic", "name": "COCO-format", "images_with_annotations": 3}, "COCO-format, 3 images"),
    ({"kind": "real", "name": "Cityscapes val (gtFine)", "count": 500}, "Cityscapes val (gtFine), 500 images"),
    ({"kind": "real", "name": "VOT2016", "sequences": 60}, "VOT2016, 60 sequences"),
    ({"kind": "synthetic", "name": "crop511", "videos_per_set": 2}, "crop511, 2 videos per dataset"),
    ({"kind": "real", "name": "crop511 training sets: vid"}, "crop511 training sets: vid"),
])
def test_book_provenance_names_each_dataset_and_its_size(data, line):
    from zoobook.book import _provenance_lines

    assert _provenance_lines([{"provenance": {"data": data}}]) == [f"- **data**: {data['kind']} — {line}"]


# ---------------------------------------------------------------------------------------
# Stage declarations


@pytest.mark.parametrize("model", MODELS)
def test_stage_declarations_take_the_notebooks_parameters_and_the_backend(model):
    """Each stage's declaration: the port's, ``{backend}`` resolved, with the parameters its
    notebook takes; every parameter a profile sets is one the notebook takes (the runner
    would drop any other without a word)."""
    spec, port = get_spec(model), get_port(model)
    for stage in spec.stages:
        io = declaration(model, stage, "ascend")
        declared = port.stage_io(stage)
        taken = notebook_parameters(notebook_path(model, stage))
        assert io.stage == stage and io.upstream == declared.upstream and io.inputs == declared.inputs
        assert [*io.reads, *io.writes] == [*declared.paths("ascend")["reads"], *declared.paths("ascend")["writes"]]
        assert io.parameters and set(io.parameters) <= set(taken)
        set_by_profiles = {name for profile in PROFILES for name in spec.stage_parameters(profile, stage)}
        assert set_by_profiles <= set(taken), (stage, set_by_profiles - set(taken))
    assert declaration(model, spec.stages[-1].split("-")[1]) == declaration(model, spec.stages[-1], "auto")


@pytest.mark.parametrize("model", MODELS)
def test_cli_stages_prints_each_stage_declaration(model, capsys):
    assert main(["stages", model, "--backend", "onnxruntime"]) == 0
    out = capsys.readouterr().out
    assert "{backend}" not in out
    for stage in get_spec(model).stages:
        io = declaration(model, stage, "onnxruntime")
        block = out.split(f"\n{stage}\n", 1)[1].split("\n\n", 1)[0]
        assert block.splitlines() == [f"  {field:11s}{', '.join(getattr(io, field)) or '-'}"
                                      for field in ("upstream", "parameters", "reads", "writes", "inputs")]


def test_the_summary_says_where_the_time_went():
    from zoobook.book import time_markdown

    records = [{"model": "a", "stage": "01-data", "duration_s": 10.0, "status": "ok"},
               {"model": "a", "stage": "02-export", "duration_s": 30.0, "status": "ok"},
               {"model": "b", "stage": "01-data", "duration_s": 60.0, "status": "failed"},
               {"model": "b", "stage": "02-export", "status": "not run"}]
    text = "\n".join(time_markdown(records, slowest=2))
    assert "| a | 2 | 40.0 | 40.0 |" in text and "| b | 1 | 60.0 | 60.0 |" in text and "| all | 3 | 100.0 |" in text
    assert text.index("| b 01-data | 60.0 | failed |") < text.index("| a 02-export | 30.0 | ok |")
    assert "a 01-data" not in text  # only the two slowest
    assert time_markdown([{"model": "a", "stage": "01-data"}]) == []
