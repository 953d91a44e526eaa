"""Retry: exponential backoff with full jitter, as one pure decision and a thin driver.

The policy is data (:class:`Retry`). :func:`decide` is pure — it takes the policy, the
:class:`RetryState` so far, the error just raised, the time and a ``random.Random`` and
returns a frozen decision: :class:`Attempt`, :class:`Sleep` or :class:`GiveUp` (the idea
of tenacity's ``iter()``). :func:`call_with_retry` carries decisions out with an injected
clock, so backoffs run in virtual time under ``FakeClock`` and the engine can journal
every attempt through ``on_event``.

Backoff before attempt ``n + 1`` (after attempt ``n`` failed) is, per the AWS
architecture blog's "full jitter"::

    ceiling = min(max_backoff, initial * multiplier ** (n - 1))
    sleep   = rng.uniform(0, ceiling)

and never less than the failed call's ``retry_after`` (a provider's ``Retry-After``).
An error that says ``retryable = False`` is never retried, whatever ``retry_on`` says.
Which errors are worth a retry by default is the failure classifier's call
(:func:`stalwart.policies._classify.is_retryable`).

A :class:`~stalwart.errors.CircuitOpenError` is waited out rather than hammered: the
next attempt comes after the breaker's open time (its ``retry_after``) *plus* the
jittered backoff, so callers held by one open breaker reach its half-open probe spread
out instead of all at once. (Whether to wait for it at all, or move on to a fallback
that can answer now, is the caller's choice: the engine moves on when it can.)
"""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar, final

from stalwart._clock import Clock
from stalwart.errors import CircuitOpenError, ConfigurationError, RetryExhaustedError

from ._classify import is_retryable
from ._common import Duration, check_non_negative, check_positive, to_seconds
from ._timeout import remaining

__all__ = [
    "Attempt",
    "Decision",
    "GiveUp",
    "Retry",
    "RetryEvent",
    "RetryOn",
    "RetryState",
    "Sleep",
    "call_with_retry",
    "decide",
]

_T = TypeVar("_T")

Jitter = Literal["full", "equal", "none"]


@final
@dataclass(frozen=True, slots=True)
class RetryOn:
    """A predicate saying which errors a :class:`Retry` may retry.

    Combine with ``|`` (either) and ``&`` (both). An error whose ``retryable`` attribute
    is ``False`` is never retried regardless of the predicate.

    Example::

        Retry(retry_on=RetryOn.transient() | RetryOn.types(ValueError))
    """

    test: Callable[[BaseException], bool]
    description: str = "custom"

    def __call__(self, exc: BaseException) -> bool:
        return self.test(exc)

    def __or__(self, other: RetryOn) -> RetryOn:
        first, second = self.test, other.test
        return RetryOn(
            lambda e: first(e) or second(e), f"({self.description} | {other.description})"
        )

    def __and__(self, other: RetryOn) -> RetryOn:
        first, second = self.test, other.test
        return RetryOn(
            lambda e: first(e) and second(e), f"({self.description} & {other.description})"
        )

    @classmethod
    def transient(cls) -> RetryOn:
        """The default: a StalwartError's own ``retryable``; for other errors a 429, an
        OSError/TimeoutError or an HTTP 408/5xx (see the failure classifier)."""
        return _TRANSIENT

    @classmethod
    def types(cls, *types: type[BaseException]) -> RetryOn:
        """Errors that are instances of one of ``types``."""
        names = ", ".join(t.__name__ for t in types)
        return cls(lambda e: isinstance(e, types), f"types({names})")

    @classmethod
    def where(cls, test: Callable[[BaseException], bool], description: str = "where") -> RetryOn:
        """Errors for which ``test`` returns true."""
        return cls(test, description)


_TRANSIENT = RetryOn(is_retryable, "transient")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """How to retry a failing call.

    Args:
        max_attempts: attempts in all, the first included; ``None`` for no limit.
        initial: the backoff ceiling after the first failure (seconds or timedelta).
        multiplier: growth of the ceiling per failure (>= 1).
        max_backoff: the cap on the ceiling; ``None`` for no cap.
        max_elapsed: no attempt starts later than this after the first one started;
            ``None`` for no limit.
        jitter: ``"full"`` (uniform in [0, ceiling]), ``"equal"`` (uniform in
            [ceiling/2, ceiling]) or ``"none"`` (the ceiling itself).
        retry_on: which errors to retry; see :class:`RetryOn`.

    Durations are stored as float seconds.
    """

    max_attempts: int | None = 3
    initial: Duration = 1.0
    multiplier: float = 2.0
    max_backoff: Duration | None = 60.0
    max_elapsed: Duration | None = None
    jitter: Jitter = "full"
    retry_on: Callable[[BaseException], bool] = field(default=_TRANSIENT)

    def __post_init__(self) -> None:
        owner = "Retry"
        if self.max_attempts is not None and (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or self.max_attempts < 1
        ):
            raise ConfigurationError(f"Retry.max_attempts must be >= 1, got {self.max_attempts!r}")
        initial = check_non_negative(owner, "initial", self.initial)
        object.__setattr__(self, "initial", initial)
        if initial == 0.0 and self.max_attempts is None:
            raise ConfigurationError(
                "Retry(max_attempts=None) needs initial > 0, or it retries in a hot loop"
            )
        multiplier = self.multiplier
        if (
            isinstance(multiplier, bool)
            or not isinstance(multiplier, int | float)
            or not 1.0 <= multiplier < math.inf
        ):
            raise ConfigurationError(f"Retry.multiplier must be >= 1, got {self.multiplier!r}")
        if self.max_backoff is not None:
            cap = check_non_negative(owner, "max_backoff", self.max_backoff)
            if cap < initial:
                raise ConfigurationError(
                    f"Retry.max_backoff ({cap}) must be >= Retry.initial ({initial})"
                )
            object.__setattr__(self, "max_backoff", cap)
        if self.max_elapsed is not None:
            object.__setattr__(
                self, "max_elapsed", check_positive(owner, "max_elapsed", self.max_elapsed)
            )
        if self.jitter not in ("full", "equal", "none"):
            raise ConfigurationError(
                f"Retry.jitter must be 'full', 'equal' or 'none', got {self.jitter!r}"
            )
        if not callable(self.retry_on):
            raise ConfigurationError(f"Retry.retry_on must be callable, got {self.retry_on!r}")

    def ceiling(self, attempt: int) -> float:
        """The backoff ceiling after attempt number ``attempt`` (1-based) failed."""
        initial = to_seconds(self.initial)
        if initial == 0.0:
            return 0.0
        try:
            raw = initial * self.multiplier ** (attempt - 1)
        except OverflowError:
            raw = math.inf
        if self.max_backoff is None:
            return raw
        return min(to_seconds(self.max_backoff), raw)

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """A jittered backoff after attempt ``attempt`` failed, in [0, ceiling]."""
        ceiling = self.ceiling(attempt)
        if self.jitter == "full":
            return min(ceiling, rng.uniform(0.0, ceiling))
        if self.jitter == "equal":
            return min(ceiling, ceiling / 2 + rng.uniform(0.0, ceiling / 2))
        return ceiling


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class RetryState:
    """Where a retried call stands.

    Attributes:
        attempt: attempts made so far (the number of the last one; 0 before the first).
        first_attempt_at: clock time (``Clock.now()``) the first attempt started.
        last_error: the error of the last attempt, if it failed.
    """

    attempt: int = 0
    first_attempt_at: float
    last_error: BaseException | None = None

    def failed(self, error: BaseException) -> RetryState:
        """This state after the current attempt raised ``error``."""
        return RetryState(
            attempt=self.attempt, first_attempt_at=self.first_attempt_at, last_error=error
        )

    def started(self) -> RetryState:
        """This state once the next attempt has started."""
        return RetryState(attempt=self.attempt + 1, first_attempt_at=self.first_attempt_at)


@final
@dataclass(frozen=True, slots=True)
class Attempt:
    """Make attempt number ``number`` now."""

    number: int


@final
@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait ``seconds``, then make attempt number ``next_attempt``."""

    seconds: float
    next_attempt: int


@final
@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop. ``exhausted`` is true when a retryable error ran out of attempts or time
    (raise :class:`RetryExhaustedError`); false when the error may not be retried at all
    (re-raise it as it is)."""

    reason: str
    exhausted: bool


Decision = Attempt | Sleep | GiveUp


def decide(
    policy: Retry,
    state: RetryState,
    error: BaseException | None,
    now: float,
    rng: random.Random,
    *,
    deadline_remaining: float | None = None,
) -> Decision:
    """The next step for a call in ``state`` whose last attempt raised ``error``.

    ``error=None`` asks whether to make the next attempt at all (the first, or the one
    after a resume); ``now`` is on the same clock as ``state.first_attempt_at``;
    ``deadline_remaining`` is the time left in the enclosing deadline scope, if any.
    """
    limit = policy.max_attempts
    if error is None:
        if limit is not None and state.attempt >= limit:
            return GiveUp(f"max_attempts={limit} reached", exhausted=True)
        if deadline_remaining is not None and deadline_remaining <= 0:
            return GiveUp("the enclosing deadline has passed", exhausted=True)
        return Attempt(state.attempt + 1)
    if not isinstance(error, Exception):
        return GiveUp(f"{type(error).__name__} is control flow, not a failure", exhausted=False)
    if getattr(error, "retryable", None) is False:
        return GiveUp(f"{type(error).__name__} is not retryable", exhausted=False)
    if not policy.retry_on(error):
        return GiveUp(f"{type(error).__name__} is not retried by this policy", exhausted=False)
    if limit is not None and state.attempt >= limit:
        return GiveUp(f"max_attempts={limit} reached", exhausted=True)
    wait = policy.backoff(state.attempt, rng)
    retry_after = getattr(error, "retry_after", None)
    if isinstance(error, CircuitOpenError):
        # After the open time, spread by the jittered backoff (see the module docstring).
        wait += float(retry_after or 0.0)
    elif isinstance(retry_after, int | float) and not isinstance(retry_after, bool):
        wait = max(wait, float(retry_after))
    if policy.max_elapsed is not None:
        budget = to_seconds(policy.max_elapsed)
        if now + wait - state.first_attempt_at > budget:
            return GiveUp(f"max_elapsed={budget:g}s would be exceeded", exhausted=True)
    if deadline_remaining is not None and wait >= deadline_remaining:
        return GiveUp("the enclosing deadline would pass while waiting", exhausted=True)
    return Sleep(wait, state.attempt + 1)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class RetryEvent:
    """What :func:`call_with_retry` reports to ``on_event``.

    Attributes:
        kind: ``"attempt"`` (about to make attempt ``attempt``), ``"retry"`` (attempt
            ``attempt`` failed with ``error``; sleeping ``sleep`` seconds) or
            ``"give_up"`` (attempt ``attempt`` failed with ``error``; ``reason`` says why
            there is no other).
        attempt: the attempt number.
        at: ``Clock.now()`` when it happened.
    """

    kind: Literal["attempt", "retry", "give_up"]
    attempt: int
    at: float
    error: BaseException | None = None
    sleep: float | None = None
    reason: str | None = None


OnEvent = Callable[[RetryEvent], Awaitable[None] | None]


async def _emit(on_event: OnEvent | None, event: RetryEvent) -> None:
    if on_event is None:
        return
    result = on_event(event)
    if inspect.isawaitable(result):
        await result


def _exhausted(state: RetryState, decision: GiveUp, exc: Exception,
               errors: list[BaseException]) -> RetryExhaustedError:
    retry_after = getattr(exc, "retry_after", None)
    return RetryExhaustedError(
        f"gave up after {state.attempt} attempt(s): {decision.reason}; "
        f"last error: {type(exc).__name__}: {exc}",
        attempts=state.attempt,
        errors=tuple(errors),
        reason=decision.reason,
        retry_after=retry_after if isinstance(retry_after, float | int) else None,
    )


async def call_with_retry(
    policy: Retry,
    fn: Callable[[], Awaitable[_T]],
    *,
    clock: Clock,
    rng: random.Random,
    on_event: OnEvent | None = None,
    start_attempt: int = 1,
    first_attempt_at: float | None = None,
) -> _T:
    """Call ``fn()`` until it succeeds or ``policy`` gives up.

    Args:
        fn: makes one attempt; called afresh for each.
        clock: sleeps and timestamps (``Clock.now()``, so a resumed run can pass a
            journaled ``first_attempt_at``).
        rng: the jitter source.
        on_event: called (and awaited, if it returns an awaitable) for every attempt,
            retry and give-up, so the engine can journal them.
        start_attempt: the number of the first attempt made here; a run resumed after a
            crash passes the journaled count + 1 so ``max_attempts`` still holds.
        first_attempt_at: when the first attempt started, for ``max_elapsed`` on resume.

    Raises:
        RetryExhaustedError: retryable failures used up the attempts or the time;
            ``__cause__`` is the last failure.
        Exception: a non-retryable failure, as it was raised, at once.
    """
    if start_attempt < 1:
        raise ConfigurationError(f"start_attempt must be >= 1, got {start_attempt}")
    started = clock.now() if first_attempt_at is None else first_attempt_at
    state = RetryState(attempt=start_attempt - 1, first_attempt_at=started)
    errors: list[BaseException] = []
    decision: Decision = decide(policy, state, None, clock.now(), rng)
    while True:
        if isinstance(decision, Sleep):
            await clock.sleep(decision.seconds)
            decision = Attempt(decision.next_attempt)
        if isinstance(decision, GiveUp):
            await _emit(
                on_event,
                RetryEvent(kind="give_up", attempt=state.attempt, at=clock.now(),
                           reason=decision.reason),
            )
            raise RetryExhaustedError(
                f"gave up after {state.attempt} attempt(s): {decision.reason}",
                attempts=state.attempt, reason=decision.reason,
            )
        state = state.started()
        await _emit(on_event, RetryEvent(kind="attempt", attempt=state.attempt, at=clock.now()))
        try:
            return await fn()
        except Exception as exc:
            errors.append(exc)
            state = state.failed(exc)
            decision = decide(
                policy, state, exc, clock.now(), rng, deadline_remaining=remaining()
            )
            if isinstance(decision, GiveUp):
                await _emit(
                    on_event,
                    RetryEvent(kind="give_up", attempt=state.attempt, at=clock.now(),
                               error=exc, reason=decision.reason),
                )
                if not decision.exhausted:
                    raise
                raise _exhausted(state, decision, exc, errors) from exc
            assert isinstance(decision, Sleep)
            await _emit(
                on_event,
                RetryEvent(kind="retry", attempt=state.attempt, at=clock.now(), error=exc,
                           sleep=decision.seconds),
            )
