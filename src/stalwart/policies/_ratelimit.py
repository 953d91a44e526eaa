"""Client-side rate limits: requests and tokens per minute, as token buckets.

:class:`TokenBucket` is the pure core: it holds ``capacity`` tokens, refills
continuously at ``refill_per_second`` and is told the time on every call.

**The default burst is 1.** A bucket of ``burst`` requests refilled at ``rpm / 60`` a
second lets ``burst + rpm·T/60`` calls through in any window of T seconds: with a burst of
a whole minute's quota (the old default), ``RateLimit(requests_per_minute=30)`` let 60
calls through in the first minute, and a provider that counts 30 per sliding minute
answered the last 30 with 429s. A burst of 1 spaces calls ``60 / rpm`` seconds apart, so
any sliding minute holds at most ``rpm`` of them: the most a sliding-window provider
accepts at the full rate. Ask for more (``burst=N``) where the provider counts fixed
windows or allows bursts; any minute then holds up to ``rpm + N - 1``.

**429s adapt the estimate.** ``RateLimit`` is the caller's estimate of the provider's
quota. When the provider answers 429 with rate-limit headers
(:class:`~stalwart.errors.ProviderQuota`), :meth:`RateLimiter.adapt` lowers the estimate
to the quota the provider reports and empties the buckets to what it says is left. (The
429's wait itself is the back-pressure gate's business, in front of the limiter.)

:class:`RateLimiter` puts a request bucket and a token bucket together. ``acquire``
*reserves* from both at once — a bucket may go into debt — and sleeps (``clock.sleep``)
until the debt is paid off. Reserving up front makes the limiter first-come,
first-served without a lock, gives each caller its exact wait at the moment it asks,
and lets a caller whose wait would exceed ``max_wait`` (or the enclosing deadline) fail at
once with :class:`~stalwart.errors.ThrottledError` and its ``retry_after``. Since token
counts are estimates until the response arrives, ``settle(estimated, actual)`` refunds or
charges the difference.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NoReturn, final

from stalwart._clock import Clock
from stalwart.errors import ConfigurationError, ProviderQuota, ThrottledError

from ._common import Duration, KeyedRegistry, check_non_negative, to_seconds
from ._timeout import remaining

__all__ = [
    "RateLimit",
    "RateLimitStatistics",
    "RateLimiter",
    "RateLimiterRegistry",
    "TokenBucket",
]


@final
class TokenBucket:
    """A token bucket told the time on every call (any monotonic seconds).

    Args:
        capacity: the most tokens it holds (its burst).
        refill_per_second: tokens added per second.
        now: the time it starts at, full unless ``tokens`` says otherwise.
    """

    __slots__ = ("_capacity", "_rate", "_tokens", "_updated")

    def __init__(
        self, capacity: float, refill_per_second: float, *, now: float,
        tokens: float | None = None,
    ) -> None:
        if not 0 < capacity < math.inf or not 0 < refill_per_second < math.inf:
            raise ConfigurationError("a token bucket needs capacity > 0 and refill rate > 0")
        self._capacity = float(capacity)
        self._rate = float(refill_per_second)
        self._tokens = self._capacity if tokens is None else float(tokens)
        self._updated = now

    @property
    def capacity(self) -> float:
        """The most tokens the bucket holds."""
        return self._capacity

    @property
    def refill_per_second(self) -> float:
        """Tokens added per second."""
        return self._rate

    def _refill(self, now: float) -> None:
        if now > self._updated:
            self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
            self._updated = now

    def available(self, now: float) -> float:
        """Tokens in the bucket at ``now``; negative while it is in debt."""
        self._refill(now)
        return self._tokens

    def wait_time(self, n: float, now: float) -> float:
        """Seconds until ``n`` tokens are there: 0.0 if they are now, ``inf`` if
        ``n`` exceeds the capacity (they never will be)."""
        if n > self._capacity:
            return math.inf
        self._refill(now)
        if self._tokens >= n:
            return 0.0
        return (n - self._tokens) / self._rate

    def try_take(self, n: float, now: float) -> float:
        """Take ``n`` tokens and return 0.0 if they are there; else take nothing and
        return the seconds to wait (``inf`` if ``n`` exceeds the capacity)."""
        wait = self.wait_time(n, now)
        if wait == 0.0:
            self._tokens -= n
        return wait

    def reserve(self, n: float, now: float) -> float:
        """Take ``n`` tokens now, going into debt if need be, and return the seconds
        until the debt is paid (when the caller may proceed)."""
        wait = self.wait_time(n, now)
        if wait != math.inf:
            self._tokens -= n
        return wait

    def adjust(self, delta: float, now: float) -> None:
        """Add ``delta`` tokens (a refund; capped at capacity) or, if negative, charge
        them (possibly into debt)."""
        self._refill(now)
        self._tokens = min(self._capacity, self._tokens + delta)

    def lower(self, *, capacity: float, refill_per_second: float, now: float) -> None:
        """Lower the capacity and refill rate to at most these (never raises them)."""
        if not 0 < capacity < math.inf or not 0 < refill_per_second < math.inf:
            raise ConfigurationError("a token bucket needs capacity > 0 and refill rate > 0")
        self._refill(now)
        self._capacity = min(self._capacity, float(capacity))
        self._rate = min(self._rate, float(refill_per_second))
        self._tokens = min(self._tokens, self._capacity)

    def cap(self, level: float, now: float) -> None:
        """Hold at most ``level`` tokens now (a negative level is a debt)."""
        self._refill(now)
        self._tokens = min(self._tokens, level)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    """Client-side limits for one provider/model.

    Args:
        requests_per_minute: request quota; ``None`` for no request limit.
        tokens_per_minute: token quota; ``None`` for no token limit.
        burst: how many requests may start back to back (the request bucket's
            capacity). The default, 1, spaces calls evenly, so no sliding minute holds
            more than ``requests_per_minute`` (see the module docstring).
        max_wait: the longest :meth:`RateLimiter.acquire` may wait; beyond it, it raises
            :class:`~stalwart.errors.ThrottledError`. ``None`` waits as long as needed.
    """

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    burst: int = 1
    max_wait: Duration | None = None

    def __post_init__(self) -> None:
        if self.requests_per_minute is None and self.tokens_per_minute is None:
            raise ConfigurationError(
                "RateLimit needs requests_per_minute, tokens_per_minute or both"
            )
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
                or not 0 < value < math.inf
            ):
                raise ConfigurationError(f"RateLimit.{name} must be > 0, got {value!r}")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise ConfigurationError(f"RateLimit.burst must be an int >= 1, got {self.burst!r}")
        if self.burst != 1 and self.requests_per_minute is None:
            raise ConfigurationError("RateLimit.burst needs requests_per_minute")
        if self.max_wait is not None:
            seconds = check_non_negative("RateLimit", "max_wait", self.max_wait)
            object.__setattr__(self, "max_wait", seconds)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitStatistics:
    """A snapshot of a rate limiter.

    Attributes:
        requests_available, tokens_available: what the buckets hold now (negative in
            debt); ``None`` for a limit that is not set.
        acquired: calls let through.
        throttled: calls refused with ThrottledError.
        waiting: callers sleeping for their turn now.
        total_wait: seconds of waiting handed out in all.
        requests_per_minute, tokens_per_minute: the quotas in force now: the configured
            ones, lowered to what the provider reported on a 429 (``None``: no limit).
    """

    key: str
    requests_available: float | None
    tokens_available: float | None
    acquired: int
    throttled: int
    waiting: int
    total_wait: float
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None


@final
class RateLimiter:
    """Requests-per-minute and tokens-per-minute limits for one provider/model.

    Example::

        await limiter.acquire(estimated_tokens=1200)
        response = await call()
        limiter.settle(1200, response.usage.total_tokens)
    """

    __slots__ = (
        "_acquired", "_clock", "_config", "_key", "_requests", "_throttled", "_tokens",
        "_total_wait", "_waiting",
    )

    def __init__(self, config: RateLimit, *, clock: Clock, key: str = "default") -> None:
        self._config = config
        self._clock = clock
        self._key = key
        now = clock.monotonic()
        self._requests: TokenBucket | None = None
        self._tokens: TokenBucket | None = None
        if config.requests_per_minute is not None:
            rpm = config.requests_per_minute
            self._requests = TokenBucket(config.burst, rpm / 60.0, now=now)
        if config.tokens_per_minute is not None:
            tpm = config.tokens_per_minute
            self._tokens = TokenBucket(tpm, tpm / 60.0, now=now)
        self._acquired = 0
        self._throttled = 0
        self._waiting = 0
        self._total_wait = 0.0

    @property
    def key(self) -> str:
        """The provider/model this limiter is for."""
        return self._key

    def _throttle(self, message: str, retry_after: float | None, *, retryable: bool) -> NoReturn:
        self._throttled += 1
        raise ThrottledError(
            f"rate limiter {self._key!r}: {message}",
            key=self._key, retry_after=retry_after, retryable=retryable,
        )

    async def acquire(self, estimated_tokens: int = 0) -> float:
        """Wait for a request slot and ``estimated_tokens`` tokens; return the wait.

        Raises:
            ThrottledError: the wait would exceed ``max_wait`` or the enclosing deadline
                (``retry_after`` is the wait), or ``estimated_tokens`` exceeds a whole
                minute's quota (not retryable). Nothing is taken from the buckets then.
        """
        if estimated_tokens < 0:
            raise ConfigurationError(f"estimated_tokens must be >= 0, got {estimated_tokens}")
        now = self._clock.monotonic()
        wait = 0.0
        if self._requests is not None:
            wait = self._requests.wait_time(1, now)
        if self._tokens is not None and estimated_tokens:
            wait = max(wait, self._tokens.wait_time(estimated_tokens, now))
        if wait == math.inf:
            self._throttle(f"{estimated_tokens} tokens exceed the per-minute quota", None,
                           retryable=False)
        limit = None if self._config.max_wait is None else to_seconds(self._config.max_wait)
        if limit is not None and wait > limit:
            self._throttle(f"wait of {wait:g}s exceeds max_wait={limit:g}s", wait, retryable=True)
        left = remaining()
        if left is not None and wait > 0 and wait >= left:
            self._throttle(f"wait of {wait:g}s outlasts the deadline", wait, retryable=True)
        if self._requests is not None:
            self._requests.reserve(1, now)
        if self._tokens is not None and estimated_tokens:
            self._tokens.reserve(estimated_tokens, now)
        self._acquired += 1
        if wait > 0:
            self._total_wait += wait
            self._waiting += 1
            try:
                await self._clock.sleep(wait)
            except asyncio.CancelledError:
                self._refund(estimated_tokens)
                raise
            finally:
                self._waiting -= 1
        return wait

    def _refund(self, estimated_tokens: int) -> None:
        now = self._clock.monotonic()
        self._acquired -= 1
        if self._requests is not None:
            self._requests.adjust(1, now)
        if self._tokens is not None and estimated_tokens:
            self._tokens.adjust(estimated_tokens, now)

    def settle(self, estimated_tokens: int, actual_tokens: int) -> None:
        """Correct the token bucket once the call reports its real usage: refund what was
        over-estimated, charge what was under-estimated (possibly into debt)."""
        if self._tokens is not None:
            self._tokens.adjust(estimated_tokens - actual_tokens, self._clock.monotonic())

    def adapt(self, quota: ProviderQuota) -> None:
        """Learn from what a 429's rate-limit headers said: lower each configured quota
        to the limit the provider reports, and hold no more than it says is left (and
        no more than would make the bucket whole by its reset)."""
        now = self._clock.monotonic()
        for bucket, limit, left, reset in (
                (self._requests, quota.requests_limit, quota.requests_remaining,
                 quota.requests_reset),
                (self._tokens, quota.tokens_limit, quota.tokens_remaining,
                 quota.tokens_reset)):
            if bucket is not None:
                _adapt_bucket(bucket, limit, left, reset, now)

    def statistics(self) -> RateLimitStatistics:
        """A snapshot of the buckets and counters."""
        now = self._clock.monotonic()
        return RateLimitStatistics(
            key=self._key,
            requests_available=None if self._requests is None else self._requests.available(now),
            tokens_available=None if self._tokens is None else self._tokens.available(now),
            acquired=self._acquired,
            throttled=self._throttled,
            waiting=self._waiting,
            total_wait=self._total_wait,
            requests_per_minute=_per_minute(self._requests),
            tokens_per_minute=_per_minute(self._tokens),
        )


def _per_minute(bucket: TokenBucket | None) -> float | None:
    return None if bucket is None else bucket.refill_per_second * 60.0


def _adapt_bucket(bucket: TokenBucket, limit: float | None, left: float | None,
                  reset: float | None, now: float) -> None:
    """One bucket's share of :meth:`RateLimiter.adapt`."""
    if limit is not None and limit > 0:
        bucket.lower(capacity=max(1.0, min(bucket.capacity, limit)),
                     refill_per_second=limit / 60.0, now=now)
    if left is not None:
        bucket.cap(left, now)
    if reset is not None:
        bucket.cap(bucket.capacity - reset * bucket.refill_per_second, now)


@final
class RateLimiterRegistry:
    """One :class:`RateLimiter` per provider/model key, created on first use.

    Rate limits are specific to a key, so there is no default unless one is given:
    :meth:`get` returns ``None`` for a key with no limit configured.
    """

    __slots__ = ("_clock", "_registry")

    def __init__(
        self,
        *,
        clock: Clock,
        limits: Mapping[str, RateLimit] | None = None,
        default: RateLimit | None = None,
    ) -> None:
        self._clock = clock
        self._registry: KeyedRegistry[RateLimit, RateLimiter] = KeyedRegistry(
            lambda key, config: RateLimiter(config, clock=self._clock, key=key),
            default,
            limits,
        )

    def get(self, key: str, config: RateLimit | None = None) -> RateLimiter | None:
        """The limiter for ``key`` (``config`` is used only if it is created now), or
        ``None`` if ``key`` has no limit."""
        return self._registry.lookup(key, config)

    def __contains__(self, key: object) -> bool:
        return key in self._registry

    def statistics(self) -> dict[str, RateLimitStatistics]:
        """A snapshot of every limiter created so far, by key."""
        return {key: limiter.statistics() for key, limiter in self._registry.items()}

    async def aclose(self) -> None:
        """Nothing to wait for: in-process state needs no flushing (the cluster-wide
        registry's counterpart sends its last writes to the store)."""
