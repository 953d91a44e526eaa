"""Timeouts as deadline scopes that nested calls inherit.

``async with deadline_scope(30, clock=clock):`` sets a deadline in a context variable,
so every call made inside — a retry loop, a rate-limit wait, a nested scope — sees the
same deadline (:func:`current_deadline`, :func:`remaining`) and a nested scope can only
shorten it (the deadline is the minimum of the two). When the deadline passes, the body
is cancelled and the scope raises :class:`~stalwart.errors.CallTimeoutError`.

The expiry is a ``clock.sleep`` racing the body (as ``asyncio.timeout`` does with the
loop's real clock), so under ``FakeClock`` a timeout of an hour fires in microseconds at
exactly the right virtual time. :func:`with_timeout` is the one-call form.

:func:`call_deadline` sets a deadline that cancels nothing by itself: the waits and
calls inside respect it (a rate limiter refuses a wait that would outlast it, Retry does
not back off past it, and the first scope entered inside enforces it on its own body).
The engine bounds a whole call with its retries by one (``Timeout.overall``) because a
deadline that cancelled whatever ran when it passed could cut a journal write in half.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar, final

from stalwart._clock import Clock
from stalwart.errors import CallTimeoutError, ConfigurationError

from ._common import Duration, check_positive

__all__ = [
    "DeadlineScope",
    "Timeout",
    "call_deadline",
    "current_deadline",
    "deadline_scope",
    "remaining",
    "with_timeout",
]

_T = TypeVar("_T")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Timeout:
    """Time limits for a call.

    Args:
        per_attempt: the limit on one attempt (inside Retry); ``None`` for none.
        overall: the limit on the whole call: every attempt, of every fallback model,
            and the waits between them (backoffs, rate limits, bulkhead queues). No
            attempt starts and no wait is begun that the deadline would cut; an attempt
            in flight when it passes is cut like a per-attempt timeout. It runs from the
            call's first start and survives a crash (the journal keeps that start).
            ``None`` for none.
    """

    per_attempt: Duration | None = None
    overall: Duration | None = None

    def __post_init__(self) -> None:
        for name in ("per_attempt", "overall"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check_positive("Timeout", name, value))


@dataclass(frozen=True, slots=True)
class _Deadline:
    at: float  # on clock.monotonic()
    clock: Clock
    enforced: bool = True  # False: a call_deadline, which nested scopes enforce


_current: ContextVar[_Deadline | None] = ContextVar("stalwart_deadline", default=None)


def current_deadline() -> float | None:
    """The innermost deadline in force, as a ``Clock.monotonic()`` time, or ``None``."""
    deadline = _current.get()
    return None if deadline is None else deadline.at


def remaining() -> float | None:
    """Seconds left before the deadline in force (never negative), or ``None``."""
    deadline = _current.get()
    if deadline is None:
        return None
    return max(0.0, deadline.at - deadline.clock.monotonic())


@final
class DeadlineScope:
    """An async context manager that enforces a deadline; see :func:`deadline_scope`."""

    __slots__ = (
        "_cancelling", "_clock", "_expired", "_own", "_seconds", "_span", "_task", "_token",
        "_watcher",
    )

    def __init__(self, seconds: float | None, clock: Clock) -> None:
        self._seconds = seconds
        self._clock = clock
        self._token: Token[_Deadline | None] | None = None
        self._task: asyncio.Task[object] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._expired = False
        self._own: float | None = None
        self._span: float | None = seconds
        self._cancelling = 0

    @property
    def deadline(self) -> float | None:
        """The deadline this scope enforces or inherits (monotonic), once entered."""
        return current_deadline() if self._own is None else self._own

    @property
    def expired(self) -> bool:
        """Whether this scope's own deadline cancelled its body."""
        return self._expired

    async def __aenter__(self) -> DeadlineScope:
        outer = _current.get()
        if outer is not None and outer.clock is not self._clock:
            raise ConfigurationError("a nested deadline_scope must use its parent's clock")
        now = self._clock.monotonic()
        at = None if self._seconds is None else now + self._seconds
        if outer is not None and (at is None or outer.at <= at):
            if outer.at <= now:
                raise CallTimeoutError("the enclosing deadline has already passed")
            if outer.enforced:
                return self  # the outer scope is as tight or tighter: it enforces it
            at = outer.at  # a call_deadline enforces nothing itself: this scope does
        if at is None:
            return self
        self._own, self._span = at, at - now
        self._token = _current.set(_Deadline(at, self._clock))
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - only reachable outside a task
            raise ConfigurationError("deadline_scope must be used inside an asyncio task")
        self._task = task
        self._cancelling = task.cancelling()
        self._watcher = asyncio.get_running_loop().create_task(self._watch(at - now))
        return self

    async def _watch(self, seconds: float) -> None:
        await self._clock.sleep(seconds)
        self._expired = True
        assert self._task is not None
        self._task.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        if (
            self._expired
            and self._task is not None
            and self._task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise CallTimeoutError(
                f"deadline of {self._span:g}s exceeded", timeout=self._span
            ) from exc


def deadline_scope(seconds: Duration | None, *, clock: Clock) -> DeadlineScope:
    """A scope whose body must finish within ``seconds`` of the clock's time.

    Nested scopes take the earlier deadline; ``seconds=None`` inherits the enclosing one
    unchanged. On expiry the body is cancelled and :class:`CallTimeoutError` raised.

    Example::

        async with deadline_scope(30, clock=clock):
            await call_with_retry(policy, call, clock=clock, rng=rng)
    """
    seconds_f = None if seconds is None else check_positive("deadline_scope", "seconds", seconds)
    return DeadlineScope(seconds_f, clock)


@contextmanager
def call_deadline(seconds: float | None, *, clock: Clock) -> Iterator[None]:
    """A deadline ``seconds`` from now that nested waits and scopes respect but that
    cancels nothing itself (see the module docstring); ``None`` sets none. A tighter
    enclosing deadline stays in force."""
    if seconds is None:
        yield
        return
    outer = _current.get()
    at = clock.monotonic() + seconds
    if outer is not None and outer.at <= at:
        yield
        return
    token = _current.set(_Deadline(at, clock, enforced=False))
    try:
        yield
    finally:
        _current.reset(token)


async def with_timeout(aw: Awaitable[_T], seconds: Duration | None, *, clock: Clock) -> _T:
    """Await ``aw``, raising :class:`CallTimeoutError` after ``seconds`` (or at the
    enclosing deadline, if that comes first); ``None`` means only the enclosing one."""
    entered = False
    try:
        async with deadline_scope(seconds, clock=clock):
            entered = True
            return await aw
    finally:
        if not entered and asyncio.iscoroutine(aw):
            aw.close()  # never started; close it so it is not reported as never awaited
