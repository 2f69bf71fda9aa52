"""Shared fixtures. Tests never read ../shared: goldens are trimmed copies in tests/golden/."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).parent
GOLDEN = TESTS / "golden" / "yolact_edge"
FAKES = TESTS / "fakes"


@pytest.fixture(scope="session")
def golden() -> dict:
    with np.load(GOLDEN / "golden_trimmed.npz") as data:
        return dict(data)


@pytest.fixture(scope="session")
def golden_image_path() -> Path:
    return GOLDEN / "input_image_bgr_427x640.png"


@pytest.fixture(scope="session")
def recipe_model():
    from zoobook.models.yolact_edge.checkpoint import build

    model, provenance = build(None)  # no data/weights in the isolated data dir: recipe
    assert provenance["kind"] == "recipe"
    return model


@pytest.fixture(scope="session", autouse=True)
def isolated_dirs(tmp_path_factory):
    """Runs and data of the test session live in a temporary folder, never in the project."""
    root = tmp_path_factory.mktemp("zoobook")
    (root / "data").mkdir()
    old = {k: os.environ.get(k) for k in ("ZOOBOOK_RUNS", "ZOOBOOK_DATA")}
    os.environ["ZOOBOOK_RUNS"] = str(root / "runs")
    os.environ["ZOOBOOK_DATA"] = str(root / "data")
    yield root
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def default_sigint(request):
    """Every test starts and ends with Python's own SIGINT handler. A child process inherits an
    ignored SIGINT, and the tests of interruption (a CLI run sent SIGINT, Ctrl-C while a Dask
    client starts) need it as Python sets it; a test that leaves another handler behind is named
    in a warning and the handler is put back."""
    import signal
    import warnings

    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    handler = signal.getsignal(signal.SIGINT)
    if handler is not signal.default_int_handler:
        warnings.warn(f"{request.node.nodeid} left SIGINT's handler as {handler!r}; put back")
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def golden_outputs(recipe_model, golden_image_path):
    """The recipe model's six graph outputs on the golden image, through our preprocessing."""
    import torch

    from zoobook.models.yolact_edge.preprocess import preprocess, read_bgr

    x = torch.from_numpy(preprocess(read_bgr(golden_image_path))[None])
    with torch.inference_mode():
        return x.numpy(), [o.numpy() for o in recipe_model(x)]


@pytest.fixture
def fake_ascend(monkeypatch, tmp_path):
    """Put the FAKE atc, npu-smi and ais_bench first on PATH / sys.path."""
    import sys

    monkeypatch.setenv("PATH", f"{FAKES / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ASCEND_LOG", str(tmp_path / "atc.log"))
    monkeypatch.syspath_prepend(str(FAKES))
    for name in [m for m in sys.modules if m.startswith("ais_bench")]:
        monkeypatch.delitem(sys.modules, name)
    return tmp_path / "atc.log"


_SMOKE_RUNS: dict[str, dict] = {}


def run_smoke(model: str) -> dict:
    """All stages of ``model`` on the smoke profile through papermill: {stage: result}. Run
    once per test session; the shared stage suite and the model's own tests read the same run."""
    from zoobook.runner import run_model

    if model not in _SMOKE_RUNS:
        _SMOKE_RUNS[model] = {r.stage: r for r in run_model(model, profile="smoke", backend="auto", timeout=1200)}
    return _SMOKE_RUNS[model]


_FAKE_NPU_RUNS: dict[str, Path] = {}
#: parameters the FAKE Ascend run needs beyond the smoke profile's
FAKE_NPU_OVERRIDES = {"yolact_edge": {"batch_sizes": [1]}}
FAKE_NPU_STAGES = ["convert", "infer", "evaluate", "benchmark"]


def run_fake_npu(model: str) -> tuple[Path, list]:
    """03-convert to 06-benchmark of ``model`` with backend ``auto``, the kernels (and the
    benchmark's processes) seeing the FAKE atc, npu-smi and ais_bench (tests/fakes), on a copy
    of the smoke run's data and export; once per test session. Returns the folder holding
    ``runs/`` and ``atc.log`` (every ATC command line), and the stage results."""
    from zoobook.runner import run_model

    if model not in _FAKE_NPU_RUNS:
        smoke = Path(os.environ["ZOOBOOK_RUNS"]) / "smoke"
        run_smoke(model)
        folder = Path(tempfile.mkdtemp(prefix=f"fake-npu-{model}-", dir=Path(os.environ["ZOOBOOK_RUNS"]).parent))
        # the upstream stages' records and artifacts (linked: stages replace files, never
        # rewrite them), the generated datasets; not what the stages run here will write
        shutil.copytree(smoke / model, folder / "runs" / "smoke" / model, copy_function=os.link,
                        ignore=shutil.ignore_patterns("outputs", "compiled", "results", "scores", "demo",
                                                      "evaluation.json", "0[3-6]-*", ".lock*", ".previous"))
        if (smoke / "datasets").is_dir():
            shutil.copytree(smoke / "datasets", folder / "runs" / "smoke" / "datasets", copy_function=os.link)
        env = {"ZOOBOOK_RUNS": str(folder / "runs"), "FAKE_ASCEND_LOG": str(folder / "atc.log"),
               "PATH": f"{FAKES / 'bin'}{os.pathsep}{os.environ['PATH']}",
               "PYTHONPATH": f"{FAKES}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        sys.path.insert(0, str(FAKES))  # the runner resolves "auto" as the kernels will
        try:
            results = run_model(model, FAKE_NPU_STAGES, profile="smoke", backend="auto",
                                overrides=FAKE_NPU_OVERRIDES.get(model), timeout=900)
        finally:
            sys.path.remove(str(FAKES))
            for name in [m for m in sys.modules if m.startswith("ais_bench")]:
                del sys.modules[name]
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        _FAKE_NPU_RUNS[model] = (folder, results)
    return _FAKE_NPU_RUNS[model]


def fake_npu_record(folder: Path, model: str, stage: str) -> dict:
    return json.loads((folder / "runs" / "smoke" / model / f"{stage}.json").read_text())


def assert_all_stages_ok(model: str, results: dict) -> None:
    """Every stage ran, in order, ok, recorded as such, on generated data."""
    from zoobook.models import get_spec
    from zoobook.records import read_record

    stages = get_spec(model).stages
    assert list(results) == list(stages)
    failed = {s: r.error for s, r in results.items() if r.status != "ok"}
    assert not failed, failed
    for stage in stages:
        record = read_record("smoke", model, stage)
        assert record["status"] == "ok" and record["profile"] == "smoke"
        assert record["provenance"]["data"]["kind"] == "synthetic"
