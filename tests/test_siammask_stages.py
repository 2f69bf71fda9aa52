"""SiamMask end to end: the supervised experiment's reset logic on a scripted tracker, then
the six stages on the smoke profile through papermill (and convert -> infer -> evaluate with
the FAKE Ascend tools), with their records, result files and resume."""

from __future__ import annotations

from pathlib import Path

import nbformat
import numpy as np
import pytest

from zoobook.data.vot import VotSequence
from zoobook.metrics import vot
from zoobook.models.siammask.experiment import run_sequence
from zoobook.records import read_record

from .conftest import fake_npu_record, run_fake_npu, run_smoke

SQUARE = [100.0, 100.0, 140.0, 100.0, 140.0, 140.0, 100.0, 140.0]
FAR = [10.0, 10.0, 20.0, 10.0, 20.0, 20.0, 10.0, 20.0]


class ScriptedTracker:
    """Returns the ground truth, except a polygon far away on the frames in ``lose``."""

    def __init__(self, lose):
        self.lose, self.frame, self.starts = set(lose), 0, []

    def start(self, frame, centre, size):
        self.starts.append((self.frame, centre, size))
        self.frame += 1

    def track(self, frame):
        index, self.frame = self.frame, self.frame + 1

        class Result:
            polygon = np.array(FAR if index in self.lose else SQUARE)

        return Result


def test_failures_restart_five_frames_later():
    frames = [np.zeros((240, 320, 3), np.uint8)] * 12
    sequence = VotSequence("s", [Path(f"{i}.jpg") for i in range(12)], np.array([SQUARE] * 12), 320, 240)
    tracker = ScriptedTracker(lose={3})

    # the scripted tracker counts calls, so frames skipped after the failure are not seen
    run = run_sequence(tracker, sequence, frames=frames)
    codes = [r if isinstance(r, int) else "poly" for r in run["regions"]]
    assert codes == [1, "poly", "poly", 2, 0, 0, 0, 0, 1, "poly", "poly", "poly"]
    assert run["failures"] == [3]
    (first, centre, size), (second, *_) = tracker.starts
    assert (first, second) == (0, 4)  # the fifth call: frames 4..7 were skipped
    assert centre == (120.0, 120.0) and size == (41.0, 41.0)  # area-preserving box, +1


@pytest.fixture(scope="module")
def smoke_run():
    return run_smoke("siammask")


def test_records_and_result_files(smoke_run):
    from zoobook.models import open_run
    from zoobook.models.siammask import tracking

    run = open_run("siammask", "smoke")
    export = read_record("smoke", "siammask", "02-export")
    assert export["provenance"]["weights"]["kind"] == "recipe" and export["metrics"]["parity_passed"]
    assert {r["graph"] for r in export["tables"]["parity"]} == {"mask", "refine", "template", "search"}
    assert read_record("smoke", "siammask", "03-convert")["metrics"]["parity_passed"]
    for candidate in ("onnxruntime", "torch"):
        for seq in run.manifest["sequences"]:
            regions = vot.read_results(vot.results_path(tracking.results_folder(run, candidate), seq["name"]))
            assert len(regions) == seq["frames"] and regions[0] == [1]
    evaluate = read_record("smoke", "siammask", "05-evaluate")
    assert set(evaluate["metrics"]) >= {"onnxruntime", "torch", "agreement", "lockstep"}
    assert evaluate["metrics"]["agreement"]["same_kind_of_line"] > 0.9
    assert evaluate["metrics"]["lockstep"]["same_cell"] == 1.0
    assert evaluate["metrics"]["lockstep"]["mean_mask_iou"] > 0.98
    assert {r["source"] for r in evaluate["tables"]["accuracy"]} == {"measured", "published"}
    page = nbformat.read(smoke_run["05-evaluate"].notebook, as_version=4)
    html = [o for c in page.cells for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
    assert any("data:image/gif;base64" in o["data"]["text/html"] for o in html)  # the demo animation
    bench = read_record("smoke", "siammask", "06-benchmark")
    assert {(r["graph"], r["candidate"]) for r in bench["tables"]["graph"]} == {
        (g, c) for g in ("mask", "refine", "template", "search") for c in ("torch", "onnxruntime")}
    assert len(bench["tables"]["tracker"]) == 3 and all(r["fps"] > 0 for r in bench["tables"]["tracker"])
    ort_ms = {r["graph"]: r["mean_ms"] for r in bench["tables"]["graph"] if r["candidate"] == "onnxruntime"}
    harness = bench["tables"]["harness"][0]
    assert harness["graph"] == min(ort_ms, key=ort_ms.get) and harness["bare_ms"] > 0  # the fastest graph
    assert {"read", "crop", "graph", "decode", "paste", "polygon"} <= set(bench["tables"]["host"][0])
    assert all(r["same_outputs"] for r in bench["tables"]["pipeline"])
    assert bench["tables"]["deployment"][0]["device_ms"] == pytest.approx(4000 / 1673.94)


def test_lock_step_tracks_the_reference_once_for_every_backend(smoke_run, monkeypatch):
    from zoobook.models import open_run
    from zoobook.models.siammask import tracking

    run = open_run("siammask", "smoke")
    monkeypatch.setattr(tracking, "_demo_key", lambda *a: "another network")  # 04's saved track does not apply
    made = []
    real = tracking.reference_demo_track
    monkeypatch.setattr(tracking, "reference_demo_track", lambda *a: made.append(1) or real(*a))
    itself = tracking.lockstep(run, "torch")  # PyTorch fed its own states: the same decisions
    assert itself["same_cell"] == 1.0 and itself["min_mask_iou"] == 1.0 and itself["max_centre_difference_px"] == 0.0
    onnx = tracking.lockstep(run, "onnxruntime")
    assert made == [1] and onnx["frames"] == itself["frames"] == len(tracking.demo_frames(run)) - 1
    assert onnx["same_cell"] == 1.0 and onnx["mean_mask_iou"] > 0.98


def test_lock_step_takes_the_reference_track_04_saved(smoke_run, monkeypatch):
    """04-infer's reference demo track carries its states: lock-step reads them instead of
    tracking again, and they are the states a fresh reference track has."""
    from zoobook.models import open_run
    from zoobook.models.siammask import tracking

    run = open_run("siammask", "smoke")
    frames = tracking.demo_frames(run)
    saved, fresh = tracking.saved_reference_track(run, frames), tracking.reference_demo_track(run, frames)
    assert saved is not None and len(saved) == len(fresh) == len(frames) - 1
    for a, b in zip(saved, fresh):
        assert a.cell == b.cell
        for name in ("before_centre", "before_size", "centre", "mask"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert tracking.saved_reference_track(run, frames[:-1]) is None  # another clip: not this track
    monkeypatch.setattr(tracking, "reference_demo_track", lambda *a: pytest.fail("tracked the reference again"))
    itself = tracking.lockstep(run, "torch")
    assert itself["same_cell"] == 1.0 and itself["min_mask_iou"] == 1.0 and itself["max_centre_difference_px"] == 0.0


def test_tracking_resumes_only_on_the_same_data_and_model(smoke_run):
    from zoobook.models import open_run
    from zoobook.stages import steps

    run = open_run("siammask", "smoke")
    again = steps.infer(run, "onnxruntime", reference=False)
    assert again["onnxruntime"]["sequences"] == {} and again["onnxruntime"]["skipped"]
    fresh = steps.infer(run, "onnxruntime", reference=False, mode="port")  # another key
    assert fresh["onnxruntime"]["skipped"] == [] and fresh["onnxruntime"]["sequences"]


def test_the_tracker_over_the_fake_npu_keeps_lock_step_with_pytorch(smoke_run):
    """The shared FAKE Ascend run (conftest.run_fake_npu): four .om files, and the tracker over
    fake NPU sessions in lock-step with PyTorch's."""
    folder, results = run_fake_npu("siammask")
    assert [r.status for r in results] == ["ok"] * len(results), [r.error for r in results]
    compiled = folder / "runs" / "smoke" / "siammask" / "artifacts" / "compiled"
    assert sorted(p.name for p in (compiled / "ascend").glob("*.om")) == ["mask.om", "refine.om", "search.om", "template.om"]
    evaluate = fake_npu_record(folder, "siammask", "05-evaluate")
    assert evaluate["backend"] == "ascend" and evaluate["metrics"]["lockstep"]["mean_mask_iou"] > 0.98


def test_training_stage_measures_one_and_two_processes(smoke_run):
    record = read_record("smoke", "siammask", "00-train")
    rows = {row["processes"]: row for row in record["tables"]["throughput"]}
    assert sorted(rows) == [1, 2] and rows[2]["per_process"] * 2 == rows[2]["global_batch"]
    assert all(row["samples_per_s"] > 0 and np.isfinite(row["final_loss"]) for row in rows.values())
    per_epoch = record["tables"]["per_epoch"]
    assert [(r["processes"], r["epoch"]) for r in per_epoch] == [(n, e) for n in (1, 2)
                                                                for e in range(1, record["parameters"]["epochs"] + 1)]
    assert all(r["loss"] == rows[r["processes"]]["final_loss"] for r in per_epoch
               if r["epoch"] == record["parameters"]["epochs"])
    assert {p["value"] for p in record["tables"]["published"] if p["unit"] == "samples/s"} == {193, 236, 846, 1724}
    assert record["provenance"]["data"]["kind"] == "synthetic"


def test_the_trained_checkpoint_is_tracked_and_scored(smoke_run):
    """00-train hands its last checkpoint over; 04-infer tracks the VOT sequences with it (the
    base model, mask branch alone) and 05-evaluate scores it, naming the checkpoint."""
    from zoobook.models import open_run
    from zoobook.models.siammask import tracking

    run = open_run("siammask", "smoke")
    handed = tracking.trained_checkpoint(run)
    assert handed["checkpoint"].endswith("train/1p/checkpoint_e2.pth") and handed["processes"] == 1
    infer = read_record("smoke", "siammask", "04-infer")
    assert infer["provenance"]["trained_weights"]["path"] == handed["checkpoint"]
    folder = tracking.trained_results_folder(run, infer["provenance"]["trained_weights"])
    assert folder.name == "Custom_mask_checkpoint_e2"
    for seq in run.manifest["sequences"]:
        lines = vot.read_results(vot.results_path(folder, seq["name"]))
        assert len(lines) == seq["frames"] and lines[0] == [1.0]
    evaluate = read_record("smoke", "siammask", "05-evaluate")
    (row,) = [r for r in evaluate["tables"]["accuracy"] if r["backend"] == "torch, base model (mask branch)"]
    assert row["source"] == "measured" and row["weights"].startswith("checkpoint_e2.pth: base model trained by 00-train")
    assert evaluate["provenance"]["trained_weights"]["sha256"] == infer["provenance"]["trained_weights"]["sha256"]
