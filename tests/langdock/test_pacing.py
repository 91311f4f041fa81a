"""The Pacer: never more than ``per_minute`` calls in any 60 s window, in virtual time."""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.langdock.pacing import WINDOW, Pacer
from tests.properties import examples


class VirtualTime:
    """A clock and a sleep for many tasks: time jumps to the next wake-up once every task
    is asleep (or done), so nothing really waits and the order of events is exact."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert seconds >= 0, seconds
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, self._seq, future))
        self._seq += 1
        await future

    async def run(self, *coros: Coroutine[Any, Any, None]) -> None:
        tasks = [asyncio.ensure_future(c) for c in coros]
        while True:
            for _ in range(10_000):  # let every task run until it sleeps or ends
                running = [t for t in tasks if not t.done()]
                if len(self._sleepers) == len(running):
                    break
                await asyncio.sleep(0)
            else:
                raise AssertionError("a task neither sleeps nor ends")
            if not running:
                break
            wake = self._sleepers[0][0]
            assert wake >= self.now
            self.now = wake
            while self._sleepers and self._sleepers[0][0] == wake:
                heapq.heappop(self._sleepers)[2].set_result(None)
        for task in tasks:
            task.result()  # re-raise a task's failure


@dataclass(frozen=True)
class Call:
    at: float
    caller: int
    reserve: int
    per_minute: int  # the pacer's limit when the call was let through


def in_window(calls: list[Call], index: int) -> int:
    """Calls in the 60 s window that ends with call ``index`` (itself included, later calls at
    the same instant not), in the pacer's own arithmetic."""
    end = calls[index].at
    return sum(1 for c in calls[: index + 1] if end < c.at + WINDOW)


async def test_the_first_per_minute_calls_go_at_once_then_one_as_each_leaves_the_window() -> None:
    vt = VirtualTime()
    pacer = Pacer(3, clock=vt.clock, sleep=vt.sleep)
    times: list[float] = []

    async def caller() -> None:
        for gap in (0, 10, 10, 0, 0, 0):
            await vt.sleep(gap)
            await pacer.acquire()
            times.append(vt.now - 1000.0)

    await vt.run(caller())
    assert times == [0, 10, 20, 60, 70, 80]
    assert pacer.waited == pytest.approx(40 + 10 + 10)  # 20 -> 60, 60 -> 70, 70 -> 80
    assert pacer.used() == 3


async def test_used_counts_the_last_minute_only() -> None:
    vt = VirtualTime()
    pacer = Pacer(10, clock=vt.clock, sleep=vt.sleep)
    await pacer.acquire()
    vt.now += 30
    await pacer.acquire()
    assert pacer.used() == 2
    vt.now += 30  # the first call is exactly 60 s old: out of the window
    assert pacer.used() == 1
    vt.now += 30
    assert pacer.used() == 0


async def test_a_poll_is_never_queued_behind_a_waiting_backfill() -> None:
    vt = VirtualTime()
    pacer = Pacer(10, clock=vt.clock, sleep=vt.sleep)
    poll_waits: list[float] = []
    backfill_calls = 0

    async def backfill() -> None:  # three workers asking as fast as they may
        nonlocal backfill_calls
        while vt.now < 1000 + 600:
            await pacer.acquire(reserve=2)
            backfill_calls += 1

    async def poll() -> None:
        for _ in range(10):
            await vt.sleep(60.0)
            before = vt.now
            await pacer.acquire()
            await pacer.acquire()
            poll_waits.append(vt.now - before)

    await vt.run(backfill(), backfill(), backfill(), poll())
    assert poll_waits == [0.0] * 10
    assert backfill_calls >= 8 * 10  # the backfill still gets its 8 a minute


async def test_a_reserve_as_large_as_the_limit_slows_but_never_stops() -> None:
    vt = VirtualTime()
    pacer = Pacer(2, clock=vt.clock, sleep=vt.sleep)

    async def backfill() -> None:
        for _ in range(3):
            await pacer.acquire(reserve=5)

    await vt.run(backfill())
    assert vt.now - 1000.0 == pytest.approx(120.0)  # one call a minute


async def test_raising_per_minute_takes_effect_at_the_next_check() -> None:
    vt = VirtualTime()
    pacer = Pacer(1, clock=vt.clock, sleep=vt.sleep)
    done: list[float] = []

    async def backfill() -> None:
        for _ in range(3):
            await pacer.acquire()
            done.append(vt.now - 1000.0)

    async def operator() -> None:
        await vt.sleep(5.0)
        pacer.per_minute = 5  # the waiter sleeps until t=60, then finds room for both

    await vt.run(backfill(), operator())
    assert done == [0.0, 60.0, 60.0]


def test_per_minute_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Pacer(0)


gaps = st.one_of(
    st.just(0.0),
    st.integers(0, 70).map(float),
    st.floats(0, 70, allow_nan=False, allow_infinity=False),
)


@pytest.mark.long
@settings(max_examples=examples(100), deadline=None)
@given(
    per_minute=st.integers(1, 12),
    callers=st.lists(
        st.tuples(st.integers(0, 14), st.lists(gaps, min_size=1, max_size=25)),
        min_size=1,
        max_size=5,
    ),
    changes=st.lists(st.tuples(gaps, st.integers(1, 12)), max_size=3),
)
def test_no_window_ever_holds_more_than_per_minute_calls(
    per_minute: int, callers: list[tuple[int, list[float]]], changes: list[tuple[float, int]]
) -> None:
    vt = VirtualTime()
    pacer = Pacer(per_minute, clock=vt.clock, sleep=vt.sleep)
    calls: list[Call] = []

    async def caller(index: int, reserve: int, pattern: list[float]) -> None:
        for gap in pattern:
            await vt.sleep(gap)
            await pacer.acquire(reserve)
            # no await since acquire recorded the call: clock and limit are those it checked
            calls.append(Call(vt.now, index, reserve, pacer.per_minute))

    async def operator() -> None:
        for gap, value in changes:
            await vt.sleep(gap)
            pacer.per_minute = value

    async def scenario() -> None:
        await vt.run(
            *(caller(i, reserve, pattern) for i, (reserve, pattern) in enumerate(callers)),
            operator(),
        )

    asyncio.run(scenario())
    assert len(calls) == sum(len(pattern) for _, pattern in callers)
    assert [c.at for c in calls] == sorted(c.at for c in calls)
    for index, call in enumerate(calls):
        held = in_window(calls, index)
        # never more than the limit of the moment, and a caller with a reserve leaves room
        assert held <= call.per_minute, (call, held)
        assert held <= max(1, call.per_minute - call.reserve), (call, held)
    if not changes:  # a fixed limit: check every window explicitly, wherever it starts
        starts = [c.at for c in calls]
        for start in starts:
            assert sum(1 for c in calls if start <= c.at < start + WINDOW) <= per_minute
