"""A deployment's loop, run one item after another or as a pipeline, and where its time goes.

A :class:`Deployment` is what a deployed port does per item (an image, a video frame): a
chain of named stages, each taking the previous one's output, the first taking the item::

    read -> preprocess -> graph -> postprocess

:func:`run_sequential` runs it item by item. :func:`run_pipelined` gives each stage a thread
of its own, joined by bounded queues (``depth`` items each), as ``ais_bench``'s pipeline mode
and deployment servers do: while the accelerator runs item i, the host reads item i + 1 and
post-processes item i - 1. Items leave in the order they came, so both loops return the same
outputs (:func:`same_outputs` checks it). NumPy, OpenCV, torch and the runtimes release the
GIL in their kernels, so the threads overlap for real.

:func:`breakdown` times one item's stages and the host steps marked inside them
(:func:`zoobook.timing.timed`), with a given number of threads for torch and OpenCV.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from zoobook.timing import recording, timed

GRAPH = "graph"  # the stage (and step) that is the accelerator's; everything else is the host's
_END = object()


@dataclass
class Deployment:
    """``stages``: ``(name, function)`` in order, the first called with an item, each next
    one with the previous one's result; the stage named ``graph`` is the accelerator's.
    ``items``: what the loop cycles through; ``unit``: what one item is ("image", "frame").
    ``reset``: called before a pass over the items starts again (a tracker re-initialised
    on its first frame), or None; ``release``: frees what the stages hold (sessions)."""

    stages: Sequence[tuple[str, Callable]]
    items: Sequence
    unit: str = "image"
    reset: Callable[[], None] | None = None
    release: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a deployment needs at least one stage")
        if not self.items:
            raise ValueError("a deployment needs at least one item")

    def close(self) -> None:
        if self.release:
            self.release()

    def take(self, count: int) -> list:
        """``count`` items, cycling."""
        return [self.items[i % len(self.items)] for i in range(count)]


def run_sequential(deployment: Deployment, items: Iterable) -> list:
    """Each item through every stage before the next item starts."""
    results = []
    for item in items:
        value = item
        for name, stage in deployment.stages:
            with timed(name):
                value = stage(value)
        results.append(value)
    return results


def run_pipelined(deployment: Deployment, items: Iterable, *, depth: int = 2) -> list:
    """Each stage in a thread of its own, stages joined by queues of ``depth`` items; the
    results in the items' order. An exception in any stage stops the pipeline and is raised
    here, with the stage named."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    stop = threading.Event()
    queues = [queue.Queue(maxsize=depth) for _ in range(len(deployment.stages) + 1)]
    failures: list[tuple[str, BaseException]] = []

    def put(q: queue.Queue, value) -> bool:
        while not stop.is_set():
            try:
                q.put(value, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def get(q: queue.Queue):
        while not stop.is_set():
            try:
                return q.get(timeout=0.05)
            except queue.Empty:
                continue
        return _END

    def worker(name: str, stage: Callable, inbox: queue.Queue, outbox: queue.Queue) -> None:
        try:
            while (value := get(inbox)) is not _END:
                if not put(outbox, stage(value)):
                    return
            put(outbox, _END)
        except BaseException as err:  # noqa: BLE001 (handed to the caller's thread)
            failures.append((name, err))
            stop.set()

    def feed() -> None:
        for item in items:
            if not put(queues[0], item):
                return
        put(queues[0], _END)

    threads = [threading.Thread(target=feed, daemon=True, name="pipeline feed")]
    threads += [threading.Thread(target=worker, args=(name, stage, queues[i], queues[i + 1]), daemon=True,
                                 name=f"pipeline {name}") for i, (name, stage) in enumerate(deployment.stages)]
    for thread in threads:
        thread.start()
    results = []
    try:
        while (value := get(queues[-1])) is not _END:
            results.append(value)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    if failures:
        name, err = failures[0]
        raise RuntimeError(f"pipeline stage {name!r} failed: {err!r}") from err
    return results


def loop_speed(deployment: Deployment, *, calls: int, depth: int = 2, rounds: int = 2,
               label: str = "") -> list[dict]:
    """The sequential and the pipelined loop over the same ``calls`` items, alternating for
    ``rounds`` rounds: per item, the best round's milliseconds and the items per second; and
    whether the two loops' outputs are the same, item by item. ``label`` is added to each
    row's ``loop``."""
    items = deployment.take(calls)
    best = {"sequential": float("inf"), "pipelined": float("inf")}
    outputs: dict[str, list] = {}
    for _ in range(rounds):
        for loop in best:
            if deployment.reset:
                deployment.reset()
            start = time.perf_counter()
            outputs[loop] = run_sequential(deployment, items) if loop == "sequential" else \
                run_pipelined(deployment, items, depth=depth)
            best[loop] = min(best[loop], (time.perf_counter() - start) * 1000.0 / calls)
    same = same_outputs(outputs["sequential"], outputs["pipelined"])
    return [{"loop": loop + label, "calls": calls, "rounds": rounds, "mean_ms": ms, "throughput": 1000.0 / ms,
             "speedup": best["sequential"] / ms, "same_outputs": same,
             "threads": 1 if loop == "sequential" else f"{len(deployment.stages)} stage threads, queues of {depth}"}
            for loop, ms in best.items()]


def recording_graph(deployment: Deployment, count: int) -> tuple[Deployment | None, list]:
    """The deployment with its graph stage keeping its first ``count`` outputs, in the list
    returned beside it (the same stages otherwise, the same outputs); ``(None, [])`` where
    there is no stage named ``graph``. A loop over it records what :func:`with_device_stand_in`
    hands on, so the graph need not run again for that."""
    names = [name for name, _ in deployment.stages]
    if GRAPH not in names:
        return None, []
    where = names.index(GRAPH)
    graph = deployment.stages[where][1]
    recorded: list = []

    def keep(value):
        out = graph(value)
        if len(recorded) < count:
            recorded.append(out)
        return out

    stages = list(deployment.stages)
    stages[where] = (GRAPH, keep)
    return dataclasses.replace(deployment, stages=stages), recorded


def with_device_stand_in(deployment: Deployment, device_ms: float, *, calls: int,
                         recorded: list | None = None) -> Deployment | None:
    """The deployment with its graph stage replaced by a stand-in for the published device:
    it waits ``device_ms`` (asleep, as a host thread waits on a device) and hands on the
    outputs the real graph gave for the first ``calls`` items, in turn: ``recorded`` (from
    :func:`recording_graph`) where given, else recorded by one sequential pass. The host's
    stages are untouched, so a pipelined loop over it shows how much of the host's time a
    device of that speed would hide. None where the deployment has no stage named ``graph``
    (a tracker that calls its graphs inside)."""
    names = [name for name, _ in deployment.stages]
    if GRAPH not in names:
        return None
    where = names.index(GRAPH)
    stages = list(deployment.stages)
    if recorded is None or len(recorded) < calls:
        recorder, recorded = recording_graph(deployment, calls)
        if deployment.reset:
            deployment.reset()
        run_sequential(recorder, deployment.take(calls))
    recorded = recorded[:calls]
    handed = {"next": 0}

    def stand_in(_value):
        time.sleep(device_ms / 1000.0)
        out = recorded[handed["next"] % len(recorded)]
        handed["next"] += 1
        return out

    def reset() -> None:
        handed["next"] = 0
        if deployment.reset:
            deployment.reset()

    stages[where] = (GRAPH, stand_in)
    return Deployment(stages, deployment.items, deployment.unit, reset)


def breakdown(deployment: Deployment, *, calls: int, threads: int, warmup: int = 1) -> dict:
    """Where one item's time goes, with ``threads`` threads for torch and OpenCV: milliseconds
    per item of each stage and of each step marked inside one (every figure exclusive: a
    stage's own figure leaves out the steps named within it), summed over ``calls`` items of
    the sequential loop after ``warmup`` untimed ones. ``host_ms`` is everything but the
    graph; ``total_ms`` includes it."""
    with thread_count(threads):
        if deployment.reset:
            deployment.reset()
        run_sequential(deployment, deployment.take(warmup))
        if deployment.reset:
            deployment.reset()
        with recording() as clock:
            start = time.perf_counter()
            run_sequential(deployment, deployment.take(calls))
            wall = (time.perf_counter() - start) * 1000.0
    steps = {name: ms / calls for name, ms in clock.ms.items()}
    graph = steps.get(GRAPH, 0.0)
    total = wall / calls
    return {"threads": threads, "calls": calls, "steps": steps, "graph_ms": graph, "host_ms": total - graph,
            "total_ms": total}


class thread_count:
    """Within the block, torch and OpenCV use ``threads`` threads (ONNX Runtime keeps its own)."""

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def __enter__(self) -> thread_count:
        import cv2
        import torch

        self._saved = torch.get_num_threads(), cv2.getNumThreads()
        torch.set_num_threads(self.threads)
        cv2.setNumThreads(self.threads)
        return self

    def __exit__(self, *exc) -> None:
        import cv2
        import torch

        torch.set_num_threads(self._saved[0])
        cv2.setNumThreads(self._saved[1])


def same_outputs(a, b) -> bool:
    """Exact equality of nested results: arrays and tensors (shape, dtype, values, NaN equal
    to NaN), dataclasses and namespaces, mappings, sequences and scalars."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        a, b = a.detach().cpu().numpy(), b.detach().cpu().numpy()
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if (dataclasses.is_dataclass(a) and not isinstance(a, type)) or isinstance(a, SimpleNamespace):
        return type(a) is type(b) and same_outputs(vars(a), vars(b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_outputs(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same_outputs(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return a == b


def deployment_bound(host_ms: float, device_ms: float) -> dict:
    """The end-to-end rate a deployment gets from a host that needs ``host_ms`` per item and a
    device that needs ``device_ms``: overlapped (pipelined), the slower side sets the pace;
    one after the other, their sum does."""
    return {"host_ms": host_ms, "device_ms": device_ms, "overlapped_fps": 1000.0 / max(host_ms, device_ms),
            "sequential_fps": 1000.0 / (host_ms + device_ms), "bottleneck": "host" if host_ms > device_ms else "device"}
