"""Cluster-wide bulkheads and rate limits: the policies' state kept in a shared store.

:class:`ClusterRateLimiter` and :class:`ClusterBulkhead` have the interface of
:class:`~stalwart.policies.RateLimiter` and :class:`~stalwart.policies.Bulkhead`, so the
policy stack uses either, but every worker sharing the store draws from the same buckets
and counts the same slots (a :class:`~stalwart.policies.LimitStore`):

* **Rate limits.** ``acquire`` reserves from the cluster's buckets in one transaction
  and sleeps off the debt on the runtime's clock, as the local limiter does; ``max_wait``
  and the enclosing deadline are checked inside that transaction, so a refused caller
  takes nothing. A caller cancelled while it waits gives its reservation back.
  ``settle`` sends its correction in the background (the policy stack calls it
  synchronously); :meth:`ClusterRateLimiterRegistry.aclose` waits for those.
* **Bulkheads.** A slot is a row with a holder id and an expiry of ``lease_seconds``,
  renewed by this worker while the call runs; a worker that dies stops renewing and its
  slots free themselves. A caller that finds the pool full polls the store with backoff
  (from ``poll_min`` doubling to ``poll_max`` seconds, on the runtime's clock, and at once
  when this worker frees a slot) until ``queue_timeout``. ``max_queue`` bounds the
  callers waiting *in this worker* — there is no cross-worker queue, so no cross-worker
  first-come-first-served either. ``release`` deletes the slot in the background: until
  that commits the slot still counts, which can only make the limit stricter.

``statistics()`` reports what this worker saw: its own calls, waiters and slots, and the
buckets as of its last exchange with the store, refilled to now.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Awaitable, Mapping
from types import TracebackType
from typing import Literal, NoReturn, final

from stalwart._buckets import BucketDraw
from stalwart._clock import Clock, sleep_until
from stalwart.errors import BulkheadFullError, ConfigurationError, ProviderQuota, ThrottledError

from ._bulkhead import BulkheadConfig, BulkheadStatistics
from ._common import KeyedRegistry, to_seconds
from ._limitstore import LimitStore
from ._ratelimit import RateLimit, RateLimitStatistics, TokenBucket
from ._timeout import remaining

__all__ = [
    "ClusterBulkhead",
    "ClusterBulkheadRegistry",
    "ClusterRateLimiter",
    "ClusterRateLimiterRegistry",
    "LimitsMode",
    "shared_limit_store",
]

LimitsMode = Literal["auto", "cluster", "local"]
"""Where a runtime keeps bulkheads and rate limits: ``"cluster"`` in the store (shared
by every worker), ``"local"`` in memory (per process), ``"auto"`` as the store suggests
(:attr:`LimitStore.cluster_limits_default <stalwart.policies.LimitStore.cluster_limits_default>`:
PostgreSQL shares, the embedded stores do not)."""

log = logging.getLogger("stalwart.policies.cluster")


class _Background:
    """Store writes that synchronous callers (``settle``, ``release``) leave behind."""

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Awaitable[None], what: str) -> None:
        async def run() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cluster limits: %s failed (%s)", what, exc)

        task = asyncio.get_running_loop().create_task(run(), name=f"sw-limits-{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def shared_limit_store(mode: str, store: object) -> LimitStore | None:
    """The store to keep limits in for ``mode`` (see :data:`LimitsMode`), or ``None``
    for in-process limits.

    Raises:
        ConfigurationError: an unknown mode, or ``"cluster"`` with a store that cannot
            keep limits.
    """
    if mode not in ("auto", "cluster", "local"):
        raise ConfigurationError(f"limits must be 'auto', 'cluster' or 'local', not {mode!r}")
    if mode == "local":
        return None
    if not isinstance(store, LimitStore):
        if mode == "cluster":
            raise ConfigurationError(
                f"limits='cluster' needs a store that keeps cluster-wide limits; "
                f"{type(store).__name__} does not")
        return None
    return store if mode == "cluster" or store.cluster_limits_default else None


# -- rate limits ---------------------------------------------------------------------


@final
class ClusterRateLimiter:
    """Requests-per-minute and tokens-per-minute limits shared by every worker of a store.

    The same contract as :class:`~stalwart.policies.RateLimiter` (see the module
    docstring for what differs).
    """

    __slots__ = (
        "_acquired", "_background", "_clock", "_config", "_key", "_mirror", "_requests",
        "_store", "_throttled", "_tokens", "_total_wait", "_waiting",
    )

    def __init__(self, config: RateLimit, *, store: LimitStore, clock: Clock,
                 key: str = "default", background: _Background | None = None) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self._key = key
        self._background = background or _Background()
        self._requests: BucketDraw | None = None
        self._tokens: BucketDraw | None = None
        if config.requests_per_minute is not None:
            rpm = float(config.requests_per_minute)
            self._requests = BucketDraw(f"{key}#requests", 1.0, float(config.burst), rpm / 60.0)
        if config.tokens_per_minute is not None:
            tpm = float(config.tokens_per_minute)
            self._tokens = BucketDraw(f"{key}#tokens", 0.0, tpm, tpm / 60.0)
        # The buckets as last seen in the store, for statistics().
        self._mirror: dict[str, TokenBucket] = {}
        self._acquired = 0
        self._throttled = 0
        self._waiting = 0
        self._total_wait = 0.0

    @property
    def key(self) -> str:
        """The provider/model this limiter is for."""
        return self._key

    def _draws(self, estimated_tokens: int) -> list[BucketDraw]:
        draws = []
        if self._requests is not None:
            draws.append(self._requests)
        if self._tokens is not None and estimated_tokens:
            t = self._tokens
            draws.append(BucketDraw(t.key, float(estimated_tokens), t.capacity,
                                    t.refill_per_second))
        return draws

    def _seen(self, draws: list[BucketDraw], available: tuple[float, ...]) -> None:
        now = self._clock.now()
        for draw, tokens in zip(draws, available, strict=True):
            self._mirror[draw.key] = TokenBucket(draw.capacity, draw.refill_per_second,
                                                 now=now, tokens=tokens)

    def _throttle(self, message: str, retry_after: float | None, *, retryable: bool) -> NoReturn:
        self._throttled += 1
        raise ThrottledError(
            f"rate limiter {self._key!r} (cluster): {message}",
            key=self._key, retry_after=retry_after, retryable=retryable,
        )

    async def acquire(self, estimated_tokens: int = 0) -> float:
        """Wait for a request slot and ``estimated_tokens`` tokens of the cluster's
        quota; return the wait.

        Raises:
            ThrottledError: as :meth:`RateLimiter.acquire <stalwart.policies.RateLimiter.acquire>`;
                nothing is taken from the buckets then.
            StoreError: the store could not be reached.
        """
        if estimated_tokens < 0:
            raise ConfigurationError(f"estimated_tokens must be >= 0, got {estimated_tokens}")
        draws = self._draws(estimated_tokens)
        limit = None if self._config.max_wait is None else to_seconds(self._config.max_wait)
        left = remaining()
        allowed = limit
        if left is not None:
            # A wait must end before the deadline (a zero wait is always allowed).
            before = max(0.0, math.nextafter(left, -math.inf))
            allowed = before if allowed is None else min(allowed, before)
        res = await self._store.rate_reserve(draws, now=self._clock.now(), max_wait=allowed)
        self._seen(draws, res.available)
        wait = res.wait
        if wait == math.inf:
            self._throttle(f"{estimated_tokens} tokens exceed the per-minute quota", None,
                           retryable=False)
        if not res.granted:
            if limit is not None and wait > limit:
                self._throttle(f"wait of {wait:g}s exceeds max_wait={limit:g}s", wait,
                               retryable=True)
            self._throttle(f"wait of {wait:g}s outlasts the deadline", wait, retryable=True)
        self._acquired += 1
        if wait > 0:
            self._total_wait += wait
            self._waiting += 1
            try:
                await self._clock.sleep(wait)
            except asyncio.CancelledError:
                self._acquired -= 1
                self._give_back(draws, "refund")
                raise
            finally:
                self._waiting -= 1
        return wait

    def _give_back(self, draws: list[BucketDraw], what: str) -> None:
        if not draws:
            return

        async def adjust() -> None:
            available = await self._store.rate_adjust(draws, now=self._clock.now())
            self._seen(draws, available)

        self._background.spawn(adjust(), f"{what}:{self._key}")

    def settle(self, estimated_tokens: int, actual_tokens: int) -> None:
        """Correct the cluster's token bucket once the call reports its real usage (sent
        to the store in the background)."""
        t = self._tokens
        if t is not None and estimated_tokens != actual_tokens:
            self._give_back([BucketDraw(t.key, float(estimated_tokens - actual_tokens),
                                        t.capacity, t.refill_per_second)], "settle")

    def adapt(self, quota: ProviderQuota) -> None:
        """Learn from what a 429's rate-limit headers said: this worker's reservations
        use the lower quota the provider reports from now on (the shared bucket refills
        at each caller's own rate, so a worker that has not seen a 429 keeps its
        estimate). What is left of the quota is not written to the store: each worker's
        back-pressure gate holds its own calls."""
        for attr, limit in (("_requests", quota.requests_limit),
                            ("_tokens", quota.tokens_limit)):
            draw: BucketDraw | None = getattr(self, attr)
            if draw is None or limit is None or limit <= 0:
                continue
            setattr(self, attr, BucketDraw(
                draw.key, draw.amount, max(1.0, min(draw.capacity, limit)),
                min(draw.refill_per_second, limit / 60.0)))

    def statistics(self) -> RateLimitStatistics:
        """This worker's counters and the buckets as it last saw them, refilled to now."""
        now = self._clock.now()

        def level(draw: BucketDraw | None) -> float | None:
            if draw is None:
                return None
            seen = self._mirror.get(draw.key)
            return draw.capacity if seen is None else seen.available(now)

        return RateLimitStatistics(
            key=self._key,
            requests_available=level(self._requests),
            tokens_available=level(self._tokens),
            acquired=self._acquired,
            throttled=self._throttled,
            waiting=self._waiting,
            total_wait=self._total_wait,
            requests_per_minute=(None if self._requests is None
                                 else self._requests.refill_per_second * 60.0),
            tokens_per_minute=(None if self._tokens is None
                               else self._tokens.refill_per_second * 60.0),
        )


@final
class ClusterRateLimiterRegistry:
    """One :class:`ClusterRateLimiter` per provider/model key, created on first use;
    the counterpart of :class:`~stalwart.policies.RateLimiterRegistry`."""

    __slots__ = ("_background", "_clock", "_registry", "_store")

    def __init__(
        self,
        *,
        store: LimitStore,
        clock: Clock,
        limits: Mapping[str, RateLimit] | None = None,
        default: RateLimit | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._background = _Background()
        self._registry: KeyedRegistry[RateLimit, ClusterRateLimiter] = KeyedRegistry(
            lambda key, config: ClusterRateLimiter(config, store=self._store, clock=self._clock,
                                                   key=key, background=self._background),
            default,
            limits,
        )

    def get(self, key: str, config: RateLimit | None = None) -> ClusterRateLimiter | None:
        """The limiter for ``key`` (``config`` is used only if it is created now), or
        ``None`` if ``key`` has no limit."""
        return self._registry.lookup(key, config)

    def __contains__(self, key: object) -> bool:
        return key in self._registry

    def statistics(self) -> dict[str, RateLimitStatistics]:
        """A snapshot of every limiter created so far, by key."""
        return {key: limiter.statistics() for key, limiter in self._registry.items()}

    async def aclose(self) -> None:
        """Wait for the corrections still being sent to the store."""
        await self._background.drain()


# -- bulkheads -----------------------------------------------------------------------


@final
class ClusterBulkhead:
    """A concurrency limit for one pool, counted across every worker of a store.

    The same contract as :class:`~stalwart.policies.Bulkhead` (see the module docstring
    for what differs). Use ``async with bulkhead: ...``, or :meth:`acquire` and
    :meth:`release` in pairs.
    """

    __slots__ = (
        "_config", "_held", "_max_seen", "_name", "_registry", "_rejected", "_released",
        "_timed_out", "_waiting",
    )

    def __init__(self, config: BulkheadConfig, *, name: str,
                 registry: ClusterBulkheadRegistry) -> None:
        self._config = config
        self._name = name
        self._registry = registry
        self._held: list[str] = []
        self._waiting = 0
        self._max_seen = 0
        self._rejected = 0
        self._timed_out = 0
        self._released = asyncio.Event()

    @property
    def name(self) -> str:
        """The pool's name."""
        return self._name

    async def _try(self, holder: str) -> bool:
        reg = self._registry
        try:
            got = await reg.store.bulkhead_acquire(
                self._name, holder, max_concurrent=self._config.max_concurrent,
                now=reg.clock.now(), lease_seconds=reg.lease_seconds)
        except asyncio.CancelledError:
            # The slot may have been taken as we were cancelled: give it back.
            reg.background.spawn(reg.store.bulkhead_release(self._name, holder),
                                 f"release:{self._name}")
            raise
        if got:
            self._held.append(holder)
            self._max_seen = max(self._max_seen, len(self._held))
            reg.holding(holder)
        return got

    async def acquire(self) -> None:
        """Take a slot of the cluster's pool, polling for one if needed.

        Raises:
            BulkheadFullError: this worker already has ``max_queue`` callers waiting, or
                the wait reached ``queue_timeout``.
            StoreError: the store could not be reached.
        """
        reg = self._registry
        config = self._config
        holder = f"{reg.worker_id}:{uuid.uuid4().hex[:12]}"
        if self._waiting == 0 and await self._try(holder):
            return
        if self._waiting >= config.max_queue:
            self._rejected += 1
            raise BulkheadFullError(
                f"bulkhead {self._name!r} (cluster) is full: {self._waiting} waiting here",
                name=self._name, reason="queue_full",
            )
        clock = reg.clock
        deadline = (None if config.queue_timeout is None
                    else clock.monotonic() + to_seconds(config.queue_timeout))
        delay = reg.poll_min
        self._waiting += 1
        try:
            while True:
                pause = delay
                if deadline is not None:
                    pause = min(pause, deadline - clock.monotonic())
                    if pause <= 0:
                        self._timed_out += 1
                        raise BulkheadFullError(
                            f"bulkhead {self._name!r} (cluster): no slot within "
                            f"{to_seconds(config.queue_timeout or 0):g}s",
                            name=self._name, reason="queue_timeout",
                        )
                await self._pause(pause)
                if await self._try(holder):
                    return
                delay = min(delay * 2, reg.poll_max)
        finally:
            self._waiting -= 1

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds`` on the clock, or less if this worker frees a slot."""
        released = asyncio.ensure_future(self._released.wait())
        clock = self._registry.clock
        sleeper = asyncio.ensure_future(sleep_until(clock, clock.monotonic() + seconds))
        try:
            await asyncio.wait({released, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            released.cancel()
            sleeper.cancel()

    def release(self) -> None:
        """Give a slot back (the store hears of it in the background)."""
        if not self._held:
            raise RuntimeError(f"bulkhead {self._name!r} released more often than acquired")
        holder = self._held.pop()
        reg = self._registry
        reg.released(holder)

        async def release() -> None:
            await reg.store.bulkhead_release(self._name, holder)
            self._released.set()
            self._released = asyncio.Event()

        reg.background.spawn(release(), f"release:{self._name}")

    async def __aenter__(self) -> ClusterBulkhead:
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
        """A snapshot of this worker's slots and waiters (``active``: slots it holds)."""
        return BulkheadStatistics(
            name=self._name,
            max_concurrent=self._config.max_concurrent,
            max_queue=self._config.max_queue,
            active=len(self._held),
            queued=self._waiting,
            max_seen=self._max_seen,
            rejected=self._rejected,
            timed_out=self._timed_out,
        )


@final
class ClusterBulkheadRegistry:
    """One :class:`ClusterBulkhead` per pool name, created on first use; the counterpart
    of :class:`~stalwart.policies.BulkheadRegistry`.

    Args:
        store: where the slots are kept.
        clock: the runtime's clock (expiries, polls, renewals).
        worker_id: a prefix of this worker's holder ids (for operators reading the table).
        lease_seconds: how long a slot outlives its holder's last renewal; renewed every
            third of it while held.
        poll_min, poll_max: the first and the longest pause between polls for a slot.
        default, overrides: as for :class:`~stalwart.policies.BulkheadRegistry`.
    """

    __slots__ = (
        "_holders", "_registry", "_renewer", "background", "clock", "lease_seconds",
        "poll_max", "poll_min", "store", "worker_id",
    )

    def __init__(
        self,
        *,
        store: LimitStore,
        clock: Clock,
        worker_id: str,
        lease_seconds: float = 30.0,
        poll_min: float = 0.01,
        poll_max: float = 0.25,
        default: BulkheadConfig | None = None,
        overrides: Mapping[str, BulkheadConfig] | None = None,
    ) -> None:
        if not 0 < poll_min <= poll_max or lease_seconds <= 0:
            raise ConfigurationError("need 0 < poll_min <= poll_max and lease_seconds > 0")
        self.store = store
        self.clock = clock
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.poll_min = poll_min
        self.poll_max = poll_max
        self.background = _Background()
        self._holders: set[str] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._registry: KeyedRegistry[BulkheadConfig, ClusterBulkhead] = KeyedRegistry(
            lambda name, config: ClusterBulkhead(config, name=name, registry=self),
            default or BulkheadConfig(),
            overrides,
        )

    def get(self, name: str, config: BulkheadConfig | None = None) -> ClusterBulkhead:
        """The bulkhead for ``name``; ``config`` is used only if it is created now."""
        bulkhead = self._registry.lookup(name, config)
        assert bulkhead is not None  # there is always a default config
        return bulkhead

    def __contains__(self, name: object) -> bool:
        return name in self._registry

    def statistics(self) -> dict[str, BulkheadStatistics]:
        """A snapshot of every bulkhead created so far, by name."""
        return {name: bulkhead.statistics() for name, bulkhead in self._registry.items()}

    def holding(self, holder: str) -> None:
        """Note a slot taken by this worker: renew it until it is released."""
        self._holders.add(holder)
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(
                self._renew(), name="sw-bulkhead-renew")

    def released(self, holder: str) -> None:
        """Stop renewing ``holder``'s slot."""
        self._holders.discard(holder)

    async def _renew(self) -> None:
        while self._holders:
            await self.clock.sleep(self.lease_seconds / 3)
            holders = sorted(self._holders)
            if not holders:
                break
            try:
                kept = await self.store.bulkhead_renew(
                    holders, now=self.clock.now(), lease_seconds=self.lease_seconds)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("bulkheads: cannot renew %d slot(s) (%s)", len(holders), exc)
                continue
            lost = [h for h in holders if h not in kept and h in self._holders]
            if lost:
                self._holders.difference_update(lost)
                log.warning("bulkheads: %d slot(s) expired while their calls ran: %s",
                            len(lost), ", ".join(lost))

    async def aclose(self) -> None:
        """Stop renewing and wait for the releases still being sent to the store."""
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
        await self.background.drain()
