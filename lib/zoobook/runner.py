"""Run stage notebooks headlessly with papermill.

Each stage notebook ``notebooks/<model>/NN-<stage>.ipynb`` is executed into
``runs/<profile>/<model>/NN-<stage>.ipynb`` with ``profile``, ``backend``, the profile's
stage parameters and the user's overrides injected (only names the notebook declares in its
``parameters`` cell). The notebook writes its own record when it succeeds; when it fails, the
runner keeps the executed notebook with the error, records the stage as failed, and goes on
with the other stages. :func:`declaration` says what a stage reads, writes and takes.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

from zoobook.models import get_port, get_spec
from zoobook.paths import check_profile, model_run_dir, project_root
from zoobook.records import StageRecorder, read_record
from zoobook.stages.spec import StageIO

KERNEL_NAME = "zoobook"


@dataclass
class StageResult:
    model: str
    stage: str
    status: str
    seconds: float
    notebook: Path
    error: str | None = None


def notebook_path(model: str, stage: str) -> Path:
    return project_root() / "notebooks" / model / f"{stage}.ipynb"


def default_kernel() -> str:
    """The project's registered kernel when it exists, else the current environment's."""
    from jupyter_client.kernelspec import KernelSpecManager

    return KERNEL_NAME if KERNEL_NAME in KernelSpecManager().find_kernel_specs() else "python3"


def notebook_parameters(path: Path) -> list[str]:
    """The names the notebook's ``parameters`` cell declares, in its order."""
    import papermill

    return list(papermill.inspect_notebook(str(path)))


def declaration(model: str, stage: str, backend: str = "auto") -> StageIO:
    """What ``stage`` of ``model`` depends on and leaves, as its port declares it
    (:meth:`~zoobook.stages.port.Port.stage_io`), with ``{backend}`` in its paths resolved
    for ``backend`` (``auto`` first resolved) and, where the port names none, ``parameters``
    filled in with those its notebook's ``parameters`` cell declares."""
    from zoobook.backends import capabilities

    stage = get_spec(model).resolve_stage(stage)
    io = get_port(model).stage_io(stage)
    names = notebook_parameters(notebook_path(model, stage))
    unknown = sorted(set(io.parameters) - set(names))
    if unknown:
        raise ValueError(f"{model} {stage}: the port declares parameters its notebook does not take: {unknown}")
    paths = io.paths(capabilities(backend).name)
    return replace(io, reads=tuple(paths["reads"]), writes=tuple(paths["writes"]),
                   parameters=io.parameters or tuple(names))


def run_stage(model: str, stage: str, *, profile: str = "default", backend: str = "auto",
              overrides: dict | None = None, kernel: str | None = None, timeout: int | None = 3600,
              progress: bool = False) -> StageResult:
    import papermill

    spec = get_spec(model)
    stage = spec.resolve_stage(stage)
    source = notebook_path(model, stage)
    output = model_run_dir(check_profile(profile), model) / f"{stage}.ipynb"
    output.parent.mkdir(parents=True, exist_ok=True)
    declared = set(notebook_parameters(source))
    parameters = {"profile": profile, "backend": backend, **spec.stage_parameters(profile, stage),
                  **(overrides or {})}
    parameters = {k: v for k, v in parameters.items() if k in declared}
    start = time.perf_counter()
    started = read_record(profile, model, stage)
    quiet = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # the kernel inherits it: no progress bars in executed notebooks
    try:
        papermill.execute_notebook(str(source), str(output), parameters=parameters,
                                   kernel_name=kernel or default_kernel(), cwd=str(source.parent),
                                   execution_timeout=timeout, progress_bar=progress, log_output=False)
    except Exception as err:  # papermill keeps the executed notebook with the error in it
        _restore("TQDM_DISABLE", quiet)
        message = _short_error(err)
        recorder = StageRecorder(model, stage, profile, backend, parameters)
        recorder.notes.append(f"executed notebook: {output}")
        recorder.error_details = _details_written_by_the_notebook(profile, model, stage, started)
        recorder.finish(status="failed", error=message)
        return StageResult(model, stage, "failed", time.perf_counter() - start, output, message)
    _restore("TQDM_DISABLE", quiet)
    record = read_record(profile, model, stage)
    if record is None or record.get("status") != "ok":
        message = "the notebook finished without writing an ok record"
        StageRecorder(model, stage, profile, backend, parameters).finish(status="failed", error=message)
        return StageResult(model, stage, "failed", time.perf_counter() - start, output, message)
    return StageResult(model, stage, "ok", time.perf_counter() - start, output)


def _details_written_by_the_notebook(profile: str, model: str, stage: str, before: dict | None) -> dict | None:
    """The ``error_details`` of a failed record the notebook itself wrote during this run (a
    record other than ``before``, the one there when the run began), else None."""
    record = read_record(profile, model, stage)
    if record is None or record == before or record.get("status") != "failed":
        return None
    return record.get("error_details")


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _short_error(err: Exception) -> str:
    name = getattr(err, "ename", type(err).__name__)
    value = getattr(err, "evalue", str(err))
    return f"{name}: {value}" if value else "".join(traceback.format_exception_only(err)).strip()


def run_model(model: str, stages: list[str] | None = None, **options) -> list[StageResult]:
    """Run ``stages`` (all by default) of ``model`` in order; a failure does not stop the rest."""
    spec = get_spec(model)
    chosen = [spec.resolve_stage(s) for s in stages] if stages else list(spec.stages)
    return [run_stage(model, stage, **options) for stage in chosen]
