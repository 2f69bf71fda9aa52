"""Kernels started ahead of their stage (zoobook.warm): the notebook runs in one as in a fresh
kernel, and the runner starts one only beside a stage that times nothing."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from zoobook import runner
from zoobook.warm import WarmKernel, kernel_env, warm_imports

PROBE = """import json, os, sys
print(json.dumps({"loaded": "zoobook.stages.steps" in sys.modules and "zoobook.models.semask" in sys.modules,
                  "names": sorted(n for n in globals() if not n.startswith("_")),
                  "cwd": os.getcwd(), "tqdm": os.environ.get("TQDM_DISABLE"), "x": x}))"""


def _probe_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": runner.default_kernel(), "language": "python", "display_name": "probe"}
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}), nbformat.v4.new_code_cell(PROBE)]
    nbformat.write(nb, path)
    return path


def test_a_notebook_runs_in_a_warm_kernel_as_in_a_fresh_one(tmp_path):
    import papermill

    folder = tmp_path / "notebooks"
    folder.mkdir()
    source = _probe_notebook(folder / "probe.ipynb")
    kernel, env = runner.default_kernel(), kernel_env()
    warm = WarmKernel(kernel, folder, env, warm_imports("semask"))
    try:
        assert warm.fits(kernel, folder, env)
        assert not warm.fits(kernel, tmp_path, env) and not warm.fits("another", folder, env)
        assert not warm.fits(kernel, folder, {**env, "ZOOBOOK_RUNS": "elsewhere"})
        papermill.execute_notebook(str(source), str(tmp_path / "out.ipynb"), parameters={"x": 2}, kernel_name=kernel,
                                   cwd=str(folder), progress_bar=False, km=warm.km)
        assert warm.fits(kernel, folder, env)  # papermill left it running: it is the runner's to stop
    finally:
        warm.shutdown()
    assert not warm.fits(kernel, folder, env)
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    probe = next(c for c in out.cells if c.cell_type == "code" and "json.dumps" in c.source)
    seen = json.loads(probe.outputs[0]["text"])
    assert seen["loaded"] and seen["x"] == 2 and seen["tqdm"] == "1" and seen["cwd"] == str(folder)
    assert "zoobook" not in seen["names"]  # imported ahead, but bound in no name the notebook sees
    first = next(c for c in out.cells if c.cell_type == "code")
    assert first.execution_count == 1  # the silent imports took no execution count


class _FakeWarm:
    started: list[str] = []
    stopped: list[str] = []

    def __init__(self, kernel_name, cwd, env, code) -> None:
        self.stage_folder = Path(cwd).name
        self.code = code
        self.settled = self.asked = self.gone = False
        _FakeWarm.started.append(self)

    def settle(self) -> None:
        self.settled = True

    def stop(self) -> None:
        self.asked = True

    def shutdown(self) -> None:
        self.asked = self.gone = True
        _FakeWarm.stopped.append(self)


@pytest.mark.parametrize("skip", [False, True])
def test_the_next_kernel_starts_only_beside_a_stage_that_times_nothing(skip, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOOBOOK_RUNS", str(tmp_path / "runs"))
    monkeypatch.setattr(runner, "WarmKernel", _FakeWarm)
    monkeypatch.setattr(_FakeWarm, "started", [])
    monkeypatch.setattr(_FakeWarm, "stopped", [])
    seen, quiet = [], {}

    def fake_stage(model, stage, *, _warm=None, _starting=None, **options):
        warm_count = len(_FakeWarm.started)
        # what runs beside the stage as it starts: kernels still importing, kernels still exiting
        quiet[stage] = not any((w.asked and not w.gone) or not (w.asked or w.settled) for w in _FakeWarm.started)
        if _starting and not skip:  # a stage skipped as up to date never calls it
            _starting()
        seen.append((stage, _warm, _FakeWarm.started[warm_count:]))
        return runner.StageResult(model, stage, "ok", 0.0, Path(), skipped=skip)

    monkeypatch.setattr(runner, "run_stage", fake_stage)
    runner.run_model("siammask", profile="smoke")
    started = {stage: new for stage, _, new in seen}
    if skip:
        assert _FakeWarm.started == []
        return
    # 00-train, 04-infer and 06-benchmark time things: nothing starts beside them
    assert {stage: len(new) for stage, new in started.items()} == {
        "00-train": 0, "01-data": 1, "02-export": 1, "03-convert": 1, "04-infer": 0, "05-evaluate": 1,
        "06-benchmark": 0}
    handed = {stage: warm for stage, warm, _ in seen}
    for before, after in (("01-data", "02-export"), ("02-export", "03-convert"), ("03-convert", "04-infer"),
                          ("05-evaluate", "06-benchmark")):
        assert handed[after] is started[before][0]  # the kernel started beside a stage goes to the next one
    assert handed["00-train"] is None and handed["01-data"] is None and handed["05-evaluate"] is None
    assert all(w.code == warm_imports("siammask") and w.stage_folder == "siammask" for w in _FakeWarm.started)
    assert sorted(map(id, _FakeWarm.stopped)) == sorted(map(id, _FakeWarm.started))  # each stopped once
    # a timed stage starts with every kernel settled and none exiting; an untimed one need not wait
    assert quiet["00-train"] and quiet["04-infer"] and quiet["06-benchmark"]
    assert not quiet["03-convert"]  # 02-export's kernel is still exiting (the fake never finishes alone)


def test_a_kernel_started_for_a_stage_that_does_not_come_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOOBOOK_RUNS", str(tmp_path / "runs"))
    monkeypatch.setattr(runner, "WarmKernel", _FakeWarm)
    monkeypatch.setattr(_FakeWarm, "started", [])
    monkeypatch.setattr(_FakeWarm, "stopped", [])

    def interrupted_stage(model, stage, *, _warm=None, _starting=None, **options):
        _starting()
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_stage", interrupted_stage)
    with pytest.raises(KeyboardInterrupt):
        runner.run_model("semask", stages=["01-data", "02-export"], profile="smoke")
    assert len(_FakeWarm.started) == 1 and _FakeWarm.stopped == _FakeWarm.started

    def last_stage(model, stage, *, _warm=None, _starting=None, **options):
        assert _starting is None  # no stage follows
        return runner.StageResult(model, stage, "ok", 0.0, Path())

    monkeypatch.setattr(runner, "run_stage", last_stage)
    runner.run_model("semask", stages=["02-export"], profile="smoke")
    assert len(_FakeWarm.started) == 1


def test_a_warm_kernel_leaves_no_connection_open(tmp_path):
    """nbclient does not close the client it makes for a kernel manager it was handed; the
    warm kernel's shutdown does (13 file descriptors a stage before)."""
    import os

    import papermill

    source = _probe_notebook(tmp_path / "probe.ipynb")
    kernel, env = runner.default_kernel(), kernel_env()
    open_fds = []
    for _ in range(3):
        warm = WarmKernel(kernel, tmp_path, env, "pass")
        papermill.execute_notebook(str(source), str(tmp_path / "out.ipynb"), kernel_name=kernel, progress_bar=False,
                                   km=warm.km)
        warm.shutdown()
        open_fds.append(len(os.listdir("/proc/self/fd")))
    assert open_fds[2] <= open_fds[0], open_fds


def test_settle_waits_for_the_imports_and_stop_does_not_wait_for_the_exit(tmp_path):
    from jupyter_core.utils import run_sync

    marker = tmp_path / "imported"
    # imports that take a second, and an exit that takes two (as torch's teardown takes 1.5 s)
    code = (f"import atexit, time; time.sleep(1); open({str(marker)!r}, 'w').close(); "
            "atexit.register(time.sleep, 2)")
    kernel, env = runner.default_kernel(), kernel_env()
    warm = WarmKernel(kernel, tmp_path, env, code)
    try:
        warm.settle()
        assert marker.exists()  # the imports have run: the kernel is idle from here on
        warm.stop()
        assert run_sync(warm.km.is_alive)()  # asked to exit, still tearing down: stop did not wait
    finally:
        warm.reap()
    assert not run_sync(warm.km.is_alive)() and not warm.fits(kernel, tmp_path, env)  # gone
    warm.reap()  # a second reap (and a shutdown after it) does nothing
    warm.shutdown()
