"""Bulkheads: a cap on concurrent calls into one pool, with a short, fair queue.

``async with bulkhead:`` takes one of ``max_concurrent`` slots. When all are taken the
caller queues — first come, first served — unless ``max_queue`` callers already wait, in
which case it fails at once with :class:`~stalwart.errors.BulkheadFullError`; a caller
that waits longer than ``queue_timeout`` (on the injected clock) fails with it too.

A released slot is handed straight to the oldest waiter rather than freed and raced for,
so a late arrival cannot overtake the queue and the count of busy slots never exceeds
``max_concurrent``, even when waiters are cancelled at the moment a slot reaches them
(such a slot is passed on to the next waiter).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import final

from stalwart._clock import Clock
from stalwart.errors import BulkheadFullError, ConfigurationError

from ._common import Duration, KeyedRegistry, check_non_negative, to_seconds

__all__ = [
    "Bulkhead",
    "BulkheadConfig",
    "BulkheadRegistry",
    "BulkheadStatistics",
]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class BulkheadConfig:
    """Limits of a :class:`Bulkhead`.

    Args:
        max_concurrent: calls that may run at once (>= 1).
        max_queue: callers that may wait for a slot (>= 0; 0 means never wait).
        queue_timeout: the longest a caller waits; ``None`` waits as long as it takes.
    """

    max_concurrent: int = 10
    max_queue: int = 100
    queue_timeout: Duration | None = None

    def __post_init__(self) -> None:
        for name, minimum in (("max_concurrent", 1), ("max_queue", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigurationError(
                    f"BulkheadConfig.{name} must be an int >= {minimum}, got {value!r}"
                )
        if self.queue_timeout is not None:
            seconds = check_non_negative("BulkheadConfig", "queue_timeout", self.queue_timeout)
            object.__setattr__(self, "queue_timeout", seconds)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class BulkheadStatistics:
    """A snapshot of a bulkhead.

    Attributes:
        active: slots in use now.
        queued: callers waiting now.
        max_seen: the most slots ever in use at once.
        rejected: callers turned away because the queue was full.
        timed_out: callers that gave up after ``queue_timeout``.
    """

    name: str
    max_concurrent: int
    max_queue: int
    active: int
    queued: int
    max_seen: int
    rejected: int
    timed_out: int


@final
class Bulkhead:
    """A concurrency limit for one pool of calls (a model, a tool, an API).

    Use ``async with bulkhead: ...``, or :meth:`acquire` and :meth:`release` in pairs.
    """

    __slots__ = (
        "_active", "_clock", "_config", "_max_seen", "_name", "_rejected", "_timed_out",
        "_waiters",
    )

    def __init__(
        self, config: BulkheadConfig | None = None, *, clock: Clock, name: str = "default"
    ) -> None:
        self._config = config or BulkheadConfig()
        self._clock = clock
        self._name = name
        self._active = 0
        self._max_seen = 0
        self._rejected = 0
        self._timed_out = 0
        # True when a slot was handed over, False when the wait timed out.
        self._waiters: deque[asyncio.Future[bool]] = deque()

    @property
    def name(self) -> str:
        """The pool's name."""
        return self._name

    async def acquire(self) -> None:
        """Take a slot, waiting in line for one if needed.

        Raises:
            BulkheadFullError: the queue is full, or the wait reached ``queue_timeout``.
        """
        config = self._config
        if self._active < config.max_concurrent and not self._waiters:
            self._take()
            return
        if len(self._waiters) >= config.max_queue:
            self._rejected += 1
            raise BulkheadFullError(
                f"bulkhead {self._name!r} is full: {self._active} running, "
                f"{len(self._waiters)} waiting",
                name=self._name, reason="queue_full",
            )
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        timer = None
        if config.queue_timeout is not None:
            timer = asyncio.get_running_loop().create_task(
                self._expire(waiter, to_seconds(config.queue_timeout))
            )
        try:
            granted = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self.release()  # the slot reached us as we were cancelled: pass it on
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if not granted:
            raise BulkheadFullError(
                f"bulkhead {self._name!r}: no slot within {config.queue_timeout:g}s",
                name=self._name, reason="queue_timeout",
            )

    async def _expire(self, waiter: asyncio.Future[bool], seconds: float) -> None:
        await self._clock.sleep(seconds)
        if not waiter.done():
            self._waiters.remove(waiter)
            self._timed_out += 1
            waiter.set_result(False)

    def _take(self) -> None:
        self._active += 1
        self._max_seen = max(self._max_seen, self._active)

    def release(self) -> None:
        """Give a slot back; it goes to the oldest waiter, if any."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)  # the slot changes hands; _active is unchanged
                return
        if self._active <= 0:
            raise RuntimeError(f"bulkhead {self._name!r} released more often than acquired")
        self._active -= 1

    async def __aenter__(self) -> Bulkhead:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def statistics(self) -> BulkheadStatistics:
        """A snapshot of slots and queue."""
        return BulkheadStatistics(
            name=self._name,
            max_concurrent=self._config.max_concurrent,
            max_queue=self._config.max_queue,
            active=self._active,
            queued=len(self._waiters),
            max_seen=self._max_seen,
            rejected=self._rejected,
            timed_out=self._timed_out,
        )


@final
class BulkheadRegistry:
    """One :class:`Bulkhead` per pool name, created on first use.

    Args:
        clock: the clock every bulkhead uses.
        default: the config for pools without an override.
        overrides: configs for particular pools.
    """

    __slots__ = ("_clock", "_registry")

    def __init__(
        self,
        *,
        clock: Clock,
        default: BulkheadConfig | None = None,
        overrides: Mapping[str, BulkheadConfig] | None = None,
    ) -> None:
        self._clock = clock
        self._registry: KeyedRegistry[BulkheadConfig, Bulkhead] = KeyedRegistry(
            lambda name, config: Bulkhead(config, clock=self._clock, name=name),
            default or BulkheadConfig(),
            overrides,
        )

    def get(self, name: str, config: BulkheadConfig | None = None) -> Bulkhead:
        """The bulkhead for ``name``; ``config`` is used only if it is created now."""
        bulkhead = self._registry.lookup(name, config)
        assert bulkhead is not None  # there is always a default config
        return bulkhead

    def __contains__(self, name: object) -> bool:
        return name in self._registry

    def statistics(self) -> dict[str, BulkheadStatistics]:
        """A snapshot of every bulkhead created so far, by name."""
        return {name: bulkhead.statistics() for name, bulkhead in self._registry.items()}

    async def aclose(self) -> None:
        """Nothing to wait for: in-process state needs no flushing (the cluster-wide
        registry's counterpart sends its last writes to the store)."""
