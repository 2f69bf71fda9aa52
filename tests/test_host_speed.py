"""The host-speed machinery of 06-benchmark: step timing, time-bounded benchmarks, the
pipelined loop against the sequential one, and the deployment bound."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from zoobook.bench import Budget, bare_loop_overhead, benchmark
from zoobook.pipeline import Deployment, breakdown, deployment_bound, loop_speed, run_pipelined, run_sequential, \
    recording_graph, same_outputs, with_device_stand_in
from zoobook.timing import recording, timed


def _sleep(ms: float) -> None:
    time.sleep(ms / 1000)


# --- step timing ---------------------------------------------------------------------------


def test_steps_are_timed_only_while_recording_and_nest_exclusively():
    with timed("ignored"):
        _sleep(1)
    with recording() as clock:
        with timed("outer"):
            _sleep(20)
            with timed("inner"):
                _sleep(40)
            _sleep(20)
        with timed("inner"):
            _sleep(10)
    assert set(clock.ms) == {"outer", "inner"} and clock.calls == {"outer": 1, "inner": 2}
    # exclusive: the outer step leaves out the inner one's 40 ms
    assert 38 <= clock.ms["outer"] < 60 and 48 <= clock.ms["inner"] < 70
    with timed("after"):
        pass
    assert "after" not in clock.ms


def test_a_step_that_raises_is_still_counted():
    with recording() as clock:
        with pytest.raises(KeyError):
            with timed("bad"):
                raise KeyError("x")
        with timed("good"):
            pass
    assert clock.calls == {"bad": 1, "good": 1}


def test_each_thread_records_its_own_steps():
    seen = {}

    def worker():
        with timed("other thread"):  # no recording in this thread
            pass
        seen["done"] = True

    with recording() as clock:
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
    assert seen["done"] and clock.ms == {}


# --- time-bounded benchmark ----------------------------------------------------------------


def test_budget_bounds_the_calls():
    assert not Budget(seconds=10, min_calls=3, max_calls=5).done(2, 100.0)  # below the floor
    assert Budget(seconds=10, min_calls=3, max_calls=5).done(5, 0.1)  # at the cap
    assert Budget(seconds=1, min_calls=3, max_calls=None).done(3, 1.0)
    assert not Budget(seconds=1, min_calls=3, max_calls=None).done(3, 0.5)
    assert Budget(seconds=0, min_calls=2, max_calls=3).at_least(7) == Budget(seconds=0, min_calls=7, max_calls=7)
    with pytest.raises(ValueError, match="max_calls"):
        Budget(min_calls=5, max_calls=2)
    with pytest.raises(ValueError, match="min_calls"):
        Budget(min_calls=0)


def test_a_slow_candidate_stops_at_its_floor_and_a_fast_one_fills_the_time():
    rows = benchmark({"slow": lambda: _sleep(60), "fast": lambda: _sleep(1)}, batch_size=1, warmup=0,
                     budget=Budget(seconds=0.1, min_calls=2, max_calls=400), progress=False)
    calls = {r["candidate"]: r["calls"] for r in rows}
    assert calls["slow"] == 2  # 120 ms is past the 100 ms budget at the floor
    assert 30 <= calls["fast"] <= 150  # about 100 ms of 1 ms calls (sleep overshoots a little)


def test_the_cap_stops_a_fast_candidate():
    rows = benchmark({"a": lambda: None}, batch_size=4, warmup=0, budget=Budget(seconds=60, min_calls=1, max_calls=7),
                     progress=False)
    assert rows[0]["calls"] == 7 and rows[0]["throughput"] == pytest.approx(4000 / rows[0]["mean_ms"])


def test_the_bare_loop_shows_the_harness_overhead():
    calls = {"harness": 0, "bare": 0}

    def harness():
        calls["harness"] += 1
        _sleep(4)

    def bare():
        calls["bare"] += 1
        _sleep(2)

    row = bare_loop_overhead(harness, bare, budget=Budget(seconds=0, min_calls=8), warmup=0, blocks=4)
    assert row["calls"] == 8 and calls == {"harness": 8, "bare": 8}  # 2 calls in each of 4 blocks a side
    assert row["harness_ms"] > row["bare_ms"] > 1.5 and row["blocks"] == 4
    assert 40 < row["overhead_pct"] < 200 and row["overhead_iqr_pct"] >= 0  # 4 ms against 2 ms
    assert "own_us" not in row


def test_the_harness_own_cost_is_timed_over_a_runtime_that_answers_at_once():
    row = bare_loop_overhead(lambda: _sleep(2), lambda: _sleep(2), budget=Budget(seconds=0, min_calls=2),
                             warmup=0, blocks=2, stub_run=lambda: _sleep(0.2))
    assert 150 < row["own_us"] < 2000  # 0.2 ms a call (sleep overshoots a little)
    assert row["own_pct"] == pytest.approx(100 * row["own_us"] / 1000 / row["bare_ms"])


# --- the deployment's loops ----------------------------------------------------------------


def _toy(jitter: bool = True, fail_at: int | None = None) -> Deployment:
    rng = np.random.default_rng(0)
    delays = rng.uniform(0, 3, size=(3, 64)) if jitter else np.zeros((3, 64))

    def read(i):
        _sleep(delays[0, i % 64])
        return i, np.full((4, 4), i, np.float32)

    def graph(item):
        i, x = item
        if fail_at is not None and i == fail_at:
            raise ValueError(f"bad item {i}")
        with timed("graph"):
            _sleep(delays[1, i % 64])
        return i, x @ x

    def post(item):
        i, y = item
        with timed("nms"):
            _sleep(delays[2, i % 64])
        return SimpleNamespace(index=i, total=torch.tensor(y.sum()), arr=y)

    return Deployment([("read", read), ("graph", graph), ("postprocess", post)], list(range(10)))


def test_pipelined_outputs_equal_the_sequential_ones_in_order():
    deployment = _toy()
    items = deployment.take(25)
    sequential = run_sequential(deployment, items)
    pipelined = run_pipelined(deployment, items, depth=2)
    assert [r.index for r in pipelined] == [i % 10 for i in range(25)]
    assert same_outputs(sequential, pipelined)
    pipelined[3].arr[0, 0] += 1
    assert not same_outputs(sequential, pipelined)


def test_pipelining_overlaps_the_stages():
    slow = Deployment([("read", lambda i: _sleep(20) or i), ("graph", lambda i: _sleep(20) or i)], list(range(8)))
    rows = loop_speed(slow, calls=8, rounds=1)
    assert [r["loop"] for r in rows] == ["sequential", "pipelined"] and all(r["same_outputs"] for r in rows)
    assert rows[1]["speedup"] > 1.5  # two 20 ms stages overlap: about 20 instead of 40 ms per item


def test_a_device_stand_in_hides_the_host_behind_the_device():
    calls = []

    def graph(i):
        calls.append(i)
        return np.full(3, i)

    real = Deployment([("read", lambda i: _sleep(4) or i), ("graph", graph), ("postprocess", lambda x: _sleep(4) or x)],
                      list(range(6)))
    assert with_device_stand_in(Deployment([("track", lambda i: i)], [0]), 10.0, calls=1) is None
    stand_in = with_device_stand_in(real, 12.0, calls=6)
    assert calls == list(range(6))  # the real graph ran once per item, to record its outputs
    sequential, pipelined = loop_speed(stand_in, calls=6, rounds=1)
    assert calls == list(range(6))  # and never again
    assert sequential["same_outputs"] and same_outputs(run_sequential(stand_in, range(6)), run_sequential(real, range(6)))
    assert sequential["mean_ms"] > 19  # 4 + 12 + 4 ms one after the other
    assert pipelined["mean_ms"] < 17  # the device's 12 ms set the pace


def test_the_stand_in_takes_the_outputs_a_loop_recorded_without_running_the_graph_again():
    calls = []

    def graph(i):
        calls.append(i)
        return np.full(3, i)

    real = Deployment([("read", lambda i: i), ("graph", graph), ("postprocess", lambda x: x * 2)], list(range(3)))
    assert recording_graph(Deployment([("track", lambda i: i)], [0]), 2) == (None, [])
    recorder, recorded = recording_graph(real, 4)
    outputs = run_sequential(recorder, real.take(6))
    assert calls == [0, 1, 2, 0, 1, 2] and [int(r[0]) for r in recorded] == [0, 1, 2, 0]  # the first 4 kept
    assert same_outputs(outputs, run_sequential(real, real.take(6)))  # recording changes no output
    calls.clear()
    stand_in = with_device_stand_in(real, 1.0, calls=4, recorded=recorded)
    assert same_outputs(run_sequential(stand_in, real.take(4)), outputs[:4]) and calls == []
    with_device_stand_in(real, 1.0, calls=4, recorded=recorded[:2])  # too few: recorded again
    assert calls == [0, 1, 2, 0]


def test_a_failing_stage_stops_the_pipeline_and_is_named():
    with pytest.raises(RuntimeError, match="pipeline stage 'graph' failed: ValueError\\('bad item 5'\\)"):
        run_pipelined(_toy(jitter=False, fail_at=5), range(10), depth=1)
    assert not [t for t in threading.enumerate() if t.name.startswith("pipeline ")]


def test_breakdown_splits_host_from_graph():
    deployment = Deployment([("read", lambda i: _sleep(5) or i), ("graph", lambda i: _sleep(10) or i),
                             ("postprocess", lambda i: _post(i))], list(range(4)))
    found = breakdown(deployment, calls=4, threads=1)
    steps = found["steps"]
    assert set(steps) == {"read", "graph", "postprocess", "nms"}
    assert 9.5 <= steps["graph"] < 16 and 2.5 <= steps["nms"] < 7 and steps["postprocess"] < 2
    assert found["host_ms"] == pytest.approx(found["total_ms"] - steps["graph"])
    assert sum(steps.values()) == pytest.approx(found["total_ms"], rel=0.05)


def _post(i):
    with timed("nms"):
        _sleep(3)
    return i


def test_the_deployment_bound():
    bound = deployment_bound(host_ms=8.0, device_ms=2.0)
    assert bound["overlapped_fps"] == 125.0 and bound["sequential_fps"] == 100.0 and bound["bottleneck"] == "host"
    assert deployment_bound(host_ms=1.0, device_ms=4.0)["bottleneck"] == "device"


def test_same_outputs_is_exact():
    a = {"x": np.array([1.0, np.nan], np.float32), "y": [1, (2, "z")]}
    assert same_outputs(a, {"x": np.array([1.0, np.nan], np.float32), "y": [1, (2, "z")]})
    assert not same_outputs(a, {"x": np.array([1.0, np.nan], np.float64), "y": [1, (2, "z")]})  # dtype
    assert not same_outputs(np.zeros((2, 1)), np.zeros(2))
    assert not same_outputs(torch.zeros(2), np.zeros(2, np.float32))


def test_the_harness_check_takes_the_fastest_graph_under_the_embedded_default():
    from zoobook.stages.steps import fastest_graph

    rows = [{"graph": g, "candidate": c, "batch_size": bs, "mean_ms": ms} for g, c, bs, ms in [
        ("mask", "onnxruntime", 1, 300.0), ("refine", "torch", 1, 5.0), ("refine", "onnxruntime", 1, 10.0),
        ("template", "onnxruntime", 1, 50.0), ("template", "onnxruntime", 4, 1.0)]]
    assert fastest_graph(rows, ["mask", "refine", "template"]) == "refine"
    assert fastest_graph([], ["mask", "refine"]) == "mask"  # nothing timed: the first
    assert fastest_graph([{"candidate": "onnxruntime", "batch_size": 1, "mean_ms": 9.0}], ["only"]) == "only"


def test_the_harness_check_is_not_run_beside_a_slow_graph():
    from zoobook.stages.steps import harness_overhead

    row = harness_overhead(None, "g", [{"candidate": "torch", "batch_size": 1, "mean_ms": 50.0},
                                       {"candidate": "onnxruntime", "batch_size": 1, "mean_ms": 2500.0}])
    assert row["note"].startswith("not measured: one call takes 2.5 s") and "bare_ms" not in row


def _host_run(graph_ms: float, calls: list) -> SimpleNamespace:
    """A run whose port's deployment reads an item, runs a graph of ``graph_ms`` (counting its
    calls) and post-processes, beside a published device of 5 ms."""

    def graph(i):
        calls.append(i)
        _sleep(graph_ms)
        return np.full(3, i)

    def deployment(run, backend, *, items, backend_options=None):
        return Deployment([("read", lambda i: _sleep(1) or i), ("graph", graph), ("postprocess", lambda x: x * 2)],
                          list(range(items)))

    return SimpleNamespace(port=SimpleNamespace(deployment=deployment),
                           spec=SimpleNamespace(device_time=SimpleNamespace(ms=5.0, basis="published, 5 ms")))


def test_a_slow_graph_skips_the_real_loops_and_the_stand_in_takes_the_breakdowns_outputs(monkeypatch):
    from zoobook.backends import base
    from zoobook.stages import steps

    monkeypatch.setattr(base, "cpu_threads", lambda: 2)
    calls = []
    monkeypatch.setattr(steps, "REAL_LOOPS_MAX_MS", 1000.0)
    fast = steps.host_speed(_host_run(2.0, calls), "onnxruntime", items=3)
    assert [r["loop"] for r in fast["pipeline"]] == ["sequential", "pipelined", "sequential, device stand-in",
                                                     "pipelined, device stand-in"]
    assert all(r["same_outputs"] for r in fast["pipeline"])
    calls.clear()
    monkeypatch.setattr(steps, "REAL_LOOPS_MAX_MS", 1.0)  # the 2 ms graph is now slow
    slow = steps.host_speed(_host_run(2.0, calls), "onnxruntime", items=3)
    assert calls == [0] + [0, 1, 2] * 2  # warm-up, then both breakdowns, and never again
    loops = slow["pipeline"]
    assert loops[0]["loop"] == "sequential and pipelined" and loops[0]["note"].startswith("not run: one graph call")
    assert [r["loop"] for r in loops[1:]] == ["sequential, device stand-in", "pipelined, device stand-in"]
    assert all(r["same_outputs"] for r in loops[1:]) and all(r["calls"] == 12 for r in loops[1:])
    assert [r["threads"] for r in slow["host"]] == [1, 2] and slow["host"][0]["graph"] >= 1.9
