"""Runs you can trust: each case a user met (a killed stage, a refused checkpoint, a missing
image, two runs at once, a mistyped parameter, a batch size of 0, nothing changed, one
notebook changed) replayed against the runner, with the honest outcome checked.

The stages run on YolactEdge's smoke profile (generated COCO, recipe weights, ONNX Runtime)
in folders of their own, never in the session's shared smoke run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import run_smoke

MODEL = "yolact_edge"
ROOT = Path(__file__).resolve().parents[1]


def _copy(src: Path, dst: Path) -> None:
    """Large artifacts hard-linked (stages replace files, never rewrite them in place), the
    rest copied."""
    if os.path.getsize(src) > 1 << 20 and not src.endswith(".ipynb"):
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


@pytest.fixture
def smoke_copy(tmp_path, monkeypatch) -> Path:
    """A copy of the session's YolactEdge smoke run (records with their fingerprints and
    artifacts); ZOOBOOK_RUNS points at it. Returns the model's run folder."""
    run_smoke(MODEL)
    source = Path(os.environ["ZOOBOOK_RUNS"]) / "smoke"
    target = tmp_path / "runs" / "smoke"
    for name in (MODEL, "datasets"):
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name, copy_function=_copy,
                            ignore=shutil.ignore_patterns(".lock*", ".previous"))
    monkeypatch.setenv("ZOOBOOK_RUNS", str(tmp_path / "runs"))
    return target / MODEL


def _record(folder: Path, stage: str) -> dict:
    return json.loads((folder / f"{stage}.json").read_text())


def _states(profile: str = "smoke") -> dict[str, str]:
    from zoobook.runner import stage_states

    return {s.stage: s.state for s in stage_states(MODEL, profile)}


def _cli(*args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "zoobook.cli", *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


# ---------------------------------------------------------------------------------------
# Up to date, stale, rerun


def test_a_second_run_skips_every_stage_and_one_changed_notebook_reruns_it_and_its_dependents(
        smoke_copy, tmp_path, monkeypatch):
    from zoobook import runner
    from zoobook.runner import run_model

    assert set(_states().values()) == {"ok"}, _states()
    before = {s: _record(smoke_copy, s)["started"] for s in _states()}
    warm = []
    with monkeypatch.context() as patched:
        patched.setattr(runner, "WarmKernel", lambda *args: warm.append(args))
        results = run_model(MODEL, profile="smoke", backend="auto")
    assert all(r.skipped and r.status == "ok" for r in results), [(r.stage, r.status, r.error) for r in results]
    assert {s: _record(smoke_copy, s)["started"] for s in before} == before
    assert warm == []  # no kernel is started ahead for stages that are skipped

    # a project whose 04-infer notebook differs by one comment
    project = tmp_path / "project"
    shutil.copytree(ROOT / "notebooks", project / "notebooks")
    shutil.copy(ROOT / "_config.yml", project / "_config.yml")
    infer = project / "notebooks" / MODEL / "04-infer.ipynb"
    nb = json.loads(infer.read_text())
    code = next(c for c in nb["cells"] if c["cell_type"] == "code" and "parameters" not in c["metadata"].get("tags", []))
    code["source"] = ["# edited\n", *code["source"]]
    infer.write_text(json.dumps(nb))
    monkeypatch.setenv("ZOOBOOK_ROOT", str(project))
    states = {s.stage: s for s in __import__("zoobook.runner", fromlist=["stage_states"]).stage_states(MODEL, "smoke")}
    assert states["04-infer"].state == "stale" and states["04-infer"].reason == "notebook changed"
    assert states["05-evaluate"].state == "stale" and "04-infer" in states["05-evaluate"].reason
    assert states["06-benchmark"].state == "ok"  # does not depend on 04-infer
    rerun = {r.stage: r for r in run_model(MODEL, profile="smoke", backend="auto")}
    assert [s for s, r in rerun.items() if not r.skipped] == ["04-infer", "05-evaluate"]
    assert all(r.status == "ok" for r in rerun.values())
    assert set(_states().values()) == {"ok"}
    forced = run_model(MODEL, ["evaluate"], profile="smoke", backend="auto", force=True)
    assert not forced[0].skipped and forced[0].status == "ok"


def test_status_prints_each_stage_with_its_state_and_why(smoke_copy):
    manifest = smoke_copy / "artifacts" / "inputs" / "ids.json"
    manifest.unlink()
    proc = _cli("status", MODEL, "--profile", "smoke")
    out, _ = proc.communicate(timeout=120)
    lines = out.splitlines()
    assert proc.returncode == 0 and len(lines) == 6, out
    assert lines[0].split(None, 3) == [MODEL, "01-data", "stale", "output missing: inputs/ids.json"]
    assert lines[5].split(None, 3)[:3] == [MODEL, "06-benchmark", "stale"]


def test_a_changed_output_or_input_makes_a_stage_stale_with_the_reason(smoke_copy):
    manifest = smoke_copy / "artifacts" / "inputs" / "manifest.json"
    manifest.write_text(manifest.read_text() + " ")
    from zoobook.runner import stage_states

    states = {s.stage: s for s in stage_states(MODEL, "smoke")}
    assert states["01-data"].state == "stale" and states["01-data"].reason == "output changed: inputs/manifest.json"
    assert states["02-export"].reason == "upstream 01-data is stale"


def test_records_and_artifacts_are_readable_by_others(smoke_copy):
    """0644 under the usual umask 022: the atomic writes' temporary files are 0600."""
    umask = os.umask(0o022)
    os.umask(umask)
    expected = 0o666 & ~umask
    files = [smoke_copy / "04-infer.json", smoke_copy / "artifacts" / "export.json",
             *(smoke_copy / "artifacts" / "outputs" / "onnxruntime").glob("*.npz")]
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {oct(expected)}


# ---------------------------------------------------------------------------------------
# Interruptions


@pytest.fixture
def sixteen_images(tmp_path, monkeypatch) -> Path:
    """01-data to 03-convert of YolactEdge's smoke profile with 16 images, in a folder of its own."""
    from zoobook.runner import run_model

    monkeypatch.setenv("ZOOBOOK_RUNS", str(tmp_path / "runs"))
    results = run_model(MODEL, ["data", "export", "convert"], profile="smoke", backend="auto",
                        overrides={"num_images": 16})
    assert [r.status for r in results] == ["ok"] * 3, [r.error for r in results]
    return tmp_path / "runs" / "smoke" / MODEL


def _finished(outputs: Path) -> list[Path]:
    """The output files written (not the temporaries of the atomic writes, named ``.*``)."""
    return [p for p in outputs.glob("*.npz") if not p.name.startswith(".")]


def _start_infer_and_wait(folder: Path) -> tuple[subprocess.Popen, list[Path]]:
    """``zoobook run --stages infer`` in a process of its own; returns once two outputs exist."""
    outputs = folder / "artifacts" / "outputs" / "onnxruntime"
    for old in outputs.glob("*.npz"):  # an earlier test's outputs
        old.unlink()
    proc = _cli("run", MODEL, "--profile", "smoke", "--stages", "infer", "-p", "resume=false", "--force")
    deadline = time.time() + 300
    while time.time() < deadline and len(_finished(outputs)) < 2:
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    assert _record(folder, "04-infer")["status"] == "running"
    return proc, outputs


def test_sigint_during_infer_records_interrupted_keeps_finished_items_and_resumes(sixteen_images):
    from zoobook.runner import run_model

    proc, outputs = _start_infer_and_wait(sixteen_images)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    record = _record(sixteen_images, "04-infer")
    assert record["status"] == "interrupted", record
    kept = len(_finished(outputs))
    assert 2 <= kept < 16
    assert _states()["04-infer"] == "interrupted"
    blocked = run_model(MODEL, ["evaluate"], profile="smoke", backend="auto")[0]
    assert blocked.status == "blocked" and "04-infer is interrupted" in blocked.error
    resumed = run_model(MODEL, ["infer"], profile="smoke", backend="auto")[0]
    assert resumed.status == "ok", resumed.error
    metrics = _record(sixteen_images, "04-infer")["metrics"]
    assert metrics["items"] == 16 and metrics["skipped"] >= kept - 1 and metrics["computed"] <= 16 - kept + 1


def test_sigterm_and_sigkill_during_infer_are_reported_as_interrupted(sixteen_images):
    proc, _ = _start_infer_and_wait(sixteen_images)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and _record(sixteen_images, "04-infer")["status"] == "interrupted", out

    proc, _ = _start_infer_and_wait(sixteen_images)
    proc.kill()
    proc.communicate(timeout=60)
    assert _record(sixteen_images, "04-infer")["status"] == "running"  # nobody was left to say otherwise
    from zoobook.runner import stage_states

    state = {s.stage: s for s in stage_states(MODEL, "smoke")}["04-infer"]
    assert state.state == "interrupted" and "is gone" in state.reason


# ---------------------------------------------------------------------------------------
# Failures upstream, failures midway


def test_a_refused_checkpoint_blocks_convert_and_infer_and_keeps_the_previous_onnx(smoke_copy, tmp_path, monkeypatch):
    import torch

    from zoobook.runner import run_model

    onnx = smoke_copy / "artifacts" / "yolact_edge.onnx"
    before = onnx.stat().st_ino
    data = tmp_path / "data"
    (data / "weights").mkdir(parents=True)
    torch.save({"not.a.key": torch.zeros(1)}, data / "weights" / "yolact_edge_resnet50_54_800000.pth")
    monkeypatch.setenv("ZOOBOOK_DATA", str(data))
    results = {r.stage: r for r in run_model(MODEL, ["export", "convert", "infer"], profile="smoke", backend="auto")}
    assert results["02-export"].status == "failed" and "missing" in results["02-export"].error.lower()
    assert results["03-convert"].status == "blocked" and "02-export is failed" in results["03-convert"].error
    assert results["04-infer"].status == "blocked"
    assert _record(smoke_copy, "04-infer")["status"] == "blocked"
    assert onnx.stat().st_ino == before  # the previous complete export is back in place


def test_a_bad_image_halfway_fails_01_data_and_leaves_the_previous_inputs_whole(smoke_copy):
    """The second image unreadable: 01-data has rewritten the first input when it fails; the
    transaction puts every previous input back (the first one made distinguishable here)."""
    from zoobook.fingerprint import HashCache, globbed
    from zoobook.runner import run_model

    artifacts = smoke_copy / "artifacts"
    first = artifacts / "inputs" / "0.bin"
    marked = first.with_name(".0.bin.new")
    marked.write_bytes(b"\0" * 16 + first.read_bytes()[16:])
    os.replace(marked, first)  # a new file: the session's run keeps its own
    before = globbed(artifacts, ["inputs/*"], HashCache())
    used = _record(smoke_copy, "01-data")["parameters"]  # the generated set 01-data reads
    images = sorted((smoke_copy.parent / "datasets" / f"coco-synthetic-{used['num_images']}-s{used['seed']}"
                     / "val2017").glob("*.jpg"))
    broken = images[1].with_name(".broken")
    broken.write_bytes(b"not a jpeg")
    os.replace(broken, images[1])
    result = run_model(MODEL, ["data"], profile="smoke", backend="auto", force=True)[0]
    assert result.status == "failed" and images[1].name in result.error, result.error
    assert globbed(artifacts, ["inputs/*"], HashCache()) == before
    assert not (smoke_copy / ".previous" / "01-data").exists()
    assert _states()["02-export"] == "stale"


# ---------------------------------------------------------------------------------------
# Locks and parameters (no stage runs)


def test_a_second_run_of_the_same_model_is_refused_naming_the_holder(tmp_path, monkeypatch):
    from zoobook.runner import ModelLock

    monkeypatch.setenv("ZOOBOOK_RUNS", str(tmp_path / "runs"))
    with ModelLock("smoke", MODEL):
        proc = _cli("run", MODEL, "--profile", "smoke", "--stages", "data")
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert f"pid {os.getpid()}" in out and "--wait" in out
    assert not (tmp_path / "runs" / "smoke" / MODEL / "01-data.json").exists()


def test_a_model_another_run_holds_is_reported_and_the_other_models_go_on(tmp_path, monkeypatch):
    from zoobook.runner import ModelLock, run_chains

    monkeypatch.setenv("ZOOBOOK_RUNS", str(tmp_path / "runs"))
    with ModelLock("smoke", MODEL):
        results = run_chains([MODEL, "retinamask"], ["data"], profile="smoke", backend="auto")
    assert results["retinamask"][0].status == "ok"
    (held,) = results[MODEL]
    assert held.status == "blocked" and f"pid {os.getpid()}" in held.error
    assert not (tmp_path / "runs" / "smoke" / MODEL / "01-data.json").exists()  # the holder's to write


@pytest.mark.parametrize("args,message", [
    (["-p", "secnds=1"], "'secnds' (did you mean 'seconds'?)"),
    (["-p", "batch_size=[1]"], "(did you mean 'batch_sizes'?)"),
    (["-p", "profile=full"], "profile cannot be set with -p: use --profile"),
    (["-p", "backend=torch"], "backend cannot be set with -p"),
])
def test_a_parameter_no_notebook_takes_is_an_error(args, message, tmp_path):
    proc = _cli("run", MODEL, "--profile", "smoke", "--stages", "benchmark", *args,
                env={"ZOOBOOK_RUNS": str(tmp_path / "runs")})
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2 and message in out, out


def test_batch_size_zero_fails_before_any_work(smoke_copy):
    from zoobook.runner import run_model

    compiled = smoke_copy / "artifacts" / "compiled" / "onnxruntime.json"
    before = compiled.read_text()
    result = run_model(MODEL, ["convert"], profile="smoke", backend="auto", overrides={"batch_sizes": [0]})[0]
    assert result.status == "failed" and "batch_sizes=[0]" in result.error and result.seconds < 5, result.error
    assert compiled.read_text() == before
    assert _states()["04-infer"] == "stale"


# ---------------------------------------------------------------------------------------
# Many models at once


def test_two_models_on_a_two_worker_dask_cluster_give_the_sequential_records_and_book(tmp_path, monkeypatch):
    """01-data and 02-export of two models, one after the other, then again on a LocalCluster
    of 2 workers (each model's chain in order, the two at once) in the same runs folder: the
    same statuses, metrics, tables and fingerprint keys, and the same summary page. One
    thread per kernel in both (the workers' default on 2 cores), so that the parity figures
    are computed in the same order."""
    from zoobook.book import summary_markdown
    from zoobook.runner import run_chains

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("ZOOBOOK_RUNS", str(tmp_path / "runs"))
    models, stages, found = ["yolact_edge", "retinamask"], ["data", "export"], {}
    for mode, jobs in (("sequential", 1), ("dask", 2)):
        results = run_chains(models, stages, jobs=jobs, profile="smoke", backend="auto", force=True)
        assert {m: [(r.status, r.skipped) for r in rs] for m, rs in results.items()} == \
            {m: [("ok", False)] * 2 for m in models}
        records = {(m, s): _record(tmp_path / "runs" / "smoke" / m, s) for m in models for s in ("01-data", "02-export")}
        page = summary_markdown("smoke")  # less its date, where the time went and the stages' seconds
        page = page[:page.index("## Where the run's time went")] + page[page.index("## YolactEdge"):]
        found[mode] = ({k: (r["status"], r["metrics"], r["tables"], r["fingerprint"]["key"])
                        for k, r in records.items()},
                       [line.rsplit("|", 3)[0] if line.startswith("| [") else line for line in page.splitlines()
                        if not line.startswith("Built from")])
    assert found["dask"][0] == found["sequential"][0]
    assert found["dask"][1] == found["sequential"][1]


def test_a_fingerprint_comparison_names_the_first_part_that_differs():
    """Compared as recorded (JSON: a tuple is a list), each part in order, then the outputs."""
    from zoobook.fingerprint import compare

    recorded = {"notebook": "n", "parameters": {"input_size": [320, 320]}, "library": "l", "packages": {"numpy": "2"},
                "upstream": {"01-data": "k"}, "inputs": {"data/coco": "absent"}, "reads": {"a.bin": "1"},
                "writes": {"b.onnx": "2", "c.json": "3"}}
    assert compare(recorded, {**recorded, "parameters": {"input_size": (320, 320)}}) is None
    assert compare(recorded, {**recorded, "parameters": {"input_size": (320, 352)}}) == \
        "parameters changed: input_size [320, 320] -> [320, 352]"
    assert compare(recorded, {**recorded, "upstream": {"01-data": "j"}}) == "upstream changed: 01-data"
    assert compare(recorded, {**recorded, "writes": {"b.onnx": "2"}}) == "output missing: c.json"
    assert compare(recorded, {**recorded, "writes": {"b.onnx": "9", "c.json": "3"}}) == "output changed: b.onnx"
    assert compare(None, recorded).startswith("no fingerprint")
