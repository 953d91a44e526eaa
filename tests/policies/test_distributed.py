"""Cluster-wide rate limiters and bulkheads, in virtual time over one MemoryStore.

Two registries on one :class:`MemoryStore` are two workers sharing a journal; a
FakeClock with autojump makes every wait exact.
"""

from __future__ import annotations

import asyncio

import pytest

import stalwart as sw
from stalwart import Runtime
from stalwart._clock import FakeClock
from stalwart.errors import BulkheadFullError, ConfigurationError, ThrottledError
from stalwart.policies import (
    BulkheadConfig,
    BulkheadRegistry,
    ClusterBulkheadRegistry,
    ClusterRateLimiterRegistry,
    RateLimit,
    RateLimiterRegistry,
    deadline_scope,
)
from stalwart.policies._distributed import shared_limit_store
from stalwart.store import SQLiteStore
from stalwart.testing import MemoryStore

ONE_PER_SECOND = RateLimit(requests_per_minute=60, burst=1)


def workers(n: int, clock: FakeClock, store: MemoryStore | None = None
            ) -> list[ClusterRateLimiterRegistry]:
    shared = store or MemoryStore()
    return [ClusterRateLimiterRegistry(store=shared, clock=clock) for _ in range(n)]


def bulkheads(n: int, clock: FakeClock, *, lease_seconds: float = 30.0,
              store: MemoryStore | None = None) -> list[ClusterBulkheadRegistry]:
    shared = store or MemoryStore()
    return [ClusterBulkheadRegistry(store=shared, clock=clock, worker_id=f"w{i}",
                                    lease_seconds=lease_seconds) for i in range(n)]


# -- rate limits ---------------------------------------------------------------------------


async def test_two_workers_share_one_quota() -> None:
    """Calls from two workers under 60/min (burst 1) start exactly one second apart;
    with in-process limiters each worker would get the whole quota."""
    clock = FakeClock(autojump=True)
    regs = workers(2, clock)
    t0 = clock.now()
    started: list[float] = []

    async def call(i: int) -> None:
        limiter = regs[i % 2].get("openai:m", ONE_PER_SECOND)
        assert limiter is not None
        await limiter.acquire()
        started.append(clock.now() - t0)

    await asyncio.gather(*(call(i) for i in range(6)))
    assert sorted(started) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]

    local = [RateLimiterRegistry(clock=clock) for _ in range(2)]
    t1 = clock.now()
    alone: list[float] = []

    async def local_call(i: int) -> None:
        limiter = local[i % 2].get("openai:m", ONE_PER_SECOND)
        assert limiter is not None
        await limiter.acquire()
        alone.append(clock.now() - t1)

    await asyncio.gather(*(local_call(i) for i in range(6)))
    assert sorted(alone) == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]


async def test_a_wait_beyond_max_wait_is_refused_and_takes_nothing() -> None:
    """ThrottledError with the computed retry_after; the refused call leaves the
    cluster's bucket as it was."""
    clock = FakeClock(autojump=True)
    (reg,) = workers(1, clock)
    limiter = reg.get("k", RateLimit(requests_per_minute=60, burst=1, max_wait=0.5))
    assert limiter is not None
    assert await limiter.acquire() == 0.0
    with pytest.raises(ThrottledError) as info:
        await limiter.acquire()
    assert info.value.retry_after == 1.0
    assert info.value.retryable
    await clock.sleep(1.0)
    assert await limiter.acquire() == 0.0
    stats = limiter.statistics()
    assert (stats.acquired, stats.throttled) == (2, 1)
    assert stats.requests_available == 0.0


async def test_more_tokens_than_a_minute_holds_are_refused_for_good() -> None:
    """An estimate above the per-minute token quota can never pass: not retryable."""
    clock = FakeClock(autojump=True)
    (reg,) = workers(1, clock)
    limiter = reg.get("k", RateLimit(tokens_per_minute=100))
    assert limiter is not None
    with pytest.raises(ThrottledError) as info:
        await limiter.acquire(estimated_tokens=101)
    assert not info.value.retryable
    with pytest.raises(ConfigurationError):
        await limiter.acquire(estimated_tokens=-1)


async def test_a_wait_that_outlasts_the_deadline_is_refused() -> None:
    """Inside a deadline scope, a wait reaching the deadline fails at once."""
    clock = FakeClock(autojump=True)
    (reg,) = workers(1, clock)
    limiter = reg.get("k", ONE_PER_SECOND)
    assert limiter is not None
    await limiter.acquire()
    t0 = clock.now()
    async with deadline_scope(1.0, clock=clock):
        with pytest.raises(ThrottledError, match="deadline"):
            await limiter.acquire()
    assert clock.now() == t0
    async with deadline_scope(1.5, clock=clock):
        assert await limiter.acquire() == 1.0


async def test_a_caller_cancelled_while_waiting_gives_its_reservation_back() -> None:
    """Cancelling a waiting acquire refunds the cluster's bucket."""
    clock = FakeClock()  # time stands still unless told to move
    (reg,) = workers(1, clock)
    limiter = reg.get("k", ONE_PER_SECOND)
    assert limiter is not None
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    while clock.pending_sleeps == 0:  # it reserved and sleeps off the debt
        await asyncio.sleep(0)
    assert limiter.statistics().requests_available == -1.0
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await reg.aclose()
    stats = limiter.statistics()
    assert (stats.requests_available, stats.acquired, stats.waiting) == (0.0, 1, 0)


async def test_settle_charges_the_cluster_for_tokens_used_beyond_the_estimate() -> None:
    """settle() sends the difference to the store: another worker then waits for it."""
    clock = FakeClock(autojump=True)
    a, b = workers(2, clock)
    config = RateLimit(tokens_per_minute=60)
    la, lb = a.get("k", config), b.get("k", config)
    assert la is not None and lb is not None
    await la.acquire(estimated_tokens=10)
    la.settle(10, 70)
    la.settle(5, 5)  # no difference: nothing to send
    await a.aclose()
    assert await lb.acquire(estimated_tokens=10) == 20.0


# -- bulkheads -----------------------------------------------------------------------------


async def test_three_workers_never_exceed_the_pool() -> None:
    """Twelve calls from three workers into a pool of 2: never more than 2 at once,
    and all of them run."""
    clock = FakeClock(autojump=True)
    store = MemoryStore()
    regs = bulkheads(3, clock, store=store)
    running, peak, done = 0, 0, 0

    async def call(i: int) -> None:
        nonlocal running, peak, done
        async with regs[i % 3].get("research", BulkheadConfig(max_concurrent=2)):
            running += 1
            peak = max(peak, running, await store.bulkhead_active("research",
                                                                  now=clock.now()))
            await clock.sleep(1.0)
            running -= 1
            done += 1

    await asyncio.gather(*(call(i) for i in range(12)))
    assert (peak, done) == (2, 12)
    for reg in regs:
        await reg.aclose()
    assert await store.bulkhead_active("research", now=clock.now()) == 0
    stats = regs[0].statistics()["research"]
    assert (stats.active, stats.queued, stats.max_concurrent) == (0, 0, 2)


async def test_a_full_local_queue_rejects_at_once() -> None:
    """With max_queue waiters already in this worker, the next caller fails at once."""
    clock = FakeClock(autojump=True)
    (reg,) = bulkheads(1, clock)
    bh = reg.get("p", BulkheadConfig(max_concurrent=1, max_queue=1))
    await bh.acquire()
    waiter = asyncio.create_task(bh.acquire())
    for _ in range(1000):  # until the waiter is queued (it polls the store with backoff)
        if bh.statistics().queued == 1:
            break
        await asyncio.sleep(0)
    else:
        raise AssertionError("the second caller never queued")
    with pytest.raises(BulkheadFullError) as info:
        await bh.acquire()
    assert info.value.reason == "queue_full"
    bh.release()
    await waiter  # the released slot reaches the waiter
    bh.release()
    await reg.aclose()
    stats = bh.statistics()
    assert (stats.rejected, stats.max_seen, stats.active) == (1, 1, 0)
    with pytest.raises(RuntimeError):
        bh.release()


async def test_a_waiter_gives_up_exactly_at_the_queue_timeout() -> None:
    """No slot within queue_timeout: BulkheadFullError at that virtual instant."""
    clock = FakeClock(autojump=True)
    a, b = bulkheads(2, clock)
    config = BulkheadConfig(max_concurrent=1, queue_timeout=2.0)
    await a.get("p", config).acquire()
    t0 = clock.monotonic()
    with pytest.raises(BulkheadFullError) as info:
        await b.get("p", config).acquire()
    assert info.value.reason == "queue_timeout"
    assert clock.monotonic() - t0 == pytest.approx(2.0)
    assert b.get("p").statistics().timed_out == 1
    await a.aclose()


async def test_the_slot_of_a_dead_worker_frees_itself_after_its_lease() -> None:
    """A worker that stops renewing (it died) loses its slot lease_seconds later."""
    clock = FakeClock(autojump=True)
    dead, live = bulkheads(2, clock, lease_seconds=30.0)
    config = BulkheadConfig(max_concurrent=1)
    await dead.get("p", config).acquire()
    await dead.aclose()  # its renewals stop, as in a SIGKILLed process
    t0 = clock.now()
    await live.get("p", config).acquire()
    assert 30.0 < clock.now() - t0 <= 30.0 + live.poll_max + 1e-6
    await live.aclose()


async def test_a_long_call_keeps_its_slot_by_renewing_it() -> None:
    """A call outliving the slot lease keeps the slot: its worker renews it."""
    clock = FakeClock(autojump=True)
    holder, other = bulkheads(2, clock, lease_seconds=3.0)
    config = BulkheadConfig(max_concurrent=1, queue_timeout=20.0)
    await holder.get("p", config).acquire()
    with pytest.raises(BulkheadFullError):
        await other.get("p", config).acquire()
    holder.get("p").release()
    await holder.aclose()
    await other.get("p", config).acquire()
    await other.aclose()


# -- the runtime's choice ------------------------------------------------------------------


async def test_the_runtime_keeps_limits_where_the_store_suggests(tmp_path: object) -> None:
    """auto: local on the embedded stores; cluster when asked; a store without limits
    refuses cluster mode."""
    clock = FakeClock(autojump=True)
    store = MemoryStore()
    local, shared = Runtime(store, clock=clock), Runtime(store, clock=clock, limits="cluster")
    assert local.limits == "local" and isinstance(local.bulkheads, BulkheadRegistry)
    assert shared.limits == "cluster"
    assert isinstance(shared.bulkheads, ClusterBulkheadRegistry)
    assert isinstance(shared.rate_limiters, ClusterRateLimiterRegistry)
    for rt in (local, shared):
        await rt.close()
    assert shared_limit_store("auto", SQLiteStore(":memory:")) is None
    assert shared_limit_store("local", store) is None
    with pytest.raises(ConfigurationError, match="cluster"):
        shared_limit_store("cluster", object())
    assert shared_limit_store("auto", object()) is None
    with pytest.raises(ConfigurationError, match="limits must be"):
        shared_limit_store("global", store)


def test_postgres_shares_limits_by_default() -> None:
    """auto on a PostgreSQL store means cluster-wide limits (no connection needed)."""
    pytest.importorskip("psycopg")
    from stalwart.store._postgres import PostgresStore

    pg = PostgresStore("postgresql://nobody@127.0.0.1:1/none")
    assert shared_limit_store("auto", pg) is pg


async def test_runs_on_two_runtimes_share_a_tool_rate_limit() -> None:
    """Two runtimes (workers) on one store with limits='cluster': eight tool calls under
    60/min with burst 1 start exactly one virtual second apart, whoever runs them."""
    clock = FakeClock(autojump=True)
    store = MemoryStore()
    started: list[float] = []

    async def ping(call: sw.ToolCall) -> str:
        started.append(clock.now())
        return call.idempotency_key

    tool = sw.Tool(ping, policy=sw.Policy(rate_limit=ONE_PER_SECOND))
    apps = [Runtime(store, clock=clock, limits="cluster", concurrency=4) for _ in range(2)]

    @apps[0].workflow
    async def wf(ctx: sw.Context) -> str:
        return await ctx.tool(tool)

    apps[1].register(wf)
    t0 = clock.now()
    async with apps[0], apps[1]:
        handles = [await apps[i % 2].start(wf) for i in range(8)]
        for h in handles:
            await h.result(timeout=60)
    assert sorted(t - t0 for t in started) == [float(n) for n in range(8)]


async def test_a_429s_quota_lowers_a_cluster_limiters_reservations() -> None:
    """adapt(): a 429 reporting 6/min makes this worker's calls 10 s apart (was 1 s)."""
    clock = FakeClock(autojump=True)
    (reg,) = workers(1, clock)
    limiter = reg.get("openai:m", ONE_PER_SECOND)
    assert limiter is not None
    limiter.adapt(sw.ProviderQuota(requests_limit=6, tokens_limit=100))
    assert limiter.statistics().requests_per_minute == 6.0
    assert limiter.statistics().tokens_per_minute is None
    t0 = clock.monotonic()
    await limiter.acquire()
    await limiter.acquire()
    assert clock.monotonic() - t0 == 10.0
