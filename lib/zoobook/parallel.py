"""Run independent chains of steps concurrently, each chain in its order, here or on Dask.

A chain is one model's stages; a :class:`Step` is one stage. :func:`run_chains` calls
``work(step, device_id)`` once per step and returns every chain's results in chain order.
Three modes:

- ``jobs=1`` (no scheduler): in this process, chain after chain, no Dask at all.
- ``jobs>1``: a local cluster of ``jobs`` worker processes, one thread each, no dashboard,
  closed at the end (also on an error or Ctrl-C, which cancels what is left; a Ctrl-C while
  Dask starts or closes is held until it is done, since Dask can hang when interrupted then).
- ``scheduler="tcp://host:8786"``: on a cluster the user started (see below).

Each step is one Dask task, its key ``<chain>/<step>-<run token>`` (readable in the
dashboard), that takes the previous step's task of its chain as an argument, so a chain never
runs two steps at once nor out of order, while chains run side by side. The previous result is
not passed to ``work``: a stage reads its inputs from the run folder.

Failures. ``work`` is expected to return a result even for a failed stage (the runner records
failures and blocks downstream stages itself). If it raises anyway, the step's result is a
:class:`StepError` and the rest of its chain still runs. A failure of Dask's own is a
:class:`StepError` too (``message`` starting "task failed"): a result that cannot be sent back
fails only its step; a task that fails on the worker (killed three times, a malformed
``$ZOOBOOK_NPU_DEVICES``) leaves the rest of its chain unrun ("not run, <step> failed").

``work`` must be picklable: a module-level function of a module the workers can import (or a
``functools.partial`` of one), since worker processes import it by name. A script that starts
a local cluster needs the ``if __name__ == "__main__":`` guard: the workers are spawned and
import the main module again.

Accelerator devices. A step with ``npu=True`` needs one device and runs as a task holding the
Dask resource ``NPU=1``; ``work`` gets a ``device_id`` that no other running step of the same
worker holds, taken from the worker's pool for the call and given back afterwards. A worker's
pool is the ids in ``$ZOOBOOK_NPU_DEVICES`` (comma-separated) when set, else
``0 .. N-1`` for a worker started with ``--resources NPU=N``. Without Dask, ``device_id`` is 0.
A local cluster started with ``npus`` devices gives one device each to its first
``min(npus, jobs)`` workers (``NPU=1``, ``ZOOBOOK_NPU_DEVICES=<i>``): a worker has one thread,
so it never runs two steps at once, and the other workers take only steps without a device.

Environment. Local workers are spawned from this process and inherit its environment
(``ZOOBOOK_RUNS``, ``ZOOBOOK_DATA``, ``PATH``, ...) and its ``sys.path``, plus
``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` and ``OPENBLAS_NUM_THREADS`` set to ``cores // jobs``
where this process does not set them (Dask's default is 1); the stage kernels a worker starts
inherit them. Dask sets these in this process too while it starts workers: they are put back
at the end. Local workers have no memory limit (a stage's memory is its own business, and
the kernels' is not counted anyway). Worker processes are daemonic: ``work`` may start
subprocesses (papermill kernels) but not ``multiprocessing`` children.

A cluster over NPU hosts. On one host start a scheduler; on each host with 8 NPUs one worker
with one thread per device::

    dask scheduler                                   # listens on tcp://SCHED:8786
    dask worker tcp://SCHED:8786 --nthreads 8 --resources NPU=8 --memory-limit 0

then ``zoobook`` (or :func:`run_chains`) with ``scheduler="tcp://SCHED:8786"``. Every host
needs the project installed at the same path, a shared filesystem, and ``ZOOBOOK_RUNS`` (and
``ZOOBOOK_DATA``) pointing at the same folders in the environment ``dask worker`` starts
from. ``dask worker`` sets ``OMP_NUM_THREADS=1`` unless that environment sets it. Two workers
on one host split its devices with ``ZOOBOOK_NPU_DEVICES=0,1,2,3`` and ``...=4,5,6,7``, each
with ``--resources NPU=4``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

#: the environment variable naming a worker's device ids, comma-separated
DEVICES_ENV = "ZOOBOOK_NPU_DEVICES"
#: the Dask resource a step with ``npu=True`` takes one of
NPU = "NPU"
#: thread-count variables Dask sets in its workers (to 1 by default)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: Dask log level in the local cluster: its warnings at a close (tasks cancelled, a worker still
#: running a step killed after 4 s) are what a Ctrl-C is expected to do, so only errors show
LOG_LEVEL = logging.ERROR


@dataclass(frozen=True)
class Step:
    """One unit of work: a stage of a model."""

    chain: str  # e.g. the model name
    name: str  # e.g. "02-export"
    npu: bool = False  # needs an accelerator device


@dataclass(frozen=True)
class StepError:
    """The result of a step whose ``work`` raised, or whose Dask task failed."""

    step: Step
    message: str  # "ExceptionType: text"
    traceback_text: str


def run_chains(chains: dict[str, list[Step]], work: Callable[..., Any], *, jobs: int = 1,
               scheduler: str | None = None, npus: int = 0,
               on_start: Callable[[Step], None] | None = None,
               on_done: Callable[[Step, Any], None] | None = None) -> dict[str, list[Any]]:
    """Run every chain's steps in order, chains side by side; ``{chain: [results in order]}``.

    ``work(step, device_id)`` returns a picklable result; ``device_id`` is None for a step
    without ``npu``. ``jobs`` local worker processes, or the cluster at ``scheduler`` (then
    ``jobs`` and ``npus`` are not used). ``npus``: the accelerator devices of this machine that
    local workers may use. ``on_start(step)`` is called in this process when a step becomes
    ready (its predecessor finished; the first step of each chain at once), ``on_done(step,
    result)`` as each step finishes, both in chain order.
    """
    _check(chains, jobs, npus)
    if scheduler is None and jobs == 1:
        return _run_here(chains, work, on_start, on_done)
    if scheduler is None and npus == 0 and any(s.npu for steps in chains.values() for s in steps):
        raise ValueError("some steps need an NPU but npus=0: pass the number of accelerator devices "
                         "of this machine, or run them with jobs=1")
    with _client(jobs, scheduler, npus) as client:
        return _run_on_cluster(client, chains, work, on_start, on_done)


def _check(chains: dict[str, list[Step]], jobs: int, npus: int) -> None:
    if jobs < 1 or npus < 0:
        raise ValueError(f"jobs must be at least 1 and npus at least 0, not jobs={jobs}, npus={npus}")
    for chain, steps in chains.items():
        strangers = [f"{s.chain}/{s.name}" for s in steps if s.chain != chain]
        if strangers:
            raise ValueError(f"chain {chain!r} holds steps of other chains: {strangers}")
        names = [s.name for s in steps]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"chain {chain!r} holds steps named alike: {twice}")


def _call(work: Callable[..., Any], step: Step, device_id: int | None) -> Any:
    """``work(step, device_id)``, or a :class:`StepError` when it raises."""
    try:
        return work(step, device_id)
    except Exception as error:
        return StepError(step, f"{type(error).__name__}: {error}", traceback.format_exc())


def _run_here(chains, work, on_start, on_done) -> dict[str, list[Any]]:
    results: dict[str, list[Any]] = {}
    for chain, steps in chains.items():
        results[chain] = []
        for step in steps:
            if on_start:
                on_start(step)
            result = _call(work, step, 0 if step.npu else None)
            results[chain].append(result)
            if on_done:
                on_done(step, result)
    return results


# ---- on a worker -------------------------------------------------------------------------


class DevicePool:
    """Device ids lent to one caller at a time; thread-safe."""

    def __init__(self, ids: list[int]) -> None:
        self._free = sorted(ids)
        self._lock = threading.Lock()

    @contextmanager
    def take(self) -> Iterator[int]:
        """The lowest free id, held for the ``with`` block."""
        with self._lock:
            if not self._free:
                raise RuntimeError("no free NPU device on this worker: more steps hold one than its "
                                   f"NPU resource allows (check --resources NPU=N and ${DEVICES_ENV})")
            device_id = self._free.pop(0)
        try:
            yield device_id
        finally:
            with self._lock:
                self._free = sorted([*self._free, device_id])


def device_ids(total: float, listed: str | None) -> list[int]:
    """A worker's device ids: ``listed`` (``$ZOOBOOK_NPU_DEVICES``, e.g. ``"4,5"``) when set,
    else ``0 .. total-1`` for its ``NPU`` resource ``total``."""
    if not listed:
        return list(range(int(total)))
    try:
        ids = [int(part) for part in listed.split(",")]
    except ValueError:
        raise ValueError(f"${DEVICES_ENV} must be comma-separated device ids, not {listed!r}") from None
    if len(ids) < total or len(set(ids)) != len(ids):
        raise ValueError(f"${DEVICES_ENV}={listed!r} must name {int(total)} distinct devices, one per "
                         "unit of the worker's NPU resource")
    return ids


_POOLS: dict[str, DevicePool] = {}
_POOLS_LOCK = threading.Lock()


def _worker_pool() -> DevicePool:
    """This worker's device pool, made on first use from its ``NPU`` resource."""
    from distributed import get_worker

    worker = get_worker()
    with _POOLS_LOCK:
        if worker.address not in _POOLS:
            total = worker.state.total_resources.get(NPU, 0)
            _POOLS[worker.address] = DevicePool(device_ids(total, os.environ.get(DEVICES_ENV)))
        return _POOLS[worker.address]


def _run_task(work: Callable[..., Any], step: Step, previous: Any = None) -> Any:
    """The Dask task of one step; ``previous`` (the chain's previous result) only orders it."""
    if not step.npu:
        return _call(work, step, None)
    with _worker_pool().take() as device_id:
        return _call(work, step, device_id)


# ---- in the client -----------------------------------------------------------------------


@contextmanager
def _client(jobs: int, scheduler: str | None, npus: int):
    """A client of the cluster at ``scheduler``, or of a local cluster; both closed at the end."""
    from distributed import Client

    stack = ExitStack()
    try:
        with _signals_held():
            address = scheduler or stack.enter_context(_local_cluster(jobs, npus))
            client = stack.enter_context(Client(address, set_as_default=False))
        yield client
    finally:
        with _signals_held():
            stack.close()


@contextmanager
def _signals_held():
    """Hold Ctrl-C and SIGTERM while Dask starts or closes a client or cluster, then deliver
    them: interrupted half-way, Dask can hang (a half-made client waits forever when it is
    collected). Only in the main thread, where signal handlers live."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)


@contextmanager
def _environ_restored():
    """Put this process's environment back as it was: a Dask nanny sets its
    ``pre-spawn-environ`` (and ``__DASK_PARENT_PID``) in its own process, which for a local
    cluster is this one."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        for name in set(os.environ) - set(saved):
            del os.environ[name]
        os.environ.update(saved)


@contextmanager
def _local_cluster(jobs: int, npus: int):
    """``jobs`` worker processes of one thread, no dashboard, quiet; the first
    ``min(npus, jobs)`` hold one device each."""
    import dask
    from dask.system import CPU_COUNT
    from distributed import Nanny, Scheduler, SpecCluster

    threads = max(1, CPU_COUNT // jobs)
    pre_spawn = {**dask.config.get("distributed.nanny.pre-spawn-environ"),
                 **{name: threads for name in THREAD_VARIABLES}}
    common = {"host": "127.0.0.1", "dashboard": False, "dashboard_address": None}
    scheduler = {"cls": Scheduler, "options": {**common, "port": 0}}
    workers = {}
    for i in range(jobs):
        device = {"resources": {NPU: 1}, "env": {DEVICES_ENV: str(i)}} if i < npus else {}
        workers[i] = {"cls": Nanny, "options": {**common, "nthreads": 1, "memory_limit": 0,
                                                "silence_logs": LOG_LEVEL, **device}}
    with _environ_restored(), \
            dask.config.set({"distributed.nanny.pre-spawn-environ": pre_spawn}):
        with SpecCluster(scheduler=scheduler, workers=workers, silence_logs=LOG_LEVEL,
                         name="zoobook") as cluster:
            yield cluster


def _submit(client, chains: dict[str, list[Step]], work) -> dict[str, list[Any]]:
    """One task per step, each taking its chain's previous task: ``{chain: [futures]}``."""
    token = uuid.uuid4().hex
    futures: dict[str, list[Any]] = {}
    for chain, steps in chains.items():
        futures[chain] = []
        for step in steps:
            previous = futures[chain][-1] if futures[chain] else None
            futures[chain].append(client.submit(
                _run_task, work, step, previous, key=f"{chain}/{step.name}-{token}", pure=False,
                resources={NPU: 1} if step.npu else None))
    return futures


def _collect(future, step: Step, before: tuple[Step, Any] | None) -> Any:
    """The future's result, or a :class:`StepError` when its task failed. ``before``: the
    chain's previous step and future, whose failure Dask passes on to this task unrun."""
    try:
        return future.result()
    except Exception as error:
        if before is not None and before[1].status == "error":
            return StepError(step, f"task failed: not run, {before[0].name} failed", "")
        first_line = str(error).partition("\n")[0]
        text = "".join(traceback.format_exception(error))
        return StepError(step, f"task failed: {type(error).__name__}: {first_line}", text)


def _check_npu_workers(client, chains: dict[str, list[Step]]) -> None:
    if not any(s.npu for steps in chains.values() for s in steps):
        return
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    if not any(w.get("resources", {}).get(NPU, 0) >= 1 for w in workers):
        raise ValueError(f"some steps need an NPU but no worker of {client.scheduler.address} offers "
                         f"the {NPU} resource (start workers with --resources {NPU}=N)")


_PENDING = object()


def _report(steps: list[Step], results: list[Any], reported: int, on_start, on_done) -> int:
    """Call ``on_done`` for the chain's steps finished since ``reported`` (in order), and
    ``on_start`` for the step each makes ready; how many are reported now."""
    while reported < len(steps) and results[reported] is not _PENDING:
        if on_done:
            on_done(steps[reported], results[reported])
        reported += 1
        if reported < len(steps) and on_start:
            on_start(steps[reported])
    return reported


def _run_on_cluster(client, chains, work, on_start, on_done) -> dict[str, list[Any]]:
    from distributed import as_completed

    _check_npu_workers(client, chains)
    futures = _submit(client, chains, work)
    where = {f: (chain, i) for chain, fs in futures.items() for i, f in enumerate(fs)}
    results = {chain: [_PENDING] * len(steps) for chain, steps in chains.items()}
    reported = dict.fromkeys(chains, 0)
    try:
        for steps in chains.values():
            if steps and on_start:
                on_start(steps[0])
        for future in as_completed(list(where), loop=client.loop):
            chain, index = where[future]
            steps = chains[chain]
            before = (steps[index - 1], futures[chain][index - 1]) if index else None
            results[chain][index] = _collect(future, steps[index], before)
            reported[chain] = _report(steps, results[chain], reported[chain], on_start, on_done)
    except BaseException:
        client.cancel(list(where), force=True)
        raise
    return results
