"""The papermill runner on the smoke profile (all six YolactEdge stages), its failure path,
the CLI, and the Jupyter Book build from the resulting records."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest

from zoobook.cli import _parse_overrides, main
from zoobook.records import read_record
from zoobook.runner import run_model

from .conftest import assert_all_stages_ok, run_smoke

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def smoke_run():
    return run_smoke("yolact_edge")


def test_all_six_stages_run_ok_on_smoke(smoke_run):
    assert_all_stages_ok("yolact_edge", smoke_run)


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
    assert {r["candidate"] for r in bench["tables"]["graph"]} == {"torch", "onnxruntime"}
    assert sorted({r["batch_size"] for r in bench["tables"]["graph"]}) == [1, 2]


def test_executed_notebooks_keep_outputs_and_committed_ones_do_not(smoke_run):
    executed = nbformat.read(smoke_run["05-evaluate"].notebook, as_version=4)
    assert any(c.get("outputs") for c in executed.cells if c.cell_type == "code")
    for path in (ROOT / "notebooks").rglob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        assert not any(c.get("outputs") or c.get("execution_count") for c in nb.cells if c.cell_type == "code"), path
        assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), path


def test_a_failed_stage_is_recorded_and_the_others_go_on(monkeypatch, tmp_path):
    monkeypatch.setenv("ZOOBOOK_RUNS", str(tmp_path / "runs"))
    results = run_model("yolact_edge", ["export", "data"], profile="smoke", timeout=600)
    assert [(r.stage, r.status) for r in results] == [("02-export", "failed"), ("01-data", "ok")]
    assert "run stage 01-data of yolact_edge first" in results[0].error
    record = read_record("smoke", "yolact_edge", "02-export")
    assert record["status"] == "failed" and "01-data" in record["error"]
    executed = nbformat.read(results[0].notebook, as_version=4)  # kept, with the error in it
    assert any(o.get("output_type") == "error" for c in executed.cells for o in c.get("outputs", []))


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
    page = (tmp_path / "_build" / "html" / "book" / "yolact_edge" / "06-benchmark.html").read_text()
    assert "<img" in page  # the throughput plot


def test_infer_resumes_only_on_the_same_inputs_and_model(smoke_run):
    from zoobook.models.yolact_edge import pipeline

    first = pipeline.infer("smoke", "onnxruntime")
    assert first["computed"] == 0 and first["skipped"] == first["images"]  # all saved by the smoke run
    folder = pipeline.outputs_dir("smoke", "onnxruntime")
    key = json.loads((folder / "key.json").read_text())
    key["weights"] = "something else"
    (folder / "key.json").write_text(json.dumps(key))
    again = pipeline.infer("smoke", "onnxruntime")
    assert again["computed"] == again["images"]


def test_ascend_stages_through_the_notebooks_with_fakes(smoke_run, monkeypatch, tmp_path):
    """convert -> infer -> evaluate with backend=ascend, the kernel seeing the FAKE atc,
    npu-smi and ais_bench (tests/fakes); the records must name the (fake) NPU, not the CPU."""
    from .conftest import FAKES

    runs = tmp_path / "runs"
    shutil.copytree(Path(os.environ["ZOOBOOK_RUNS"]) / "smoke" / "yolact_edge" / "artifacts",
                    runs / "smoke" / "yolact_edge" / "artifacts",
                    ignore=shutil.ignore_patterns("outputs", "compiled", "results"))
    monkeypatch.setenv("ZOOBOOK_RUNS", str(runs))
    monkeypatch.setenv("PATH", f"{FAKES / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", f"{FAKES}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    results = run_model("yolact_edge", ["convert", "infer", "evaluate"], profile="smoke", backend="auto",
                        overrides={"batch_sizes": [1], "precision_mode": "allow_fp32_to_fp16"}, timeout=600)
    assert [r.status for r in results] == ["ok"] * 3, [r.error for r in results]
    convert = read_record("smoke", "yolact_edge", "03-convert")
    assert convert["backend"] == "ascend" and convert["device"]["kind"] == "npu"
    assert convert["device"]["name"] == "Ascend310P3" and convert["parameters"]["precision_mode"] == "allow_fp32_to_fp16"
    assert (runs / "smoke" / "yolact_edge" / "artifacts" / "compiled" / "yolact_edge_bs1.om").is_file()
    evaluate = read_record("smoke", "yolact_edge", "05-evaluate")
    assert evaluate["metrics"]["agreement"]["recall"] > 0.99


def test_a_wrong_checkpoint_fails_export_with_a_short_error_and_the_full_lists_in_the_record(
        smoke_run, monkeypatch, tmp_path):
    """A SiamMask-like file where the YolactEdge checkpoint belongs: the stage fails, its record's
    error is a short summary naming the file and what it looks like, and the record keeps every
    missing and unexpected key (written by the notebook's recorder, kept by the runner)."""
    import torch

    runs, weights = tmp_path / "runs", tmp_path / "data" / "weights"
    shutil.copytree(Path(os.environ["ZOOBOOK_RUNS"]) / "smoke" / "yolact_edge" / "artifacts",
                    runs / "smoke" / "yolact_edge" / "artifacts",
                    ignore=shutil.ignore_patterns("outputs", "compiled", "results", "*.onnx"))
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
