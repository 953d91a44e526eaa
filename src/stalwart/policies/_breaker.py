"""Circuit breakers: stop calling a dependency that keeps failing or crawling.

The state machine mirrors resilience4j's ``CircuitBreakerStateMachine``:

* **CLOSED** permits every call and records outcomes in a sliding window — the last
  ``window_size`` calls (``window_type="count"``) or the calls of the last
  ``window_size`` whole seconds (``"time"``, one bucket per second of
  ``Clock.monotonic()``). Once the window holds ``minimum_calls`` outcomes (for a count
  window, at most ``window_size``), a failure rate or slow-call rate ``>=`` its threshold
  opens the breaker.
* **OPEN** rejects every call with :class:`~stalwart.errors.CircuitOpenError` (not
  retryable; ``retry_after`` is the open time left). The first ``acquire()`` once
  ``wait_in_open`` has passed moves it to HALF_OPEN; nothing runs in the background.
* **HALF_OPEN** permits ``permitted_calls_in_half_open`` trial calls and rejects the
  rest. Its outcomes go to a fresh count window of that size whose minimum is
  ``min(minimum_calls, permitted_calls_in_half_open)``; when the minimum is reached the
  breaker CLOSES if both rates are below their thresholds and OPENS again otherwise.

Errors matching ``ignore`` count as nothing and give their permit back; errors not
matching ``record`` count as successes; a call slower than ``slow_call_duration``
(strictly) is slow whether it failed or not. By default both come from the one failure
classifier (:mod:`stalwart.policies._classify`): a failure of the dependency (5xx,
timeouts, connection errors, malformed responses, failed outcome checks) is recorded; a
429, our own limits (bulkhead full, throttled, budget) and cancellation are ignored; a
request the dependency refused on its merits (400, 401, 403, content filter) counts as
a call it answered. The duration a breaker records is the caller's to measure: the
policy stack passes the call's own time, not its waits in a rate limiter or bulkhead.
Outcomes that arrive after the state changed are recorded in the new state's window, as
in resilience4j.

One deliberate difference: OPEN turns HALF_OPEN when ``wait_in_open`` has elapsed
(``>=``), where resilience4j wants it strictly exceeded, so that a caller who waits
exactly ``retry_after`` is let through.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal, TypeVar, final

from stalwart._clock import Clock
from stalwart.errors import CircuitOpenError, ConfigurationError

from ._classify import counts_as_failure, says_nothing
from ._common import Duration, KeyedRegistry, check_positive, to_seconds

__all__ = [
    "BreakerPermit",
    "BreakerRegistry",
    "BreakerState",
    "BreakerStatistics",
    "BreakerTransition",
    "CircuitBreaker",
    "CircuitBreakerConfig",
]

_T = TypeVar("_T")


class BreakerState(enum.StrEnum):
    """The three states of a circuit breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"CircuitBreakerConfig.{name} must be an int >= {minimum}, "
                                 f"got {value!r}")


def _check_percent(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 100:
        raise ConfigurationError(f"CircuitBreakerConfig.{name} must be in (0, 100], "
                                 f"got {value!r}")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreakerConfig:
    """How a :class:`CircuitBreaker` judges a dependency; defaults are resilience4j's.

    Args:
        window_type: ``"count"`` (the last ``window_size`` calls) or ``"time"`` (the
            calls of the last ``window_size`` seconds).
        window_size: calls or seconds, per ``window_type``.
        failure_rate_threshold: percent of failed calls, in (0, 100], that opens it.
        slow_call_rate_threshold: percent of slow calls, in (0, 100], that opens it.
        slow_call_duration: a call taking longer than this is slow.
        minimum_calls: outcomes needed in the window before rates are judged.
        wait_in_open: how long it stays OPEN before trial calls.
        permitted_calls_in_half_open: how many trial calls HALF_OPEN lets through.
        record: which errors count as failures (others count as successes); by default
            the dependency's own failures (see the module docstring).
        ignore: which errors count as nothing at all (checked before ``record``); by
            default 429s, our own limits and cancellation.
    """

    window_type: Literal["count", "time"] = "count"
    window_size: int = 100
    failure_rate_threshold: float = 50.0
    slow_call_rate_threshold: float = 100.0
    slow_call_duration: Duration = 60.0
    minimum_calls: int = 100
    wait_in_open: Duration = 60.0
    permitted_calls_in_half_open: int = 10
    record: Callable[[BaseException], bool] = field(default=counts_as_failure)
    ignore: Callable[[BaseException], bool] = field(default=says_nothing)

    def __post_init__(self) -> None:
        if self.window_type not in ("count", "time"):
            raise ConfigurationError(
                f"CircuitBreakerConfig.window_type must be 'count' or 'time', "
                f"got {self.window_type!r}"
            )
        _check_int("window_size", self.window_size, 1)
        _check_int("minimum_calls", self.minimum_calls, 1)
        _check_int("permitted_calls_in_half_open", self.permitted_calls_in_half_open, 1)
        _check_percent("failure_rate_threshold", self.failure_rate_threshold)
        _check_percent("slow_call_rate_threshold", self.slow_call_rate_threshold)
        owner = "CircuitBreakerConfig"
        for name in ("slow_call_duration", "wait_in_open"):
            object.__setattr__(self, name, check_positive(owner, name, getattr(self, name)))
        for name in ("record", "ignore"):
            if not callable(getattr(self, name)):
                raise ConfigurationError(f"{owner}.{name} must be callable")


@final
@dataclass(frozen=True, slots=True)
class BreakerTransition:
    """A state change, as passed to listeners; ``at`` is ``Clock.now()``."""

    key: str
    from_state: BreakerState
    to_state: BreakerState
    at: float


@final
@dataclass(frozen=True, slots=True)
class BreakerPermit:
    """Permission for one call; ``acquired_at`` is ``Clock.monotonic()``."""

    key: str
    state: BreakerState
    acquired_at: float


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerStatistics:
    """A snapshot of a breaker.

    Attributes:
        failure_rate, slow_call_rate: percent, or ``None`` below the minimum calls.
        calls_in_window, failed_calls, slow_calls: the current window's counts.
        rejected_calls: calls rejected since the window began (as resilience4j counts).
        rejected_total: calls rejected over the breaker's life.
        half_open_permits_left: trial calls still to hand out (HALF_OPEN only).
        retry_after: open time left (OPEN only).
    """

    key: str
    state: BreakerState
    failure_rate: float | None
    slow_call_rate: float | None
    calls_in_window: int
    failed_calls: int
    slow_calls: int
    rejected_calls: int
    rejected_total: int
    half_open_permits_left: int | None
    retry_after: float | None


class _CountWindow:
    """The last ``size`` outcomes (resilience4j's FixedSizeSlidingWindowMetrics)."""

    __slots__ = ("_calls", "_failed", "_size", "_slow")

    def __init__(self, size: int) -> None:
        self._size = size
        self._calls: deque[tuple[bool, bool]] = deque()
        self._failed = 0
        self._slow = 0

    def record(self, failed: bool, slow: bool, now: float) -> None:
        if len(self._calls) == self._size:
            old_failed, old_slow = self._calls.popleft()
            self._failed -= old_failed
            self._slow -= old_slow
        self._calls.append((failed, slow))
        self._failed += failed
        self._slow += slow

    def counts(self, now: float) -> tuple[int, int, int]:
        return len(self._calls), self._failed, self._slow


class _TimeWindow:
    """Outcomes of the last ``size`` whole seconds (SlidingTimeWindowMetrics)."""

    __slots__ = ("_buckets", "_size")

    def __init__(self, size: int) -> None:
        self._size = size
        self._buckets: deque[list[int]] = deque()  # [second, calls, failed, slow]

    def _slide(self, now: float) -> int:
        second = int(now // 1)
        while self._buckets and self._buckets[0][0] <= second - self._size:
            self._buckets.popleft()
        return second

    def record(self, failed: bool, slow: bool, now: float) -> None:
        second = self._slide(now)
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        bucket[2] += failed
        bucket[3] += slow

    def counts(self, now: float) -> tuple[int, int, int]:
        self._slide(now)
        calls = failed = slow = 0
        for _, c, f, s in self._buckets:
            calls, failed, slow = calls + c, failed + f, slow + s
        return calls, failed, slow


class _Metrics:
    """A window plus the minimum for judging it and the calls rejected meanwhile."""

    __slots__ = ("minimum", "rejected", "window")

    def __init__(self, window: _CountWindow | _TimeWindow, minimum: int) -> None:
        self.window = window
        self.minimum = minimum
        self.rejected = 0

    def rates(self, now: float) -> tuple[float | None, float | None]:
        calls, failed, slow = self.window.counts(now)
        if calls == 0 or calls < self.minimum:
            return None, None
        return failed * 100.0 / calls, slow * 100.0 / calls


@final
class CircuitBreaker:
    """A circuit breaker for one dependency; see the module docstring for the states.

    Args:
        config: thresholds and windows.
        clock: the time source (``monotonic()`` for windows and waits, ``now()`` for
            transition timestamps).
        key: the dependency's name, e.g. ``"openai:gpt-4o"`` or ``"tool:send_email"``.

    Not thread-safe: use it from one event loop (or one thread).
    """

    __slots__ = (
        "_clock", "_config", "_key", "_listeners", "_metrics", "_open_until", "_permits",
        "_rejected_total", "_state",
    )

    def __init__(
        self, config: CircuitBreakerConfig | None = None, *, clock: Clock, key: str = "default"
    ) -> None:
        self._config = config or CircuitBreakerConfig()
        self._clock = clock
        self._key = key
        self._listeners: list[Callable[[BreakerTransition], None]] = []
        self._state = BreakerState.CLOSED
        self._metrics = self._closed_metrics()
        self._open_until = 0.0
        self._permits = 0
        self._rejected_total = 0

    @property
    def key(self) -> str:
        """The dependency this breaker guards."""
        return self._key

    @property
    def config(self) -> CircuitBreakerConfig:
        """The breaker's configuration."""
        return self._config

    @property
    def state(self) -> BreakerState:
        """The current state (OPEN stays OPEN until the next ``acquire()``)."""
        return self._state

    def add_listener(self, listener: Callable[[BreakerTransition], None]) -> None:
        """Call ``listener`` after every state change. It should not raise: an exception
        propagates to the caller whose call caused the change (the change stands)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[BreakerTransition], None]) -> None:
        """Stop calling ``listener``."""
        self._listeners.remove(listener)

    # -- permission ------------------------------------------------------------------

    def acquire(self) -> BreakerPermit:
        """Permission for one call, which must be followed by exactly one of
        :meth:`on_success`, :meth:`on_error` or :meth:`release`.

        Raises:
            CircuitOpenError: OPEN, or HALF_OPEN with every trial call handed out.
        """
        now = self._clock.monotonic()
        if self._state is BreakerState.OPEN and now >= self._open_until:
            self._transition(BreakerState.HALF_OPEN)
        if self._state is BreakerState.CLOSED:
            return BreakerPermit(self._key, self._state, now)
        if self._state is BreakerState.HALF_OPEN and self._permits > 0:
            self._permits -= 1
            return BreakerPermit(self._key, self._state, now)
        self._metrics.rejected += 1
        self._rejected_total += 1
        if self._state is BreakerState.OPEN:
            left = self._open_until - now
            raise CircuitOpenError(
                f"circuit breaker {self._key!r} is open for {left:g}s more",
                key=self._key, state=self._state.value, retry_after=left,
            )
        raise CircuitOpenError(
            f"circuit breaker {self._key!r} is half-open and all "
            f"{self._config.permitted_calls_in_half_open} trial calls are taken",
            key=self._key, state=self._state.value,
        )

    def would_permit(self) -> bool:
        """Whether :meth:`acquire` would hand out a permit now (it changes nothing)."""
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            return self._clock.monotonic() >= self._open_until
        return self._permits > 0

    def release(self) -> None:
        """Give back a permit whose call was not made or must not count (cancelled)."""
        if self._state is BreakerState.HALF_OPEN:
            self._permits = min(self._permits + 1, self._config.permitted_calls_in_half_open)

    def on_success(self, duration: float) -> None:
        """Record a call that succeeded after ``duration`` seconds."""
        self._record(failed=False, duration=duration)

    def on_error(self, duration: float, exc: BaseException) -> None:
        """Record a call that raised ``exc`` after ``duration`` seconds: a failure if
        ``config.record`` says so, nothing if ``config.ignore`` does, else a success."""
        if self._config.ignore(exc):
            self.release()
        else:
            self._record(failed=bool(self._config.record(exc)), duration=duration)

    def on_late_failure(self) -> None:
        """Record a failure found after the call was recorded (a semantic failure: an
        answer that returned, and was later judged wrong by a vote, a critic or a
        verifier): one more failed call in the window, which may open the breaker.
        OPEN ends only by waiting, as for any late outcome."""
        self._record(failed=True, duration=0.0)

    # -- async helpers ---------------------------------------------------------------

    @asynccontextmanager
    async def guard(self) -> AsyncIterator[BreakerPermit]:
        """``async with breaker.guard():`` — acquire, time the body, record its outcome.

        Cancellation and other non-``Exception`` exits release the permit unrecorded.
        """
        permit = self.acquire()
        try:
            yield permit
        except Exception as exc:
            self.on_error(self._clock.monotonic() - permit.acquired_at, exc)
            raise
        except BaseException:
            self.release()
            raise
        self.on_success(self._clock.monotonic() - permit.acquired_at)

    async def call(self, fn: Callable[[], Awaitable[_T]]) -> _T:
        """``await fn()`` under :meth:`guard`."""
        async with self.guard():
            return await fn()

    # -- state machine ---------------------------------------------------------------

    def _record(self, *, failed: bool, duration: float) -> None:
        now = self._clock.monotonic()
        slow = duration > to_seconds(self._config.slow_call_duration)
        self._metrics.window.record(failed, slow, now)
        if self._state is BreakerState.OPEN:
            return  # a late outcome: recorded, but OPEN only ends by waiting
        failure_rate, slow_rate = self._metrics.rates(now)
        if failure_rate is None or slow_rate is None:
            return
        exceeded = (
            failure_rate >= self._config.failure_rate_threshold
            or slow_rate >= self._config.slow_call_rate_threshold
        )
        if exceeded:
            self._transition(BreakerState.OPEN)
        elif self._state is BreakerState.HALF_OPEN:
            self._transition(BreakerState.CLOSED)

    def _closed_metrics(self) -> _Metrics:
        size = self._config.window_size
        if self._config.window_type == "count":
            return _Metrics(_CountWindow(size), min(self._config.minimum_calls, size))
        return _Metrics(_TimeWindow(size), self._config.minimum_calls)

    def _transition(self, to: BreakerState) -> None:
        before = self._state
        self._state = to
        if to is BreakerState.CLOSED:
            self._metrics = self._closed_metrics()
        elif to is BreakerState.OPEN:
            # The window that tripped it is kept for statistics, as in resilience4j.
            self._open_until = self._clock.monotonic() + to_seconds(self._config.wait_in_open)
        else:
            permitted = self._config.permitted_calls_in_half_open
            self._permits = permitted
            self._metrics = _Metrics(
                _CountWindow(permitted), min(self._config.minimum_calls, permitted)
            )
        event = BreakerTransition(self._key, before, to, self._clock.now())
        for listener in list(self._listeners):
            listener(event)

    def reset(self) -> None:
        """Return to CLOSED with an empty window (an operator's manual override)."""
        self._transition(BreakerState.CLOSED)

    def statistics(self) -> BreakerStatistics:
        """A snapshot of the state and the current window."""
        now = self._clock.monotonic()
        calls, failed, slow = self._metrics.window.counts(now)
        failure_rate, slow_rate = self._metrics.rates(now)
        is_open = self._state is BreakerState.OPEN
        return BreakerStatistics(
            key=self._key,
            state=self._state,
            failure_rate=failure_rate,
            slow_call_rate=slow_rate,
            calls_in_window=calls,
            failed_calls=failed,
            slow_calls=slow,
            rejected_calls=self._metrics.rejected,
            rejected_total=self._rejected_total,
            half_open_permits_left=(
                self._permits if self._state is BreakerState.HALF_OPEN else None
            ),
            retry_after=max(0.0, self._open_until - now) if is_open else None,
        )


@final
class BreakerRegistry:
    """One :class:`CircuitBreaker` per dependency key, created on first use.

    Args:
        clock: the clock every breaker uses.
        default: the config for keys without an override.
        overrides: configs for particular keys.
    """

    __slots__ = ("_clock", "_listeners", "_registry")

    def __init__(
        self,
        *,
        clock: Clock,
        default: CircuitBreakerConfig | None = None,
        overrides: Mapping[str, CircuitBreakerConfig] | None = None,
    ) -> None:
        self._clock = clock
        self._listeners: list[Callable[[BreakerTransition], None]] = []
        self._registry: KeyedRegistry[CircuitBreakerConfig, CircuitBreaker] = KeyedRegistry(
            self._create, default or CircuitBreakerConfig(), overrides
        )

    def _create(self, key: str, config: CircuitBreakerConfig) -> CircuitBreaker:
        breaker = CircuitBreaker(config, clock=self._clock, key=key)
        for listener in self._listeners:
            breaker.add_listener(listener)
        return breaker

    def get(self, key: str, config: CircuitBreakerConfig | None = None) -> CircuitBreaker:
        """The breaker for ``key``; ``config`` is used only if it is created now."""
        breaker = self._registry.lookup(key, config)
        assert breaker is not None  # there is always a default config
        return breaker

    def __contains__(self, key: object) -> bool:
        return key in self._registry

    def add_listener(self, listener: Callable[[BreakerTransition], None]) -> None:
        """Listen to every breaker's transitions, present and future."""
        self._listeners.append(listener)
        for _, breaker in self._registry.items():
            breaker.add_listener(listener)

    def statistics(self) -> dict[str, BreakerStatistics]:
        """A snapshot of every breaker created so far, by key."""
        return {key: breaker.statistics() for key, breaker in self._registry.items()}
