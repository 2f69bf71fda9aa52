"""zoobook.parallel: chains run in order, side by side, here or on a local Dask cluster.

The cluster tests start 2 worker processes (a few seconds each test); ``_probe`` is
module-level so that the spawned workers import it from this module (they get this process's
``sys.path``).
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from pathlib import Path

import pytest
from dask.system import CPU_COUNT

from zoobook.parallel import DevicePool, Step, StepError, device_ids, run_chains


def _probe(step: Step, device_id: int | None, *, folder: str, seconds: float = 0.0,
           fail: tuple[str, ...] = (), unpicklable: tuple[str, ...] = ()) -> dict:
    """Sleep, then write and return what ran where: chain, step, pid, start, end, device, and
    the environment variables ZOOBOOK_RUNS and OMP_NUM_THREADS."""
    start = time.time()
    time.sleep(seconds)
    if step.name in fail:
        raise OSError(f"probe told to fail at {step.name}")
    if step.name in unpicklable:
        return {"lock": threading.Lock()}
    report = {"chain": step.chain, "step": step.name, "pid": os.getpid(), "start": start,
              "end": time.time(), "device": device_id,
              "env": {k: os.environ.get(k) for k in ("ZOOBOOK_RUNS", "OMP_NUM_THREADS")}}
    Path(folder, f"{step.chain}-{step.name}.json").write_text(json.dumps(report))
    return report


def _chains(names: str, steps: int, npu: bool = False) -> dict[str, list[Step]]:
    return {c: [Step(c, f"{i:02d}-s", npu) for i in range(1, steps + 1)] for c in names}


def _events():
    """on_start/on_done callbacks recording ("start"|"done", chain, step) in call order."""
    events = []
    return (events, lambda step: events.append(("start", step.chain, step.name)),
            lambda step, result: events.append(("done", step.chain, step.name)))


def _check_events(events, chains: dict[str, list[Step]]) -> None:
    """Each chain: start, done of its first step, then start, done of the next, and so on."""
    for chain, steps in chains.items():
        mine = [(kind, name) for kind, c, name in events if c == chain]
        assert mine == [(kind, s.name) for s in steps for kind in ("start", "done")]


def test_sequential_runs_chain_after_chain_in_order(tmp_path):
    chains = {"a": [Step("a", "01"), Step("a", "02", npu=True)], "b": [Step("b", "01", npu=True)]}
    events, on_start, on_done = _events()
    results = run_chains(chains, functools.partial(_probe, folder=str(tmp_path)),
                         on_start=on_start, on_done=on_done)
    assert [[r["step"] for r in results[c]] for c in "ab"] == [["01", "02"], ["01"]]
    assert [r["device"] for r in results["a"] + results["b"]] == [None, 0, 0]
    assert {r["pid"] for r in results["a"]} == {os.getpid()}
    assert events == [("start", "a", "01"), ("done", "a", "01"), ("start", "a", "02"),
                      ("done", "a", "02"), ("start", "b", "01"), ("done", "b", "01")]


def test_sequential_step_that_raises_is_a_step_error(tmp_path):
    chains = _chains("a", 3)
    results = run_chains(chains, functools.partial(_probe, folder=str(tmp_path), fail=("02-s",)))
    error = results["a"][1]
    assert isinstance(error, StepError) and error.step == chains["a"][1]
    assert error.message == "OSError: probe told to fail at 02-s" and "_probe" in error.traceback_text
    assert results["a"][2]["step"] == "03-s"


def test_chains_run_side_by_side_in_two_workers(tmp_path):
    chains = _chains("ab", 3)
    events, on_start, on_done = _events()
    environ = dict(os.environ)
    results = run_chains(chains, functools.partial(_probe, folder=str(tmp_path), seconds=0.3), jobs=2,
                         on_start=on_start, on_done=on_done)
    assert {c: [r["step"] for r in results[c]] for c in "ab"} == {c: ["01-s", "02-s", "03-s"] for c in "ab"}
    runs = {c: [json.loads((tmp_path / f"{c}-{s.name}.json").read_text()) for s in chains[c]] for c in "ab"}
    for steps in runs.values():  # in order, one at a time
        assert all(earlier["end"] <= later["start"] for earlier, later in zip(steps, steps[1:]))
    spans = {c: (steps[0]["start"], steps[-1]["end"]) for c, steps in runs.items()}
    assert spans["a"][0] < spans["b"][1] and spans["b"][0] < spans["a"][1]  # overlapped
    assert len({r["pid"] for steps in runs.values() for r in steps} - {os.getpid()}) == 2
    _check_events(events, chains)
    threads = environ.get("OMP_NUM_THREADS", str(max(1, CPU_COUNT // 2)))
    assert results["a"][0]["env"] == {"ZOOBOOK_RUNS": os.environ["ZOOBOOK_RUNS"], "OMP_NUM_THREADS": threads}
    assert dict(os.environ) == environ  # what Dask's nannies set here is put back


def test_step_that_raises_on_a_worker_leaves_the_others_running(tmp_path):
    chains = _chains("ab", 3)
    events, on_start, on_done = _events()
    results = run_chains(chains, functools.partial(_probe, folder=str(tmp_path), fail=("01-s",)
                                                   ), jobs=2, on_done=on_done, on_start=on_start)
    for chain in "ab":
        error = results[chain][0]
        assert isinstance(error, StepError) and error.step == chains[chain][0]
        assert error.message == "OSError: probe told to fail at 01-s"
        assert [r["step"] for r in results[chain][1:]] == ["02-s", "03-s"]
    _check_events(events, chains)


def test_npu_steps_hold_distinct_devices(tmp_path):
    chains = _chains("ab", 2, npu=True) | {"c": [Step("c", "01-cpu")]}
    results = run_chains(chains, functools.partial(_probe, folder=str(tmp_path), seconds=0.3),
                         jobs=2, npus=2)
    assert results["c"][0]["device"] is None
    npu_runs = [r for c in "ab" for r in results[c]]
    assert {r["device"] for r in npu_runs} <= {0, 1}
    for one in npu_runs:
        for other in npu_runs:
            if one is not other and one["start"] < other["end"] and other["start"] < one["end"]:
                assert one["device"] != other["device"], (one, other)
    for r in npu_runs:  # one device per worker process
        assert all(o["device"] == r["device"] for o in npu_runs if o["pid"] == r["pid"])


def test_on_a_scheduler_steps_of_one_worker_hold_distinct_devices(tmp_path):
    """One worker of 2 threads with NPU=2, reached through its scheduler's address."""
    from distributed import LocalCluster

    chains = _chains("ab", 2, npu=True)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp://",
                      resources={"NPU": 2}, dashboard_address=None) as cluster:
        results = run_chains(chains, functools.partial(_probe, folder=str(tmp_path), seconds=0.3),
                             scheduler=cluster.scheduler_address)
    firsts = [results[c][0] for c in "ab"]
    assert firsts[0]["start"] < firsts[1]["end"] and firsts[1]["start"] < firsts[0]["end"]
    assert {r["device"] for r in firsts} == {0, 1}


def test_npu_steps_on_a_scheduler_without_npu_workers_name_the_problem():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://",
                      dashboard_address=None) as cluster:
        with pytest.raises(ValueError, match="no worker of tcp://.* offers the NPU resource"):
            run_chains({"a": [Step("a", "01", npu=True)]}, _probe, scheduler=cluster.scheduler_address)


def test_interrupt_cancels_what_is_left_and_closes_the_cluster(tmp_path):
    environ = dict(os.environ)

    def interrupt(step, result):
        raise KeyboardInterrupt

    started = time.time()
    with pytest.raises(KeyboardInterrupt):
        run_chains(_chains("ab", 3), functools.partial(_probe, folder=str(tmp_path), seconds=1.0), jobs=2,
                   on_done=interrupt)
    # the steps running at the interrupt finish (a thread cannot be stopped); none after them ran
    assert not list(tmp_path.glob("*-03-s.json"))
    assert time.time() - started < 15
    assert dict(os.environ) == environ


def test_ctrl_c_while_the_client_starts_closes_it(monkeypatch):
    """Interrupted half-way, a Dask client hangs the process at exit: Ctrl-C waits until the
    client is up, then stops the run and closes it."""
    import signal

    from distributed import Client, LocalCluster

    clients, start = [], Client._start

    def interrupted_start(self, *args, **kwargs):
        clients.append(self)
        os.kill(os.getpid(), signal.SIGINT)
        return start(self, *args, **kwargs)

    with LocalCluster(n_workers=1, processes=False, protocol="tcp://", dashboard_address=None) as cluster:
        monkeypatch.setattr(Client, "_start", interrupted_start)
        with pytest.raises(KeyboardInterrupt):
            run_chains(_chains("a", 1), _probe, scheduler=cluster.scheduler_address)
    assert [c.status for c in clients] == ["closed"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_cluster_failures_are_step_errors(tmp_path, monkeypatch):
    """A result Dask cannot send back fails only its step; a task failing outside ``work``
    (here a malformed $ZOOBOOK_NPU_DEVICES) leaves the rest of its chain unrun."""
    from distributed import LocalCluster

    monkeypatch.setenv("ZOOBOOK_NPU_DEVICES", "first")
    chains = _chains("a", 2) | _chains("b", 2, npu=True)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp://",
                      resources={"NPU": 1}, dashboard_address=None) as cluster:
        results = run_chains(chains, functools.partial(_probe, folder=str(tmp_path), unpicklable=("01-s",)),
                             scheduler=cluster.scheduler_address)
    unsent, after = results["a"]
    assert unsent.message.startswith("task failed: TypeError: Could not serialize object of type lock")
    assert after["step"] == "02-s"
    assert "$ZOOBOOK_NPU_DEVICES must be comma-separated device ids, not 'first'" in results["b"][0].message
    assert results["b"][1].message == "task failed: not run, 01-s failed"


def test_device_pool_lends_each_id_to_one_caller_at_a_time():
    pool, held, clashes = DevicePool([4, 5]), set(), []
    lock = threading.Lock()

    def borrow():
        for _ in range(20):
            with pool.take() as device:
                with lock:
                    clashes.append(device in held)
                    held.add(device)
                time.sleep(0.001)
                with lock:
                    held.discard(device)

    threads = [threading.Thread(target=borrow) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(clashes) == 40 and not any(clashes)
    with pool.take() as first, pool.take() as second:
        assert (first, second) == (4, 5)
        with pytest.raises(RuntimeError, match="no free NPU device"):
            with pool.take():
                pass


def test_device_ids_from_the_resource_or_the_environment():
    assert device_ids(3, None) == [0, 1, 2]
    assert device_ids(2, "4,5") == [4, 5]
    with pytest.raises(ValueError, match="comma-separated"):
        device_ids(2, "4;5")
    with pytest.raises(ValueError, match="must name 2 distinct devices"):
        device_ids(2, "4,4")


@pytest.mark.parametrize("chains, options, message", [
    ({"a": [Step("b", "01")]}, {}, "holds steps of other chains"),
    ({"a": [Step("a", "01"), Step("a", "01")]}, {}, "steps named alike"),
    ({"a": [Step("a", "01")]}, {"jobs": 0}, "jobs must be at least 1"),
    ({"a": [Step("a", "01", npu=True)]}, {"jobs": 2}, "need an NPU but npus=0"),
])
def test_bad_requests_name_the_problem(chains, options, message):
    with pytest.raises(ValueError, match=message):
        run_chains(chains, _probe, **options)
