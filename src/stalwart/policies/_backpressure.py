"""Back-pressure: a dependency that answers 429 holds every call to it, not only the one
it refused.

A 429 is a healthy dependency asking us to slow down. Retry makes the refused call wait
its ``Retry-After``, but the calls of every other run would go on arriving and be
refused in turn, each spending one of its attempts. So the rate-limit layer keeps one
:class:`Backpressure` gate per dependency key, fed by the 429s it sees:

* **held** — no call starts before the time the dependency asked for: its
  ``Retry-After``, else the reset of the quota it reports used up, else ``default_hold``;
* then **one call goes first**, a probe. Answered with anything but a 429, the gate
  opens and the waiting calls go, in arrival order (a rate limiter behind the gate still
  spaces them). Answered 429 again, the gate holds again and the next waiter probes
  after it (a probe never goes twice in a row while others wait);
* **flowing** — calls pass at once: one comparison, no await.

Waiting is bounded like a rate limiter's: a caller whose wait would outlast its
``max_wait`` or the enclosing deadline fails at once (or when its deadline comes, if it
waits on a probe) with :class:`~stalwart.errors.ThrottledError` — our own limit:
retryable, never counted against a circuit breaker. A 429 does not count against the
breaker either (:mod:`stalwart.policies._classify`).

The gate is per process, like a breaker: with a cluster-wide rate limit (kept in the
store) the other workers learn of a 429 by the quota the headers report, which adapts the
shared buckets, not by this hold.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, final

from stalwart._clock import Clock, sleep_until
from stalwart.errors import ThrottledError

from ._timeout import remaining

__all__ = ["Backpressure", "BackpressureRegistry", "BackpressureStatistics", "Ticket"]

DEFAULT_HOLD = 1.0
"""Seconds a 429 that named no wait (no ``Retry-After``, no exhausted quota) holds for."""


@final
@dataclass(frozen=True, slots=True)
class Ticket:
    """A caller's pass through the gate; ``probe`` is true for the first call after a
    hold. Give it back with :meth:`Backpressure.leave`."""

    probe: bool


_FLOWING = Ticket(probe=False)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class BackpressureStatistics:
    """A snapshot of a gate.

    Attributes:
        held_for: seconds of hold left now (0.0 when not held).
        probing: whether a probe call is in flight.
        waiting: callers waiting at the gate now.
        holds: how many 429s held the gate.
        throttled: callers refused because their wait would outlast their limit.
    """

    key: str
    held_for: float
    probing: bool
    waiting: int
    holds: int
    throttled: int


@final
class Backpressure:
    """The back-pressure gate of one dependency; see the module docstring.

    Use ``ticket = await gate.enter()`` before the call and ``gate.leave(ticket, ...)``
    after it, exactly once. Not thread-safe: use it from one event loop.
    """

    __slots__ = ("_clock", "_default_hold", "_hold_until", "_holds", "_key", "_listeners",
                 "_probe_needed", "_probe_out", "_throttled", "_timer", "_waiters")

    def __init__(self, *, clock: Clock, key: str = "default",
                 default_hold: float = DEFAULT_HOLD) -> None:
        self._clock = clock
        self._key = key
        self._default_hold = default_hold
        self._hold_until = -math.inf
        self._probe_needed = False
        self._probe_out = False
        self._waiters: deque[asyncio.Future[Ticket]] = deque()
        self._timer: asyncio.Task[None] | None = None
        self._holds = 0
        self._throttled = 0
        self._listeners: list[Callable[[str, float], None]] = []

    @property
    def key(self) -> str:
        """The dependency this gate guards."""
        return self._key

    def add_listener(self, listener: Callable[[str, float], None]) -> None:
        """Call ``listener(key, seconds)`` whenever a 429 holds the gate."""
        self._listeners.append(listener)

    # -- passing -----------------------------------------------------------------------

    async def enter(self, *, max_wait: float | None = None) -> Ticket:
        """Wait until this caller may call the dependency.

        Raises:
            ThrottledError: the hold would outlast ``max_wait`` or the enclosing deadline
                (``retry_after``: the hold left), or the deadline came while waiting.
        """
        if not self._probe_needed and not self._waiters:
            return _FLOWING
        now = self._clock.monotonic()
        if not self._waiters and not self._probe_out and now >= self._hold_until:
            self._probe_out = True
            return Ticket(probe=True)
        self._refuse_if_too_long(self._hold_until - now, max_wait)
        waiter: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._arm()
        return await self._await(waiter, remaining())

    def leave(self, ticket: Ticket, *, answered: bool, hold: float | None = None) -> None:
        """Report how the call that held ``ticket`` went.

        ``hold``: it was answered 429, asking for that many seconds (``None`` inside a
        429 means the default hold: pass :meth:`hold_for` of the error). ``answered``:
        the dependency answered otherwise (a success or a failure of its own). Neither:
        the call was not made (cancelled, refused by a limit of ours).
        """
        if hold is not None:
            self._hold(hold)
            if ticket.probe:
                self._probe_out = False
            return
        if not ticket.probe:
            return
        self._probe_out = False
        if answered:
            self._probe_needed = False
        self._dispatch()

    def hold_for(self, seconds: float | None) -> float:
        """The hold a 429 asking for ``seconds`` (``None``: it did not say) imposes."""
        if seconds is None or not math.isfinite(seconds) or seconds < 0:
            return self._default_hold
        return seconds

    # -- the state machine -----------------------------------------------------------

    def _hold(self, seconds: float) -> None:
        self._holds += 1
        self._probe_needed = True
        self._hold_until = max(self._hold_until, self._clock.monotonic() + seconds)
        if self._waiters:
            self._arm()
        for listener in list(self._listeners):
            listener(self._key, seconds)

    def _dispatch(self) -> None:
        """Hand the gate on: to one probe after a hold, to everyone once one answered."""
        if self._clock.monotonic() < self._hold_until:
            self._arm()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            if self._probe_needed:
                if self._probe_out:
                    self._waiters.appendleft(waiter)
                    return
                self._probe_out = True
                waiter.set_result(Ticket(probe=True))
                return
            waiter.set_result(_FLOWING)

    def _arm(self) -> None:
        if self._timer is None or self._timer.done():
            self._timer = asyncio.get_running_loop().create_task(
                self._expire(), name=f"sw-backpressure-{self._key}")

    async def _expire(self) -> None:
        while (left := self._hold_until - self._clock.monotonic()) > 0:
            await self._clock.sleep(left)
        self._dispatch()

    async def _await(self, waiter: asyncio.Future[Ticket], limit: float | None) -> Ticket:
        sleeper = None if limit is None else asyncio.ensure_future(
            sleep_until(self._clock, self._clock.monotonic() + limit))
        try:
            if sleeper is None:
                return await waiter
            await asyncio.wait((waiter, sleeper), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        finally:
            if sleeper is not None:
                sleeper.cancel()
        if waiter.done():
            return waiter.result()
        self._abandon(waiter)
        return self._throttle("the deadline came while waiting for the dependency's "
                              "back-pressure to end", None)

    def _abandon(self, waiter: asyncio.Future[Ticket]) -> None:
        if waiter.done() and not waiter.cancelled():
            self.leave(waiter.result(), answered=False)  # a probe turn reached us: pass it on
        else:
            waiter.cancel()
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        if not self._waiters and self._timer is not None:
            self._timer.cancel()  # nobody left to wake
            self._timer = None

    def _refuse_if_too_long(self, hold_left: float, max_wait: float | None) -> None:
        if hold_left <= 0:
            return
        if max_wait is not None and hold_left > max_wait:
            self._throttle(f"held for {hold_left:g}s more by a 429, past max_wait="
                           f"{max_wait:g}s", hold_left)
        left = remaining()
        if left is not None and hold_left >= left:
            self._throttle(f"held for {hold_left:g}s more by a 429, past the deadline",
                           hold_left)

    def _throttle(self, message: str, retry_after: float | None) -> NoReturn:
        self._throttled += 1
        raise ThrottledError(f"back-pressure of {self._key!r}: {message}", key=self._key,
                             retry_after=retry_after)

    def statistics(self) -> BackpressureStatistics:
        """A snapshot of the gate."""
        return BackpressureStatistics(
            key=self._key,
            held_for=max(0.0, self._hold_until - self._clock.monotonic()),
            probing=self._probe_out, waiting=sum(not w.done() for w in self._waiters),
            holds=self._holds, throttled=self._throttled)


@final
class BackpressureRegistry:
    """One :class:`Backpressure` gate per dependency key, created on first use."""

    __slots__ = ("_clock", "_gates", "_listeners")

    def __init__(self, *, clock: Clock) -> None:
        self._clock = clock
        self._gates: dict[str, Backpressure] = {}
        self._listeners: list[Callable[[str, float], None]] = []

    def get(self, key: str) -> Backpressure:
        """The gate of ``key``."""
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = Backpressure(clock=self._clock, key=key)
            for listener in self._listeners:
                gate.add_listener(listener)
        return gate

    def add_listener(self, listener: Callable[[str, float], None]) -> None:
        """Listen to every gate's holds, present and future."""
        self._listeners.append(listener)
        for gate in self._gates.values():
            gate.add_listener(listener)

    def statistics(self) -> dict[str, BackpressureStatistics]:
        """A snapshot of every gate created so far, by key."""
        return {key: gate.statistics() for key, gate in self._gates.items()}
