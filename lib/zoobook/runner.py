"""Run stage notebooks headlessly with papermill, and only those whose result is out of date.

Each stage notebook ``notebooks/<model>/NN-<stage>.ipynb`` is executed into
``runs/<profile>/<model>/NN-<stage>.ipynb`` with ``profile``, ``backend``, the profile's stage
parameters and the user's overrides injected (an override no selected notebook declares is
an error). A stage's life, in its record ``runs/<profile>/<model>/NN-<stage>.json``:

- ``running`` (host, pid, start) is written before it starts;
- ``ok``: the notebook wrote its record; the runner adds the stage's fingerprint
  (:mod:`zoobook.fingerprint`): what it read, wrote and ran with;
- ``failed``: the executed notebook keeps the error; the other stages and models go on;
- ``interrupted``: SIGINT or SIGTERM during the stage, or a ``running`` record whose
  process is gone;
- ``blocked``: an upstream stage is failed, missing, stale or itself blocked; it did not run.

A stage is *up to date* when its record is ok, its fingerprint matches what it would run with
now, and its outputs are present and unchanged; :func:`run_model` skips it (unless ``force``)
and :func:`stage_states` says why any other stage is not. A stage that is not resumable
(:attr:`~zoobook.stages.spec.StageIO.resumable`) is a transaction: what it wrote before is
moved aside when it starts and put back if it does not end ok, so a failure never leaves a
mixture of old and new outputs. One run per model and profile holds its lock at a time.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable

import tqdm

from zoobook import fingerprint
from zoobook.atomic import write_json_atomic
from zoobook.machine import git_commit, versions
from zoobook.models import get_port, get_spec
from zoobook.paths import check_profile, model_run_dir, project_root
from zoobook.records import StageRecorder, read_record, record_path
from zoobook.stages.spec import StageIO
from zoobook.warm import KERNEL_ARGUMENTS, WarmKernel, kernel_env, warm_imports

KERNEL_NAME = "zoobook"
#: tqdm reads TQDM_* when it is imported: imported here, before the runner sets TQDM_DISABLE
#: for the kernels it starts, so that the runner's own bars stay on
_TQDM_VERSION = tqdm.__version__
#: parameters the runner sets from its own options, never from ``overrides``
RESERVED = ("profile", "backend")


class Interrupted(KeyboardInterrupt):
    """SIGTERM, turned into the same unwinding as SIGINT."""


class LockHeld(RuntimeError):
    """Another run of the same model and profile holds its lock."""


@dataclass
class StageResult:
    model: str
    stage: str
    status: str
    seconds: float
    notebook: Path
    error: str | None = None
    skipped: bool = False


@dataclass
class StageState:
    model: str
    stage: str
    state: str
    reason: str = ""
    record: dict | None = None


def notebook_path(model: str, stage: str) -> Path:
    return project_root() / "notebooks" / model / f"{stage}.ipynb"


def default_kernel() -> str:
    """The project's registered kernel when it exists, else the current environment's."""
    from jupyter_client.kernelspec import KernelSpecManager

    return KERNEL_NAME if KERNEL_NAME in KernelSpecManager().find_kernel_specs() else "python3"


_DECLARED: dict[Path, tuple[float, list[str]]] = {}


def notebook_parameters(path: Path) -> list[str]:
    """The names the notebook's ``parameters`` cell declares, in its order."""
    import papermill

    mtime = path.stat().st_mtime_ns
    if path not in _DECLARED or _DECLARED[path][0] != mtime:
        _DECLARED[path] = (mtime, list(papermill.inspect_notebook(str(path))))
    return _DECLARED[path][1]


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


# ---------------------------------------------------------------------------------------
# Parameters


def stage_parameters(model: str, stage: str, profile: str, backend: str, overrides: dict | None = None) -> dict:
    """What the runner injects into ``stage``: profile, backend (resolved), the profile's
    parameters and ``overrides``, each only where the notebook declares it."""
    from zoobook.backends import resolve

    declared = set(notebook_parameters(notebook_path(model, stage)))
    parameters = {"profile": profile, "backend": resolve(backend),
                  **get_spec(model).stage_parameters(profile, stage), **(overrides or {})}
    return {k: v for k, v in parameters.items() if k in declared}


def check_overrides(model: str, stages: list[str], overrides: dict | None) -> None:
    """An override must be declared by a notebook of ``stages``, and not be ``profile`` or
    ``backend`` (the runner's own options): else a ValueError naming what is declared."""
    if not overrides:
        return
    reserved = sorted(set(overrides) & set(RESERVED))
    if reserved:
        raise ValueError(f"{', '.join(reserved)} cannot be set with -p: use --{reserved[0]}")
    declared = sorted({n for s in stages for n in notebook_parameters(notebook_path(model, s))} - set(RESERVED))
    problems = []
    for name in sorted(set(overrides) - set(declared)):
        close = difflib.get_close_matches(name, declared, n=1)
        problems.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    if problems:
        raise ValueError(f"{model} {', '.join(stages)}: no notebook takes {', '.join(problems)}; "
                         f"they take: {', '.join(declared)}")


# ---------------------------------------------------------------------------------------
# Fingerprints and states


class _Model:
    """One model under one profile and backend: declarations, hashes, states, computed once."""

    def __init__(self, model: str, profile: str, backend: str) -> None:
        from zoobook.backends import resolve

        self.model, self.profile, self.backend = model, check_profile(profile), resolve(backend)
        self.spec = get_spec(model)
        self.folder = model_run_dir(profile, model)
        self.cache = fingerprint.HashCache(self.folder / ".hashes.json")
        self._library: str | None = None
        self._packages: dict | None = None

    def io(self, stage: str) -> StageIO:
        return declaration(self.model, stage, self.backend)

    def parts(self, stage: str, parameters: dict, upstream_keys: dict) -> dict:
        """The fingerprint of ``stage`` as it would run now with ``parameters`` (``writes`` not yet)."""
        io = self.io(stage)
        if self._library is None:
            self._library = fingerprint.library(self.model, self.cache)
            self._packages = versions()
        artifacts = self.folder / "artifacts"
        return {
            "notebook": fingerprint.notebook(notebook_path(self.model, stage)),
            "parameters": parameters, "library": self._library, "packages": self._packages,
            "upstream": upstream_keys,
            "inputs": fingerprint.inputs(io.inputs, self.cache),
            "reads": fingerprint.globbed(artifacts, io.reads, self.cache),
        }

    def writes(self, stage: str) -> dict:
        return fingerprint.globbed(self.folder / "artifacts", self.io(stage).writes, self.cache)

    def upstream_keys(self, stage: str) -> dict:
        keys = {}
        for up in self.io(stage).upstream:
            record = read_record(self.profile, self.model, up) or {}
            keys[up] = (record.get("fingerprint") or {}).get("key")
        return keys

    def state(self, stage: str, earlier: dict[str, StageState], parameters: dict | None = None) -> StageState:
        """The state of ``stage``'s record: its fingerprint checked against what it depends on
        now (with ``parameters``, those it would run with, else those it ran with)."""
        record = read_record(self.profile, self.model, stage)
        if record is None:
            return StageState(self.model, stage, "not run")
        status = record.get("status")
        if status == "running":
            alive = _alive(record)
            return StageState(self.model, stage, "running" if alive else "interrupted",
                              "" if alive else f"its process ({record.get('host')}, pid {record.get('pid')}) is gone",
                              record)
        if status != "ok":
            return StageState(self.model, stage, status, record.get("error") or "", record)
        for up in self.io(stage).upstream:
            if up in earlier and earlier[up].state != "ok":
                return StageState(self.model, stage, "stale", f"upstream {up} is {earlier[up].state}", record)
        recorded = record.get("fingerprint")
        if not recorded:
            return StageState(self.model, stage, "stale", fingerprint.compare(None, {}), record)
        current = self.parts(stage, recorded["parameters"] if parameters is None else parameters,
                             self.upstream_keys(stage))
        current["writes"] = self.writes(stage)
        reason = fingerprint.compare(recorded, current)
        return StageState(self.model, stage, "stale" if reason else "ok", reason or "", record)


def _alive(record: dict) -> bool:
    """Whether the process a ``running`` record names still runs (on another host: assumed so)."""
    if record.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(record.get("pid", -1)), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def stage_states(model: str, profile: str = "default", backend: str = "auto") -> list[StageState]:
    """Every stage of ``model``, in order: ok, stale (with the reason), running, interrupted,
    failed, blocked or not run. A stage whose parameters differ from the profile's is ok when
    its result still holds for them (the reason says they differ)."""
    ctx = _Model(model, profile, backend)
    states: dict[str, StageState] = {}
    for stage in ctx.spec.stages:
        states[stage] = state = ctx.state(stage, states)
        if state.state == "ok":
            now = stage_parameters(model, stage, profile, backend)
            if now != state.record["fingerprint"]["parameters"]:
                state.reason = "ok for its own parameters; " + (fingerprint.compare(
                    {"parameters": state.record["fingerprint"]["parameters"]}, {"parameters": now}) or "")
    ctx.cache.save()
    return list(states.values())


# ---------------------------------------------------------------------------------------
# Lock and transaction


class ModelLock:
    """``runs/<profile>/<model>/.lock`` (a file lock), with who holds it in ``.lock.json``."""

    def __init__(self, profile: str, model: str, *, wait: bool = False) -> None:
        from filelock import FileLock

        self.folder = model_run_dir(profile, model)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.lock = FileLock(self.folder / ".lock")
        self.holder = self.folder / ".lock.json"
        self.wait, self.model, self.profile = wait, model, profile

    def __enter__(self) -> ModelLock:
        from filelock import Timeout

        try:
            self.lock.acquire(timeout=-1 if self.wait else 0)
        except Timeout:
            holder = json.loads(self.holder.read_text()) if self.holder.is_file() else {}
            raise LockHeld(f"{self.model} ({self.profile}) is being run by pid {holder.get('pid', '?')} on "
                           f"{holder.get('host', '?')} since {holder.get('since', '?')}: "
                           f"{holder.get('command', '')}; wait for it with --wait") from None
        write_json_atomic(self.holder, {"host": socket.gethostname(), "pid": os.getpid(),
                                        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                        "command": " ".join(sys.argv)})
        return self

    def __exit__(self, *exc) -> None:
        self.holder.unlink(missing_ok=True)
        self.lock.release()


def _previous(folder: Path, stage: str) -> Path:
    return folder / ".previous" / stage


def _set_aside(ctx: _Model, stage: str) -> None:
    """Move what ``stage`` wrote before into ``.previous/<stage>/`` (same relative paths)."""
    artifacts, backup = ctx.folder / "artifacts", _previous(ctx.folder, stage)
    shutil.rmtree(backup, ignore_errors=True)
    for rel in fingerprint.globbed(artifacts, ctx.io(stage).writes, fingerprint.HashCache(hashing=False)):
        target = backup / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(artifacts / rel, target)
    backup.mkdir(parents=True, exist_ok=True)


def _settle(ctx: _Model, stage: str, ok: bool) -> None:
    """End ``stage``'s transaction: on success drop what was set aside; otherwise remove what
    it wrote and put the previous outputs back."""
    artifacts, backup = ctx.folder / "artifacts", _previous(ctx.folder, stage)
    if not backup.is_dir():
        return
    if not ok:
        for rel in fingerprint.globbed(artifacts, ctx.io(stage).writes, fingerprint.HashCache(hashing=False)):
            (artifacts / rel).unlink()
        for path in sorted(p for p in backup.rglob("*") if p.is_file()):
            target = artifacts / path.relative_to(backup)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    shutil.rmtree(backup, ignore_errors=True)


def recover(ctx: _Model) -> list[str]:
    """Finish transactions a killed run left: a stage set aside whose record is not ok with a
    fingerprint gets its previous outputs back. Returns the stages recovered."""
    root = ctx.folder / ".previous"
    done = []
    for backup in sorted(root.iterdir()) if root.is_dir() else []:
        record = read_record(ctx.profile, ctx.model, backup.name) or {}
        ok = record.get("status") == "ok" and bool(record.get("fingerprint"))
        _settle(ctx, backup.name, ok)
        if not ok:
            done.append(backup.name)
            if record.get("status") == "running":
                _write_status(ctx, backup.name, "interrupted", record.get("parameters", {}),
                              "the run was killed; its previous outputs were restored")
    return done


# ---------------------------------------------------------------------------------------
# Running


def _write_status(ctx: _Model, stage: str, status: str, parameters: dict, error: str | None = None,
                  **extra) -> None:
    recorder = StageRecorder(ctx.model, stage, ctx.profile, ctx.backend, parameters, check=False)
    recorder.finish(status=status, error=error, **extra)


def run_stage(model: str, stage: str, *, profile: str = "default", backend: str = "auto",
              overrides: dict | None = None, kernel: str | None = None, timeout: int | None = 3600,
              progress: bool = False, force: bool = True, _ctx: _Model | None = None,
              _earlier: dict[str, StageState] | None = None, _warm: WarmKernel | None = None,
              _starting: Callable[[], None] | None = None) -> StageResult:
    """Run one stage (see the module's docstring); with ``force`` off, skip it when up to date.
    The caller holds the model's lock (:func:`run_model` does). ``_warm``: a kernel started
    ahead for this stage, used where it fits (the caller shuts it down); ``_starting`` is
    called just before the notebook runs (not when the stage is skipped or blocked)."""
    import papermill

    ctx = _ctx or _Model(model, profile, backend)
    stage = ctx.spec.resolve_stage(stage)
    source = notebook_path(model, stage)
    output = ctx.folder / f"{stage}.ipynb"
    output.parent.mkdir(parents=True, exist_ok=True)
    parameters = stage_parameters(model, stage, profile, backend, overrides)
    earlier = _earlier if _earlier is not None else {s.stage: s for s in _upstream_states(ctx, stage)}
    blockers = [up for up in ctx.io(stage).upstream if up in earlier and earlier[up].state != "ok"]
    if blockers:
        first = earlier[blockers[0]]
        message = (f"upstream {first.stage} is {first.state}" + (f" ({first.reason})" if first.reason else "")
                   + (f"; so are {', '.join(blockers[1:])}" if blockers[1:] else ""))
        _write_status(ctx, stage, "blocked", parameters, message)
        return StageResult(model, stage, "blocked", 0.0, output, message)
    if not force:
        state = ctx.state(stage, earlier, parameters)
        if state.state == "ok":
            return StageResult(model, stage, "ok", 0.0, output, skipped=True)
    from zoobook.params import check_values

    try:
        check_values(model, stage, parameters)
    except ValueError as err:
        _write_status(ctx, stage, "failed", parameters, str(err))
        return StageResult(model, stage, "failed", 0.0, output, str(err))
    upstream = ctx.upstream_keys(stage)
    parts = ctx.parts(stage, parameters, upstream)
    resumable = ctx.io(stage).resumable
    start = time.perf_counter()
    _write_status(ctx, stage, "running", parameters, host=socket.gethostname(), pid=os.getpid())
    if not resumable:
        _set_aside(ctx, stage)
    kernel = kernel or default_kernel()
    ready = {"km": _warm.km} if _warm is not None and _warm.fits(kernel, source.parent, kernel_env()) else {}
    if _starting:
        _starting()
    quiet = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # the kernel inherits it: no progress bars in executed notebooks
    status, message = "ok", None
    try:
        papermill.execute_notebook(str(source), str(output), parameters=parameters, kernel_name=kernel,
                                   cwd=str(source.parent), execution_timeout=timeout, progress_bar=progress,
                                   log_output=False, extra_arguments=list(KERNEL_ARGUMENTS), **ready)
    except KeyboardInterrupt:
        status, message = "interrupted", "interrupted (SIGINT or SIGTERM)"
    except Exception as err:  # papermill keeps the executed notebook with the error in it
        message = _short_error(err)
        status = "interrupted" if getattr(err, "ename", "") == "KeyboardInterrupt" else "failed"
    finally:
        _restore("TQDM_DISABLE", quiet)
    seconds = time.perf_counter() - start
    record = read_record(profile, model, stage)
    if status == "ok" and (record is None or record.get("status") != "ok"):
        status, message = "failed", "the notebook finished without writing an ok record"
    if status == "ok":
        record["fingerprint"] = {**parts, "writes": ctx.writes(stage),
                                 "key": fingerprint.key(parts), "commit": git_commit()}
        write_json_atomic(record_path(profile, model, stage), record)
    else:
        details = record.get("error_details") if record and record.get("status") == "failed" else None
        _write_status(ctx, stage, status, parameters, message, notes=[f"executed notebook: {output.name}"],
                      error_details=details)
    if not resumable:
        _settle(ctx, stage, status == "ok")
    ctx.cache.save()
    if status == "interrupted":
        raise KeyboardInterrupt(message)
    return StageResult(model, stage, status, seconds, output, message)


def _upstream_states(ctx: _Model, stage: str) -> list[StageState]:
    states: dict[str, StageState] = {}
    for s in ctx.spec.stages:
        if s == stage:
            break
        states[s] = ctx.state(s, states)
    return list(states.values())


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _short_error(err: Exception) -> str:
    name = getattr(err, "ename", type(err).__name__)
    value = getattr(err, "evalue", str(err))
    return f"{name}: {value}" if value else "".join(traceback.format_exception_only(err)).strip()


def chosen_stages(model: str, stages: list[str] | None) -> list[str]:
    spec = get_spec(model)
    return [spec.resolve_stage(s) for s in stages] if stages else list(spec.stages)


def run_model(model: str, stages: list[str] | None = None, *, profile: str = "default", backend: str = "auto",
              overrides: dict | None = None, force: bool = False, wait: bool = False,
              on_start: Callable[[str, str], None] | None = None,
              on_done: Callable[[StageResult], None] | None = None, warm_ahead: bool = True,
              **options) -> list[StageResult]:
    """Run ``stages`` (all by default) of ``model`` in order under its lock, skipping those up
    to date unless ``force``; a failure does not stop the rest (stages downstream of it are
    blocked). SIGINT/SIGTERM record the running stage as interrupted and stop the run.
    ``warm_ahead``: while a stage that times nothing runs, start the next one's kernel beside
    it (:mod:`zoobook.warm`); a stage's kernel is asked to exit when the stage ends, and before
    a timed stage every kernel started ahead has finished its imports and every one asked to
    exit is gone."""
    chosen = chosen_stages(model, stages)
    check_overrides(model, chosen, overrides)
    results = []
    warm: dict[str, WarmKernel] = {}  # stage -> its kernel, started while the stage before it ran
    stopping: list[WarmKernel] = []  # asked to exit after their stage, not yet reaped
    with ModelLock(profile, model, wait=wait), _sigterm_interrupts():
        ctx = _Model(model, profile, backend)
        recover(ctx)
        states: dict[str, StageState] = {}
        order = [stage for stage in ctx.spec.stages if stage in chosen]
        try:
            for stage in ctx.spec.stages:
                if stage in chosen:
                    if on_start:
                        on_start(model, stage)
                    if ctx.io(stage).timed:  # a quiet machine: no imports running, no kernel exiting
                        for kernel in warm.values():
                            kernel.settle()
                        _reap(stopping)
                    following = order[order.index(stage) + 1:][:1]
                    ahead = (partial(_warm_kernel, warm, model, following[0], options.get("kernel"))
                             if warm_ahead and following and not ctx.io(stage).timed else None)
                    result = run_stage(model, stage, profile=profile, backend=backend, overrides=overrides,
                                       force=force, _ctx=ctx, _earlier=states, _warm=warm.get(stage),
                                       _starting=ahead, **options)
                    if stage in warm:
                        kernel = warm.pop(stage)
                        kernel.stop()
                        stopping.append(kernel)
                    results.append(result)
                    if on_done:
                        on_done(result)
                states[stage] = ctx.state(stage, states)
        finally:
            stopping.extend(warm.values())
            _reap(stopping)
    return results


def _warm_kernel(into: dict[str, WarmKernel], model: str, stage: str, kernel: str | None) -> None:
    """Start a kernel now for ``stage`` (:mod:`zoobook.warm`) into ``into``; where that fails
    the stage starts its own kernel."""
    try:
        into[stage] = WarmKernel(kernel or default_kernel(), notebook_path(model, stage).parent, kernel_env(),
                                 warm_imports(model))
    except Exception as err:  # noqa: BLE001 - a kernel started early only saves time
        print(f"zoobook: could not start {model} {stage}'s kernel ahead ({_short_error(err)}); "
              "it will start its own", file=sys.stderr)


def _reap(kernels: list[WarmKernel]) -> None:
    """Wait for every kernel in ``kernels`` (asked to exit, or not yet) to be gone; empty it."""
    while kernels:
        kernels.pop().shutdown()


class _sigterm_interrupts:
    """Within the block, SIGTERM unwinds like SIGINT (in the main thread only)."""

    def __enter__(self):
        self.previous = None
        try:
            self.previous = signal.signal(signal.SIGTERM, self._raise)
        except ValueError:  # not the main thread
            pass
        return self

    @staticmethod
    def _raise(signum, frame):
        raise Interrupted("SIGTERM")

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


# ---------------------------------------------------------------------------------------
# Many models at once


def run_chains(models: list[str], stages: list[str] | None = None, *, jobs: int = 1, scheduler: str | None = None,
               on_start: Callable[[str, str], None] | None = None,
               on_done: Callable[[StageResult], None] | None = None, **options) -> dict[str, list[StageResult]]:
    """Run each model's chain of ``stages`` (:func:`run_model`'s options). The chains are
    independent: with ``jobs`` > 1 or a Dask ``scheduler`` they run at once
    (:mod:`zoobook.parallel`), each in order; stages on an accelerator backend ask for one
    device (the Dask resource ``NPU``) and get its id as ``device_id``."""
    for model in models:
        check_overrides(model, chosen_stages(model, stages), options.get("overrides"))
    if jobs <= 1 and scheduler is None:
        found = {}
        for model in models:
            try:
                found[model] = run_model(model, stages, on_start=on_start, on_done=on_done, **options)
            except LockHeld as err:  # another run has this model: the others go on
                if len(models) == 1:
                    raise
                found[model] = [StageResult(model, s, "blocked", 0.0, Path(), str(err))
                                for s in chosen_stages(model, stages)]
                for result in found[model] if on_done else ():
                    on_done(result)
        return found
    from zoobook.backends import capabilities
    from zoobook.parallel import Step, StepError
    from zoobook.parallel import run_chains as run_parallel

    npu = capabilities(options.get("backend", "auto")).needs_device
    chains = {m: [Step(m, s, npu=npu) for s in chosen_stages(m, stages)] for m in models}

    def done(step, result):
        if isinstance(result, StepError):
            result = StageResult(step.chain, step.name, "failed", 0.0, Path(), result.message)
        if on_done:
            on_done(result)

    results = run_parallel(chains, partial(run_step, **options), jobs=jobs, scheduler=scheduler,
                           npus=max(jobs, 1) if npu else 0,
                           on_start=(lambda step: on_start(step.chain, step.name)) if on_start else None,
                           on_done=done)
    return {m: [r if not isinstance(r, StepError) else StageResult(m, r.step.name, "failed", 0.0, Path(), r.message)
                for r in rs] for m, rs in results.items()}


def run_step(step, device_id: int | None = None, *, wait: bool = True, overrides: dict | None = None,
             profile: str = "default", backend: str = "auto", **options) -> StageResult:
    """One stage as a unit of parallel work: the model's lock is taken for the stage alone
    (waiting for it by default), finished transactions recovered, then :func:`run_stage`.
    ``device_id`` becomes the notebook's ``device_id`` where it declares one."""
    model, stage = step.chain, step.name
    overrides = dict(overrides or {})
    if device_id is not None and "device_id" in notebook_parameters(notebook_path(model, stage)):
        overrides["device_id"] = device_id
    with ModelLock(profile, model, wait=wait):
        ctx = _Model(model, profile, backend)
        recover(ctx)
        return run_stage(model, stage, profile=profile, backend=backend, overrides=overrides, _ctx=ctx, **options)
