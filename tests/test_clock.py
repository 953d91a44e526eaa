"""FakeClock: manual advance, autojump to exact deadlines, several clocks on one loop."""

from __future__ import annotations

import asyncio
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import stalwart as sw
from stalwart._clock import race_event, sleep_until


async def test_advance_wakes_exactly_the_due_sleeps() -> None:
    """advance() moves time and wakes only the sleeps whose deadline passed."""
    clock = sw.FakeClock(start=100.0)
    woke: list[float] = []

    async def sleeper(d: float) -> None:
        await clock.sleep(d)
        woke.append(clock.monotonic())

    tasks = [asyncio.create_task(sleeper(d)) for d in (5, 10)]
    await asyncio.sleep(0)
    await clock.advance(5)
    assert woke == [5.0]
    await clock.advance(5)
    await asyncio.gather(*tasks)
    assert woke == [5.0, 10.0]
    assert clock.now() == 110.0


async def test_autojump_runs_an_hour_of_sleeps_at_exact_times() -> None:
    """With autojump, interleaved sleeps finish at exactly their virtual deadlines."""
    clock = sw.FakeClock(autojump=True)
    seen: list[tuple[str, float]] = []

    async def ticker(name: str, period: float, n: int) -> None:
        for _ in range(n):
            await clock.sleep(period)
            seen.append((name, clock.monotonic()))

    await asyncio.gather(ticker("a", 600, 6), ticker("b", 1500, 2))
    assert [t for n, t in seen if n == "a"] == [600, 1200, 1800, 2400, 3000, 3600]
    assert [t for n, t in seen if n == "b"] == [1500, 3000]


async def test_two_autojump_clocks_on_one_loop_both_jump() -> None:
    """One clock's idle check is not work for another: both still jump."""
    c1, c2 = sw.FakeClock(autojump=True), sw.FakeClock(autojump=True)
    await asyncio.wait_for(asyncio.gather(c1.sleep(5), c2.sleep(7)), timeout=5)
    assert (c1.monotonic(), c2.monotonic()) == (5.0, 7.0)


async def test_autojump_does_not_jump_while_work_is_ready() -> None:
    """Time stands still while other tasks still have work to do."""
    clock = sw.FakeClock(autojump=True)
    observed: list[float] = []

    async def busy() -> None:
        for _ in range(200):
            observed.append(clock.monotonic())
            await asyncio.sleep(0)

    await asyncio.gather(busy(), clock.sleep(30))
    assert set(observed) == {0.0}
    assert clock.monotonic() == 30.0


def test_time_never_moves_backwards() -> None:
    """advance() and set_time() refuse to go back."""
    clock = sw.FakeClock(start=50.0)
    with pytest.raises(ValueError):
        clock.advance_sync(-1)
    with pytest.raises(ValueError):
        clock.set_time(49.0)
    clock.set_time(60.0)
    assert clock.now() == 60.0 and clock.monotonic() == 10.0


async def test_autojump_waits_while_activity_is_held() -> None:
    """Work in a thread, marked with activity(), keeps virtual time still."""
    clock = sw.FakeClock(autojump=True)
    loop = asyncio.get_running_loop()
    seen: list[float] = []

    def blocking() -> float:
        import time

        time.sleep(0.05)  # real work in a thread, invisible to the event loop
        return clock.monotonic()

    async def threaded() -> None:
        with clock.activity():
            seen.append(await loop.run_in_executor(None, blocking))

    await asyncio.gather(threaded(), clock.sleep(1))
    assert seen == [0.0]
    assert clock.monotonic() == 1.0


class _ArrivalDuringCheck:
    """A ready callback that looks like another clock's idle check and, the moment the
    check inspects it, has a new callback arrive (as a pool thread's
    ``call_soon_threadsafe`` would at that instant)."""

    def __init__(self, ready: Any, other: sw.FakeClock) -> None:
        self._ready = ready
        self._other = other

    @property
    def _callback(self) -> object:
        self._ready.append(object())
        return self._other._maybe_jump


def test_idle_check_survives_a_callback_arriving_mid_check() -> None:
    """A callback appended to the loop's ready queue while autojump inspects it is not
    "deque mutated during iteration" (which killed the idle check, so the clock never
    jumped again)."""
    loop = asyncio.new_event_loop()
    ready = loop._ready  # type: ignore[attr-defined]
    try:
        clock = sw.FakeClock(autojump=True, idle_hops=0)
        ready.append(_ArrivalDuringCheck(ready, sw.FakeClock(autojump=True)))
        clock._maybe_jump(loop, clock._generation, 0)  # raised RuntimeError before
        assert len(ready) == 2
    finally:
        ready.clear()
        loop.close()


async def test_autojump_with_callbacks_arriving_from_many_threads() -> None:
    """Thirty autojump clocks on one loop (their idle checks queue behind each other)
    while pool threads post callbacks as sync tools finishing do: every clock still
    reaches its deadlines, and no idle check fails."""
    loop = asyncio.get_running_loop()
    failures: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: failures.append(context))
    clocks = [sw.FakeClock(autojump=True, idle_hops=3) for _ in range(30)]

    def post() -> None:
        for _ in range(3000):
            loop.call_soon_threadsafe(int)
            time.sleep(0)  # let the loop thread in between posts

    async def ticker(clock: sw.FakeClock) -> None:
        for _ in range(50):
            await clock.sleep(1)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        with ThreadPoolExecutor(4) as pool:
            posters = [loop.run_in_executor(pool, post) for _ in range(4)]
            await asyncio.wait_for(
                asyncio.gather(*posters, *(ticker(c) for c in clocks)), timeout=30)
    finally:
        sys.setswitchinterval(interval)
        loop.set_exception_handler(None)
    assert failures == []
    assert {c.monotonic() for c in clocks} == {50.0}


async def test_a_race_started_before_time_moves_ends_at_its_own_deadline() -> None:
    """race_event's sleep counts from the call, not from when its task first runs: time
    that moves in between (a test's advance, a stalled loop) is not slept again. (The
    worker's scheduler hung forever under load when a test advanced the clock between
    computing its delay and its sleeper's first step.)"""
    clock = sw.FakeClock()
    never = asyncio.Event()
    race = asyncio.ensure_future(race_event(never, clock, 1.0))
    await asyncio.sleep(0)  # race_event made its sleeper task, which has not run yet
    clock.advance_sync(1.0)
    for _ in range(10):
        await asyncio.sleep(0)
    assert race.done() and race.result() is False
    assert clock.pending_sleeps == 0


async def test_sleep_until_a_deadline_already_past_returns_at_once() -> None:
    clock = sw.FakeClock()
    clock.advance_sync(5)
    await sleep_until(clock, 4.0)
    assert clock.pending_sleeps == 0
    sleeper = asyncio.ensure_future(sleep_until(clock, 6.0))
    await asyncio.sleep(0)
    assert clock.pending_sleeps == 1
    await clock.advance(1)
    assert sleeper.done()
