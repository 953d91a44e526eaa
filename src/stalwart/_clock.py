"""Time, owned by the runtime.

Nothing in stalwart calls ``time.time()`` or ``asyncio.sleep()`` directly: every policy,
timer and lease takes a :class:`Clock`. Production uses :class:`SystemClock`; tests use
:class:`FakeClock`, whose time moves only when told to (``advance``) or, with
``autojump=True``, jumps straight to the next pending deadline once the event loop has
nothing else to do — so a test of an hour-long backoff runs in microseconds and asserts
exact times (the idea of trio's ``MockClock``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import final

__all__ = ["Clock", "FakeClock", "SystemClock", "race_event", "sleep_until"]


class Clock(ABC):
    """A source of wall time, monotonic time and sleeps."""

    @abstractmethod
    def now(self) -> float:
        """Wall-clock time in seconds since the epoch (journaled, compared across hosts)."""

    @abstractmethod
    def monotonic(self) -> float:
        """Monotonic seconds, for measuring durations and local deadlines."""

    @abstractmethod
    async def sleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds`` of this clock's time."""

    def activity(self) -> AbstractContextManager[None]:
        """Mark work the event loop cannot see (a thread running a step) as under way.

        A real clock ignores it; :class:`FakeClock` does not jump while any is held.
        """
        return nullcontext()


@final
class SystemClock(Clock):
    """The real clock."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


@final
class FakeClock(Clock):
    """A virtual clock for tests.

    Args:
        start: the initial wall time (``now()``); ``monotonic()`` starts at 0.
        autojump: when true, time jumps to the earliest pending sleep as soon as the
            event loop has had no ready callback for ``idle_hops`` rounds and no sleeper
            registered or woke meanwhile — every task is blocked on the clock. Work in
            threads counts only while someone holds :meth:`activity` (the engine does
            for synchronous steps); other thread or socket waits look idle, so drive
            such tests with :meth:`advance` (or use
            :class:`~stalwart.testing.MemoryStore` rather than SQLite).
        idle_hops: loop iterations that count as idle (see ``autojump``).
    """

    def __init__(self, start: float = 1_700_000_000.0, *, autojump: bool = False,
                 idle_hops: int = 20) -> None:
        self._offset = start
        self._mono = 0.0
        self._autojump = autojump
        self._idle_hops = idle_hops
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._generation = 0
        self._jumper: asyncio.Handle | None = None
        self._held = 0

    def now(self) -> float:
        return self._offset + self._mono

    def monotonic(self) -> float:
        return self._mono

    @contextmanager
    def _hold(self) -> Iterator[None]:
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1

    def activity(self) -> AbstractContextManager[None]:
        """While held, autojump waits: work is under way outside the event loop."""
        return self._hold()

    @property
    def pending_sleeps(self) -> int:
        """How many sleeps are waiting for time to move."""
        return sum(1 for _, _, f in self._heap if not f.done())

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._heap, (self._mono + seconds, next(self._seq), fut))
        self._generation += 1
        if self._autojump:
            self._schedule_jump(loop, self._generation, self._idle_hops)
        await fut

    def advance_sync(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake every sleep that is now due."""
        if seconds < 0:
            raise ValueError("time cannot move backwards")
        self._mono += seconds
        self._wake_due()

    async def advance(self, seconds: float) -> None:
        """Move time forward and let the woken tasks run until they block again."""
        self.advance_sync(seconds)
        for _ in range(self._idle_hops):
            await asyncio.sleep(0)

    def set_time(self, wall: float) -> None:
        """Jump wall time to ``wall`` (used to simulate a restart much later)."""
        if wall < self.now():
            raise ValueError("time cannot move backwards")
        self.advance_sync(wall - self.now())

    def _wake_due(self) -> None:
        while self._heap and self._heap[0][0] <= self._mono:
            _, _, fut = heapq.heappop(self._heap)
            if not fut.done():
                fut.set_result(None)
        self._generation += 1

    def _schedule_jump(self, loop: asyncio.AbstractEventLoop, generation: int,
                       hops: int) -> None:
        if self._jumper is not None:
            self._jumper.cancel()
        self._jumper = loop.call_soon(self._maybe_jump, loop, generation, hops)

    def _maybe_jump(self, loop: asyncio.AbstractEventLoop, generation: int, hops: int) -> None:
        self._jumper = None
        if generation != self._generation:
            return  # something happened since; the newer sleeper scheduled its own check
        # Idle means: no other callback is ready to run (trio's "all tasks blocked").
        # asyncio keeps ready callbacks in ``_ready``; where a loop has no such attribute
        # (uvloop), only the hop count is used.
        busy = self._held > 0 or not _only_jumpers_ready(loop)
        if busy or hops > 0:
            self._jumper = loop.call_soon(self._maybe_jump, loop, generation,
                                          self._idle_hops if busy else hops - 1)
            return
        while self._heap and self._heap[0][2].done():  # cancelled sleeps
            heapq.heappop(self._heap)
        if not self._heap:
            return
        self._mono = max(self._mono, self._heap[0][0])
        self._wake_due()
        if self._heap:
            self._schedule_jump(loop, self._generation, self._idle_hops)


def _only_jumpers_ready(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether every callback ready on ``loop`` is a FakeClock idle check (or none is).

    Other threads append to the ready deque (``call_soon_threadsafe``: a finished
    executor job, a store's thread) while this runs, so it is never iterated in place
    (Python code per item would let a thread in: "deque mutated during iteration").
    It is copied in one C call, atomic under the GIL; a copy that still fails (a
    free-threaded build) means callbacks are arriving, which is not idle.
    """
    ready = getattr(loop, "_ready", None)
    if ready is None:
        return True
    try:
        snapshot = tuple(ready)
    except RuntimeError:
        return False
    return all(_is_jumper(h) for h in snapshot)


def _is_jumper(handle: object) -> bool:
    """A ready callback that is some FakeClock's idle check, not work: two autojump
    clocks on one loop must not count each other's checks as activity."""
    callback = getattr(handle, "_callback", None)
    return getattr(callback, "__func__", None) is FakeClock._maybe_jump


async def race_event(event: asyncio.Event, clock: Clock, timeout: float) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds of ``clock`` time; True if it fired."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    sleeper = asyncio.ensure_future(sleep_until(clock, clock.monotonic() + timeout))
    try:
        await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        sleeper.cancel()
    return event.is_set()


async def sleep_until(clock: Clock, deadline: float) -> None:
    """Sleep until ``clock.monotonic()`` reaches ``deadline``.

    A sleep started in a task of its own (``ensure_future(clock.sleep(d))``) begins when
    that task first runs, not when it was made: if time moves in between (a
    :class:`FakeClock` advanced by a test, a loop stalled under load), the sleep ends
    ``d`` after the later instant and a waiter computed for the earlier one oversleeps —
    with a fake clock that nobody advances again, forever. Computing the deadline where
    the sleep is made, and what is left of it where it starts, is exact on both clocks.
    """
    left = deadline - clock.monotonic()
    if left > 0:
        await clock.sleep(left)
