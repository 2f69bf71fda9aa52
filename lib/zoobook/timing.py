"""Named host steps, timed where someone is listening and free where nobody is.

The host code marks its steps once, where they happen::

    with timed("nms"):
        keep = fast_nms(...)

and 06-benchmark measures them by calling the same code inside :func:`recording`::

    with recording() as clock:
        postprocess(...)
    clock.ms  # {"nms": 0.41, ...}

Outside :func:`recording`, :func:`timed` costs a context-variable lookup. Steps nest: an
inner step's time is its own and is not counted again in the step around it (every figure is
exclusive), so the steps of one call add up to the time spent in marked code.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass
class StepClock:
    """Exclusive milliseconds per step name, summed over the calls made while recording, and
    how many times each step ran."""

    ms: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    _stack: list[list] = field(default_factory=list, repr=False)

    def _enter(self, name: str) -> None:
        now = time.perf_counter()
        if self._stack:
            outer = self._stack[-1]
            self._add(outer[0], now - outer[1])
        self._stack.append([name, now])

    def _exit(self) -> None:
        now = time.perf_counter()
        name, since = self._stack.pop()
        self._add(name, now - since)
        self.calls[name] = self.calls.get(name, 0) + 1
        if self._stack:
            self._stack[-1][1] = now

    def _add(self, name: str, seconds: float) -> None:
        self.ms[name] = self.ms.get(name, 0.0) + seconds * 1000.0

    def total_ms(self) -> float:
        return sum(self.ms.values())


_CLOCK: ContextVar[StepClock | None] = ContextVar("zoobook_step_clock", default=None)


@contextmanager
def timed(name: str) -> Iterator[None]:
    """Mark a host step: its time is added to the recording clock, if there is one."""
    clock = _CLOCK.get()
    if clock is None:
        yield
        return
    clock._enter(name)
    try:
        yield
    finally:
        clock._exit()


@contextmanager
def recording(clock: StepClock | None = None) -> Iterator[StepClock]:
    """Record the steps marked with :func:`timed` in this thread (and context) into ``clock``
    (a new one by default), which is yielded."""
    clock = StepClock() if clock is None else clock
    token = _CLOCK.set(clock)
    try:
        yield clock
    finally:
        _CLOCK.reset(token)
