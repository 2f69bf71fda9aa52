"""One timing loop for every model and backend.

Candidates run interleaved, one call each in turn, so that whatever else the machine does
falls on all of them alike. Warm-up calls are excluded. Latency statistics are per call (one
batch); throughput = batch x 1000 / mean latency (ms), as ais_bench reports it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np
from tqdm import tqdm


def latency_stats(times_ms: list[float] | np.ndarray, batch_size: int) -> dict:
    times = np.asarray(times_ms, dtype=np.float64)
    mean = float(times.mean())
    return {"batch_size": batch_size, "calls": int(times.size), "mean_ms": mean,
            "std_ms": float(times.std()), "min_ms": float(times.min()),
            "p50_ms": float(np.percentile(times, 50)), "p90_ms": float(np.percentile(times, 90)),
            "p99_ms": float(np.percentile(times, 99)), "throughput": batch_size * 1000.0 / mean}


@dataclass(frozen=True)
class Budget:
    """How long each candidate is timed: calls continue until it has had ``seconds`` of
    timed calls, at least ``min_calls`` and at most ``max_calls`` of them (``None``: no
    cap), as ``benchmark_app -t`` and ``ais_bench --loop`` let a user choose. A slow
    candidate at a large batch then stops at ``min_calls`` instead of taking minutes."""

    seconds: float = 5.0
    min_calls: int = 3
    max_calls: int | None = 100

    def __post_init__(self) -> None:
        if self.min_calls < 1:
            raise ValueError(f"min_calls must be at least 1, got {self.min_calls}")
        if self.max_calls is not None and self.max_calls < self.min_calls:
            raise ValueError(f"max_calls ({self.max_calls}) is below min_calls ({self.min_calls})")
        if self.seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {self.seconds}")

    def at_least(self, calls: int) -> Budget:
        """The same budget with at least ``calls`` calls (e.g. one per item of a cycle)."""
        low = max(self.min_calls, calls)
        return replace(self, min_calls=low, max_calls=None if self.max_calls is None else max(self.max_calls, low))

    def done(self, calls: int, spent_s: float) -> bool:
        """Whether a candidate that has had ``calls`` timed calls, ``spent_s`` seconds in all,
        has had its budget."""
        if calls < self.min_calls:
            return False
        return (self.max_calls is not None and calls >= self.max_calls) or spent_s >= self.seconds


def benchmark(candidates: Mapping[str, Callable[[], object]], *, batch_size: int, warmup: int = 2,
              budget: Budget = Budget(), device_times: Mapping[str, Callable[[], list[float] | None]] | None = None,
              progress: bool = True) -> list[dict]:
    """Time each zero-argument callable in ``candidates`` within ``budget``, interleaved (one
    call each per round, for the candidates that have not had their budget yet), after
    ``warmup`` untimed rounds. ``device_times[name]()`` (optional) returns the device compute
    times the backend measured for the timed calls (e.g. ais_bench's summary). Returns one
    row per candidate with :func:`latency_stats` (``calls``: how many were timed) and
    ``device_*`` where known.
    """
    for _ in range(warmup):
        for run in candidates.values():
            run()
    if device_times:
        for read in device_times.values():
            read()  # discard the warm-up calls
    timings: dict[str, list[float]] = {name: [] for name in candidates}
    quiet = {} if progress else {"disable": True}  # otherwise tqdm's defaults (TQDM_DISABLE) apply
    with tqdm(desc=f"batch {batch_size}", unit="round", leave=False, total=budget.max_calls, **quiet) as bar:
        while waiting := [name for name, t in timings.items() if not budget.done(len(t), sum(t) / 1000.0)]:
            for name in waiting:
                run = candidates[name]
                start = time.perf_counter()
                run()
                timings[name].append((time.perf_counter() - start) * 1000.0)
            bar.update()
    rows = []
    for name, times in timings.items():
        row = {"candidate": name, **latency_stats(times, batch_size)}
        measured = device_times[name]() if device_times and name in device_times else None
        if measured:
            device = latency_stats(measured, batch_size)
            row.update({f"device_{k}": v for k, v in device.items() if k.endswith("_ms") or k == "throughput"})
        rows.append(row)
    return rows


def bare_loop_overhead(harness_run: Callable[[], object], raw_run: Callable[[], object], *, budget: Budget,
                       warmup: int = 2, blocks: int = 10, stub_run: Callable[[], object] | None = None) -> dict:
    """The harness's overhead on one session, measured two ways.

    End to end: :func:`benchmark` of ``harness_run`` (our backend wrapper, timed call by
    call) against ``raw_run`` (the runtime's own call, e.g. ``InferenceSession.run``) in a
    bare loop timed as a whole, in ``blocks`` pairs of blocks of the same number of calls
    (``budget``'s seconds and calls split over the pairs, at least one call a block; which
    loop goes first alternates), so that the machine's drift falls on both halves of a pair.
    ``overhead_pct`` is the median over the pairs of (harness - bare) / bare,
    ``overhead_iqr_pct`` the interquartile range of those differences: on a graph of a few
    milliseconds a shared 2-core machine moves them by several percent either way.

    Directly: with ``stub_run`` (the same wrapper over a stand-in for the runtime's call that
    returns recorded outputs at once) timed through :func:`benchmark` too, ``own_us`` is what
    the wrapper and the timing loop add to one call, and ``own_pct`` that against the bare
    call; this does not move with the machine's drift."""
    for _ in range(warmup):
        harness_run()
        raw_run()
    floor = max(1, budget.min_calls // blocks)
    per_pair = Budget(seconds=budget.seconds / blocks, min_calls=floor,
                      max_calls=None if budget.max_calls is None else max(floor, budget.max_calls // blocks))
    harness, bare = [], []

    def timed_harness() -> int:
        row = benchmark({"harness": harness_run}, batch_size=1, warmup=0, budget=per_pair, progress=False)[0]
        harness.append(row["mean_ms"])
        return row["calls"]

    def bare_loop(calls: int) -> None:
        start = time.perf_counter()
        for _ in range(calls):
            raw_run()
        bare.append((time.perf_counter() - start) * 1000.0 / calls)

    calls = []
    for pair in range(blocks):
        if pair % 2 == 0:
            calls.append(timed_harness())
            bare_loop(calls[-1])
        else:  # the bare loop first, with as many calls as the last harness block had
            bare_loop(calls[-1])
            calls.append(timed_harness())
    differences = 100.0 * (np.array(harness) - np.array(bare)) / np.array(bare)
    low, high = np.percentile(differences, [25, 75])
    row = {"candidate": "harness vs bare loop", "calls": int(sum(calls)), "blocks": blocks,
           "harness_ms": float(np.median(harness)), "bare_ms": float(np.median(bare)),
           "mean_ms": float(np.median(harness)), "overhead_pct": float(np.median(differences)),
           "overhead_iqr_pct": float(high - low)}
    if stub_run is not None:
        own = benchmark({"stub": stub_run}, batch_size=1, warmup=warmup, progress=False,
                        budget=Budget(seconds=0.2, min_calls=100, max_calls=5000))[0]
        row.update(own_us=own["mean_ms"] * 1000.0, own_pct=100.0 * own["mean_ms"] / row["bare_ms"])
    return row


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def resident_mb() -> float | None:
    """This process's resident memory now (MiB), from ``/proc/self/status``; None off Linux."""
    return _status_mb("VmRSS")


def peak_resident_mb() -> float | None:
    """This process's peak resident memory so far (MiB, ``VmHWM``). Unlike ``ru_maxrss``,
    which a child inherits from its parent across fork and exec, it starts afresh with the
    process's own memory."""
    return _status_mb("VmHWM")


def reset_peak_resident() -> bool:
    """Restart :func:`peak_resident_mb` from the current resident memory (Linux 4.0 and
    later: ``5`` to ``/proc/self/clear_refs``), so the next peak is that of the work that
    follows, not of loading; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


_CHILD = """
import importlib, pickle, sys
from zoobook.bench import peak_resident_mb
module, name, args, kwargs, out = pickle.load(sys.stdin.buffer)
result = getattr(importlib.import_module(module), name)(*args, **kwargs)
peak = peak_resident_mb()
with open(out, "wb") as f:
    pickle.dump((result, peak), f)
"""


def run_isolated(function: Callable, *args, **kwargs) -> tuple[object, float]:
    """Call ``function`` (a module-level function) in a fresh Python process; returns its
    result and that process's peak resident memory in MiB. A fresh process per measurement
    keeps one candidate's allocator pools out of another's figure. A process that fails or
    dies (killed for memory, for instance) raises :class:`IsolatedRunFailed` with the end of
    its error output."""
    import pickle
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/result.pickle"
        payload = pickle.dumps((function.__module__, function.__qualname__, args, kwargs, out))
        done = subprocess.run([sys.executable, "-c", _CHILD], input=payload, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
        if done.returncode != 0:
            reason = "killed (most likely for memory)" if done.returncode < 0 else f"exit status {done.returncode}"
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-5:]
            raise IsolatedRunFailed(f"{function.__qualname__} in a separate process: {reason}; "
                                    + " | ".join(tail))
        with open(out, "rb") as f:
            return pickle.load(f)


class IsolatedRunFailed(RuntimeError):
    pass


FLAT_MIB_PER_IMAGE = 1.0  # a fitted growth below this is noise in the peak: nothing to extrapolate


def memory_fit(rows: list[dict], at: int = 16) -> list[dict]:
    """Per candidate measured at two or more batch sizes: peak memory = a + b x batch, fitted
    by least squares, and what it predicts at batch ``at`` (where a port may run out of
    memory). A candidate whose peak grows by less than ``FLAT_MIB_PER_IMAGE`` per image is
    flat (small inputs, or a peak set by something else) and gets no fit."""
    fits = []
    for name in dict.fromkeys(r["candidate"] for r in rows):
        points = sorted((r["batch_size"], r["peak_rss_mb"]) for r in rows if r["candidate"] == name)
        if len({bs for bs, _ in points}) < 2:
            continue
        slope, intercept = np.polyfit(*zip(*points), 1)
        if slope < FLAT_MIB_PER_IMAGE:
            continue
        fits.append({"candidate": name, "MiB_per_image": float(slope), "MiB_fixed": float(intercept),
                     f"predicted_peak_at_{at}_MiB": float(intercept + slope * at),
                     "basis": f"linear fit over batch {', '.join(str(bs) for bs, _ in points)} (extrapolated)"})
    return fits
