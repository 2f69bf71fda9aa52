"""SeMask-FPN end to end on the smoke profile through papermill (3 generated images at
128 x 256, graphs at batch 1 and 2), the records, resume, the scores recomputed from the
saved class maps, padding, and what the FAKE Ascend run shows of SeMask (the stage suite in
test_stages.py runs every stage and the fake Ascend toolchain for every model)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from zoobook.records import read_record

from .conftest import fake_npu_record, run_fake_npu, run_smoke


@pytest.fixture(scope="module")
def smoke_run():
    return run_smoke("semask")


def test_one_graph_per_batch_size_each_checked_against_torch(smoke_run):
    from zoobook.export import onnx_io
    from zoobook.models import open_run

    export = read_record("smoke", "semask", "02-export")
    assert export["provenance"]["weights"]["kind"] == "recipe" and export["metrics"]["parity_passed"]
    assert [r["graph"] for r in export["tables"]["parity"]] == ["batch 1", "batch 2"]
    assert all(r["agreement"] >= 0.999 for r in export["tables"]["parity"])
    run = open_run("semask", "smoke")
    for bs in (1, 2):
        assert onnx_io(run.onnx(batch_size=bs)) == {"inputs": {"image": [bs, 3, 128, 256]},
                                                            "outputs": {"output": [bs, 128, 256]}}
    convert = read_record("smoke", "semask", "03-convert")
    assert [r["graph"] for r in convert["tables"]["parity"]] == ["batch 1", "batch 2"]


def _direct_miou(predictions: list[np.ndarray], labels: list[np.ndarray]) -> float:
    """mIoU straight from the definition, class by class over the whole set."""
    ious = []
    for c in range(19):
        inter = sum(int(((p == c) & (g == c)).sum()) for p, g in zip(predictions, labels))
        union = sum(int((((p == c) & (g != 255)) | (g == c)).sum()) for p, g in zip(predictions, labels))
        if union:
            ious.append(inter / union)
    return float(np.mean(ious))


def test_scores_follow_from_the_saved_class_maps(smoke_run):
    from zoobook.models import open_run
    from zoobook.models.semask.port import read_label
    from zoobook.stages import steps

    run = open_run("semask", "smoke")
    manifest = run.manifest
    evaluate = read_record("smoke", "semask", "05-evaluate")
    for backend in ("onnxruntime", "torch"):
        folder = steps.outputs_dir(run, backend)
        predictions = [cv2.imread(str(folder / f"{im['name']}.png"), cv2.IMREAD_UNCHANGED) for im in manifest["images"]]
        labels = [read_label(run, im["index"]) for im in manifest["images"]]
        assert all(p.shape == (128, 256) and p.max() < 19 for p in predictions)
        assert evaluate["metrics"][f"{backend}_mIoU"] == pytest.approx(_direct_miou(predictions, labels), abs=1e-12)
    assert evaluate["metrics"]["pixel_agreement_with_torch"] >= 0.999
    rows = evaluate["tables"]["accuracy"]
    assert {r["candidate"] for r in rows if r["source"] == "measured"} == {"onnxruntime", "torch", "onnxruntime-fp16"}
    assert {r["mIoU"] for r in rows if r["source"] == "published"} == {76.54, 77.13, 79.14}


def test_benchmark_reports_throughput_and_memory_per_batch_size(smoke_run):
    bench = read_record("smoke", "semask", "06-benchmark")
    rows = bench["tables"]["graph"]
    expected = {(c, b) for c in ("torch", "onnxruntime") for b in (1, 2)}
    assert {(r["candidate"], r["batch_size"]) for r in rows} == expected
    for r in rows:
        assert r["throughput"] == pytest.approx(r["batch_size"] * 1000 / r["mean_ms"])
        assert r["peak_rss_mb"] >= r["rss_loaded_mb"] > r["rss_before_load_mb"] > 0
        assert r["peak"] == "during the calls"
    assert [p["value"] for p in bench["tables"]["published"]] == [4.72, 4.37, 4.13]
    assert {"read", "preprocess", "graph", "encode"} <= set(bench["tables"]["host"][0])
    assert all(r["same_outputs"] for r in bench["tables"]["pipeline"])


def test_a_last_short_batch_is_padded_to_the_static_graph(smoke_run):
    from zoobook.models import open_run
    from zoobook.stages import steps

    run = open_run("semask", "smoke")
    first = steps.infer(run, "onnxruntime", batch_size=2)
    assert first["computed"] == 0 and first["skipped"] == 3
    key_file = steps.outputs_dir(run, "onnxruntime") / "key.json"
    key = json.loads(key_file.read_text())
    key["weights"] = "another"
    key_file.write_text(json.dumps(key))
    again = steps.infer(run, "onnxruntime", batch_size=2)
    assert again["computed"] == 3 and again["calls"] == 2  # the last batch padded to the static size


def test_prepare_names_an_image_whose_label_differs_in_size(tmp_path):
    from zoobook.data.cityscapes import write_synthetic_cityscapes
    from zoobook.models import open_run
    from zoobook.stages import steps

    dataset = write_synthetic_cityscapes(tmp_path / "cs", 1, size=(64, 128))
    label = dataset.label_path(0)
    cv2.imwrite(str(label), np.zeros((32, 128), np.uint8))
    with pytest.raises(ValueError, match=f"{dataset.images[0]}.*differ in size"):
        steps.prepare_data(open_run("semask", "smoke"), dataset, {"kind": "synthetic"}, input_size=(64, 128))


def test_atc_gets_one_static_shape_per_graph_and_the_npu_is_timed_in_its_own_processes(smoke_run):
    """The shared FAKE Ascend run (conftest.run_fake_npu): ATC gets each graph at its static
    batch, the agreement with PyTorch holds, and 06-benchmark's processes see the fake NPU."""
    folder, results = run_fake_npu("semask")
    assert [r.status for r in results] == ["ok"] * len(results), [r.error for r in results]
    logged = [json.loads(line) for line in (folder / "atc.log").read_text().splitlines()]
    assert [next(a for a in args if a.startswith("--input_shape")) for args in logged] == [
        "--input_shape=image:1,3,128,256", "--input_shape=image:2,3,128,256"]
    evaluate = fake_npu_record(folder, "semask", "05-evaluate")
    assert evaluate["backend"] == "ascend" and evaluate["metrics"]["pixel_agreement_with_torch"] >= 0.99
    bench = fake_npu_record(folder, "semask", "06-benchmark")
    assert {r["candidate"] for r in bench["tables"]["graph"]} == {"torch", "onnxruntime", "ascend"}
    assert "failures" not in bench["tables"]


def test_the_checks_run_in_process_at_small_sizes_and_in_their_own_processes_above(smoke_run, monkeypatch,
                                                                                     tmp_path):
    import os
    import shutil
    from pathlib import Path
    from types import SimpleNamespace

    from zoobook import bench
    from zoobook.models import open_run
    from zoobook.models.semask.port import SeMaskPort
    from zoobook.stages import steps

    port = SeMaskPort()
    assert not port.isolate_checks(SimpleNamespace(manifest={"input_size": [256, 512]}))
    assert port.isolate_checks(SimpleNamespace(manifest={"input_size": [512, 1024]}))
    # on a copy of the smoke run's data and export: compiling again here would change the shared
    # run's artifacts, and later tests' resumes with them
    smoke = Path(os.environ["ZOOBOOK_RUNS"]) / "smoke"
    shutil.copytree(smoke / "semask", tmp_path / "smoke" / "semask", copy_function=os.link,
                    ignore=shutil.ignore_patterns("outputs", "compiled", "results", "0[3-6]-*", ".lock*"))
    shutil.copytree(smoke / "datasets", tmp_path / "smoke" / "datasets", copy_function=os.link)
    monkeypatch.setenv("ZOOBOOK_RUNS", str(tmp_path))
    run = open_run("semask", "smoke")  # 128 x 256
    isolated = []
    monkeypatch.setattr(bench, "run_isolated", lambda f, *args: isolated.append(args[0]) or (f(*args), 0.0))
    steps.convert(run, "onnxruntime")
    assert isolated == []
    monkeypatch.setattr(SeMaskPort, "CHECKS_IN_PROCESS_PIXELS", 128 * 256 - 1)
    result = steps.convert(run, "onnxruntime")
    assert isolated == [None, "onnxruntime"] * 2 and all(row["passed"] for row in result["parity"])
    assert not (smoke / "semask" / "artifacts" / "compiled" / "onnxruntime").samefile(
        run.path("compiled/onnxruntime"))
