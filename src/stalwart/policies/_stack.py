"""The per-attempt policy stack: one small wrapper per layer, composed in order.

Around one attempt of a model or tool call, outermost first::

    CircuitBreaker → OutcomeCheck → RateLimit → Bulkhead → Timeout → call

Each layer is an object with ``async __call__(attempt, inner)`` that does its one thing
around ``inner(attempt)``, the way resilience4j's decorators wrap a supplier; :func:`compose`
nests them. They share one :class:`CallAttempt`, on which the Timeout layer marks when
the call itself started and ended, so the breaker records *the call's* duration — a call
that waited 90 s for a rate limiter and answered in 5 ms is not slow — and judges only
calls that were made. What a failure means for each layer is the failure classifier's
decision (:mod:`stalwart.policies._classify`).

The layers above these — Budget, Fallback and Retry, whose decisions the engine must
journal before acting on them — live in the engine (``stalwart.engine._calls``) and drive this
stack once per attempt.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, final

from stalwart._clock import Clock
from stalwart.errors import BulkheadFullError, CallTimeoutError, ProviderQuota

from ._backpressure import Backpressure, Ticket
from ._breaker import CircuitBreaker
from ._bulkhead import Bulkhead
from ._classify import Fault, classify
from ._distributed import ClusterBulkhead, ClusterRateLimiter
from ._ratelimit import RateLimiter
from ._timeout import remaining, with_timeout

__all__ = [
    "BreakerLayer",
    "BulkheadLayer",
    "CallAttempt",
    "CheckLayer",
    "Layer",
    "Next",
    "RateLimitLayer",
    "TimeoutLayer",
    "compose",
]


@final
@dataclass(slots=True)
class CallAttempt:
    """One attempt as the layers see it.

    Attributes:
        key: the dependency (``provider:model``, ``tool:name``).
        number: the attempt number, 1-based, counting attempts before a resume.
        estimated_tokens: what the rate limiter reserves before the call.
        started, ended: ``Clock.monotonic()`` when the call itself began and ended
            (set by :class:`TimeoutLayer`; ``None`` if it never began).
        check_failure: a result that came back but failed its outcome check and was
            kept (set by :class:`CheckLayer`): the breaker records it as a failure.
    """

    key: str
    number: int
    estimated_tokens: int = 0
    started: float | None = None
    ended: float | None = None
    check_failure: BaseException | None = None

    @property
    def made(self) -> bool:
        """Whether the call itself was made (not stopped by a layer in front of it)."""
        return self.started is not None

    @property
    def duration(self) -> float:
        """How long the call itself took (0.0 if it was never made)."""
        if self.started is None or self.ended is None:
            return 0.0
        return self.ended - self.started


Next = Callable[[CallAttempt], Awaitable[Any]]
"""The rest of the stack, from a layer's point of view."""


class Layer(Protocol):
    """A policy layer: does its part around ``inner(attempt)``."""

    async def __call__(self, attempt: CallAttempt, inner: Next) -> Any: ...


def compose(layers: Sequence[Layer], call: Next) -> Next:
    """``layers[0]`` around ``layers[1]`` around ... around ``call``."""
    stack = call
    for layer in reversed(layers):
        stack = _bind(layer, stack)
    return stack


def _bind(layer: Layer, inner: Next) -> Next:
    async def run(attempt: CallAttempt) -> Any:
        return await layer(attempt, inner)
    return run


@final
class BreakerLayer:
    """Asks the breaker for a permit, then tells it how the call went: its own duration,
    and whether it failed in the classifier's (or the breaker config's) eyes. A call
    that was never made (a limit in front of it refused) gives its permit back."""

    __slots__ = ("_breaker",)

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker

    async def __call__(self, attempt: CallAttempt, inner: Next) -> Any:
        breaker = self._breaker
        breaker.acquire()  # CircuitOpenError: rejected, nothing to give back
        try:
            result = await inner(attempt)
        except Exception as exc:
            if attempt.made:
                breaker.on_error(attempt.duration, exc)
            else:
                breaker.release()
            raise
        except BaseException:
            breaker.release()
            raise
        if attempt.check_failure is not None:
            breaker.on_error(attempt.duration, attempt.check_failure)
        else:
            breaker.on_success(attempt.duration)
        return result


@final
class CheckLayer:
    """Runs an outcome check on a result. ``check`` returns the failure (an exception,
    not raised) or ``None``. A failed result is raised (``reject``: a failed attempt,
    retried like an error) or kept and marked on the attempt for the breaker."""

    __slots__ = ("_check", "_reject")

    def __init__(self, check: Callable[[CallAttempt, Any], BaseException | None], *,
                 reject: bool) -> None:
        self._check = check
        self._reject = reject

    async def __call__(self, attempt: CallAttempt, inner: Next) -> Any:
        result = await inner(attempt)
        failure = self._check(attempt, result)
        if failure is not None:
            if self._reject:
                raise failure
            attempt.check_failure = failure
        return result


@final
class RateLimitLayer:
    """The dependency's back-pressure gate, then its rate limiter (when it has one).

    A 429 (:attr:`Fault.BACKPRESSURE`) holds the gate for every caller and adapts the
    limiter to the quota the provider reported; a successful call settles the tokens it
    really used."""

    __slots__ = ("_actual_tokens", "_gate", "_limiter", "_max_wait")

    def __init__(self, gate: Backpressure, limiter: RateLimiter | ClusterRateLimiter | None,
                 *, max_wait: float | None = None,
                 actual_tokens: Callable[[Any], int] | None = None) -> None:
        self._gate = gate
        self._limiter = limiter
        self._max_wait = max_wait
        self._actual_tokens = actual_tokens

    async def __call__(self, attempt: CallAttempt, inner: Next) -> Any:
        ticket = await self._gate.enter(max_wait=self._max_wait)
        try:
            if self._limiter is not None:
                await self._limiter.acquire(attempt.estimated_tokens)
            result = await inner(attempt)
        except BaseException as exc:
            self._failed(ticket, attempt, exc)
            raise
        self._gate.leave(ticket, answered=True)
        if self._limiter is not None and self._actual_tokens is not None:
            self._limiter.settle(attempt.estimated_tokens, self._actual_tokens(result))
        return result

    def _failed(self, ticket: Ticket, attempt: CallAttempt, exc: BaseException) -> None:
        if attempt.made and classify(exc) is Fault.BACKPRESSURE:
            retry_after = getattr(exc, "retry_after", None)
            hold = retry_after if isinstance(retry_after, int | float) else None
            self._gate.leave(ticket, answered=True, hold=self._gate.hold_for(hold))
            quota = getattr(exc, "quota", None)
            if self._limiter is not None and isinstance(quota, ProviderQuota):
                self._limiter.adapt(quota)
            return
        self._gate.leave(ticket, answered=attempt.made)


@final
class BulkheadLayer:
    """Holds a slot of the pool for the call. Its queue wait ends at the enclosing
    deadline too, as :class:`~stalwart.errors.BulkheadFullError` (no call was made)."""

    __slots__ = ("_bulkhead", "_clock")

    def __init__(self, bulkhead: Bulkhead | ClusterBulkhead, *, clock: Clock) -> None:
        self._bulkhead = bulkhead
        self._clock = clock

    async def __call__(self, attempt: CallAttempt, inner: Next) -> Any:
        bulkhead = self._bulkhead
        if remaining() is None:
            await bulkhead.acquire()
        else:
            try:
                await with_timeout(bulkhead.acquire(), None, clock=self._clock)
            except CallTimeoutError as exc:
                raise BulkheadFullError(
                    f"bulkhead {bulkhead.name!r}: no slot before the call's deadline",
                    name=bulkhead.name, reason="deadline") from exc
        try:
            return await inner(attempt)
        finally:
            bulkhead.release()


@final
class TimeoutLayer:
    """Bounds the call itself by ``per_attempt`` seconds and by the enclosing deadline
    (:class:`~stalwart.errors.CallTimeoutError`), and marks when it started and ended."""

    __slots__ = ("_clock", "_per_attempt")

    def __init__(self, per_attempt: float | None, *, clock: Clock) -> None:
        self._per_attempt = per_attempt
        self._clock = clock

    async def __call__(self, attempt: CallAttempt, inner: Next) -> Any:
        clock = self._clock

        async def timed() -> Any:
            attempt.started = clock.monotonic()
            try:
                return await inner(attempt)
            finally:
                attempt.ended = clock.monotonic()

        # A deadline already past raises before timed() starts: no call was made.
        return await with_timeout(timed(), self._per_attempt, clock=clock)
