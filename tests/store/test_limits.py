"""Conformance of the cluster-wide limit operations (token buckets, bulkhead slots).

Every test runs on each backend of the ``store`` fixture; ``open_another`` is a second
worker on the same journal. Times are passed explicitly, so results are exact.
"""

from __future__ import annotations

import asyncio
import math
from typing import cast

import pytest

from stalwart.policies import LimitStore
from stalwart.store import BucketDraw, Store
from stalwart.store._limits import BucketState, plan_adjustment, plan_reservation

from .conftest import StoreFactory

T0 = 1_700_000_000.0


def limits(store: Store) -> LimitStore:
    assert isinstance(store, LimitStore)
    return cast(LimitStore, store)


def draw(key: str = "k", amount: float = 1.0, *, capacity: float = 2.0,
         rate: float = 1.0) -> BucketDraw:
    return BucketDraw(key, amount, capacity, rate)


# -- the pure core ---------------------------------------------------------------------


def test_a_missing_bucket_starts_full_and_debt_is_paid_off_at_the_refill_rate() -> None:
    """plan_reservation: a new bucket is full; beyond it, the wait is debt / rate."""
    res, states = plan_reservation([None], [draw(amount=3, capacity=4, rate=2)], now=T0,
                                   max_wait=None)
    assert (res.wait, res.granted, res.available) == (0.0, True, (1.0,))
    res, states = plan_reservation(states, [draw(amount=3, capacity=4, rate=2)], now=T0,
                                   max_wait=None)
    assert (res.wait, res.granted, res.available) == (1.0, True, (-2.0,))
    assert states == [BucketState(-2.0, T0)]


def test_a_lagging_clock_gets_no_refill_and_does_not_move_the_bucket_back() -> None:
    """A caller whose clock is behind the bucket's sees no refill; updated_at stays."""
    state = BucketState(0.0, T0 + 10)
    assert plan_adjustment(state, draw(amount=0), now=T0) == BucketState(0.0, T0 + 10)
    assert plan_adjustment(state, draw(amount=5), now=T0) == BucketState(2.0, T0 + 10)


# -- token buckets -----------------------------------------------------------------------


async def test_reservations_debit_the_bucket_and_queue_behind_the_debt(store: Store) -> None:
    """Within the capacity calls pass at once; beyond it each waits one refill period
    more than the one before (first come, first served)."""
    s = limits(store)
    waits = [(await s.rate_reserve([draw()], now=T0)).wait for _ in range(4)]
    assert waits == [0.0, 0.0, 1.0, 2.0]


async def test_the_bucket_refills_continuously_up_to_its_capacity(store: Store) -> None:
    """Tokens come back at refill_per_second, never above the capacity."""
    s = limits(store)
    await s.rate_reserve([draw(amount=2)], now=T0)
    res = await s.rate_reserve([draw(amount=0)], now=T0 + 1.5)
    assert res.available == (1.5,)
    res = await s.rate_reserve([draw(amount=0)], now=T0 + 100)
    assert res.available == (2.0,)


async def test_a_refused_reservation_takes_nothing(store: Store) -> None:
    """Beyond max_wait (or beyond the capacity: an infinite wait) nothing is debited."""
    s = limits(store)
    await s.rate_reserve([draw(amount=2)], now=T0)
    res = await s.rate_reserve([draw()], now=T0, max_wait=0.5)
    assert (res.wait, res.granted, res.available) == (1.0, False, (0.0,))
    res = await s.rate_reserve([draw(amount=3)], now=T0)
    assert (res.wait, res.granted) == (math.inf, False)
    res = await s.rate_reserve([draw()], now=T0, max_wait=1.0)
    assert (res.wait, res.granted, res.available) == (1.0, True, (-1.0,))


async def test_several_buckets_are_reserved_together_or_not_at_all(store: Store) -> None:
    """A request and a token bucket: the wait is the longer one; a refusal takes
    from neither."""
    s = limits(store)
    requests, tokens = draw("m#requests", capacity=10), draw("m#tokens", 80, capacity=100,
                                                            rate=10)
    res = await s.rate_reserve([requests, tokens], now=T0)
    assert (res.wait, res.available) == (0.0, (9.0, 20.0))
    res = await s.rate_reserve([requests, tokens], now=T0, max_wait=1.0)
    assert (res.wait, res.granted, res.available) == (6.0, False, (9.0, 20.0))
    res = await s.rate_reserve([requests, tokens], now=T0)
    assert (res.wait, res.granted, res.available) == (6.0, True, (8.0, -60.0))


async def test_adjustments_refund_up_to_the_capacity_and_charge_into_debt(store: Store) -> None:
    """rate_adjust adds (a refund, capped) or subtracts (a charge, possibly below 0)."""
    s = limits(store)
    await s.rate_reserve([draw(amount=2)], now=T0)
    assert await s.rate_adjust([draw(amount=5)], now=T0) == (2.0,)
    assert await s.rate_adjust([draw(amount=-3)], now=T0) == (-1.0,)
    assert (await s.rate_reserve([draw()], now=T0)).wait == 2.0


async def test_workers_on_one_journal_share_the_bucket(open_another: StoreFactory) -> None:
    """Reservations racing from two workers are serialized: none is lost, and together
    they queue exactly as one worker's would."""
    a, b = limits(await open_another()), limits(await open_another())
    bucket = draw(capacity=5)
    results = await asyncio.gather(*(
        (a if i % 2 else b).rate_reserve([bucket], now=T0) for i in range(20)))
    assert sorted(r.wait for r in results) == [0.0] * 5 + [float(n) for n in range(1, 16)]
    assert (await a.rate_reserve([draw(amount=0, capacity=5)], now=T0)).available == (-15.0,)


# -- bulkhead slots ----------------------------------------------------------------------


async def test_a_pool_grants_at_most_max_concurrent_slots(store: Store) -> None:
    """Slots go to distinct holders up to the limit; a release frees one."""
    s = limits(store)
    got = [await s.bulkhead_acquire("p", f"h{i}", max_concurrent=2, now=T0, lease_seconds=30)
           for i in range(3)]
    assert got == [True, True, False]
    assert await s.bulkhead_active("p", now=T0) == 2
    assert await s.bulkhead_active("other", now=T0) == 0
    await s.bulkhead_release("p", "h0")
    await s.bulkhead_release("p", "nobody")
    assert await s.bulkhead_acquire("p", "h2", max_concurrent=2, now=T0, lease_seconds=30)
    assert await s.bulkhead_active("p", now=T0) == 2


async def test_a_holder_acquiring_again_keeps_its_one_slot(store: Store) -> None:
    """Acquiring twice with one holder id is idempotent (a retried request)."""
    s = limits(store)
    for _ in range(2):
        assert await s.bulkhead_acquire("p", "h", max_concurrent=1, now=T0, lease_seconds=30)
    assert await s.bulkhead_active("p", now=T0) == 1


async def test_slots_of_a_holder_that_stopped_renewing_expire(store: Store) -> None:
    """A slot lasts lease_seconds past its last renewal; then it is free for others."""
    s = limits(store)
    assert await s.bulkhead_acquire("p", "dead", max_concurrent=1, now=T0, lease_seconds=10)
    assert not await s.bulkhead_acquire("p", "new", max_concurrent=1, now=T0 + 10,
                                        lease_seconds=10)
    assert await s.bulkhead_active("p", now=T0 + 10.5) == 0
    assert await s.bulkhead_acquire("p", "new", max_concurrent=1, now=T0 + 10.5,
                                    lease_seconds=10)


async def test_renewal_extends_held_slots_and_reports_the_lost_ones(store: Store) -> None:
    """bulkhead_renew keeps renewed slots alive and names only the holders it found."""
    s = limits(store)
    assert await s.bulkhead_acquire("p", "a", max_concurrent=2, now=T0, lease_seconds=10)
    assert await s.bulkhead_acquire("q", "b", max_concurrent=2, now=T0, lease_seconds=10)
    assert await s.bulkhead_renew(["a", "b", "gone"], now=T0 + 8, lease_seconds=10) == {"a", "b"}
    assert await s.bulkhead_renew([], now=T0 + 8, lease_seconds=10) == set()
    assert await s.bulkhead_active("p", now=T0 + 15) == 1
    assert await s.bulkhead_active("q", now=T0 + 15) == 1
    assert await s.bulkhead_acquire("p", "c", max_concurrent=1, now=T0 + 17,
                                    lease_seconds=10) is False
    assert await s.bulkhead_acquire("p", "c", max_concurrent=1, now=T0 + 18.5,
                                    lease_seconds=10) is True


async def test_racing_workers_never_exceed_the_pool(open_another: StoreFactory) -> None:
    """Thirty acquires racing from three workers for five slots: exactly five win."""
    stores = [limits(await open_another()) for _ in range(3)]
    got = await asyncio.gather(*(
        stores[i % 3].bulkhead_acquire("p", f"h{i}", max_concurrent=5, now=T0,
                                       lease_seconds=30) for i in range(30)))
    assert sum(got) == 5
    assert await stores[0].bulkhead_active("p", now=T0) == 5


async def test_limits_survive_reopening_the_journal(open_another: StoreFactory) -> None:
    """Buckets and slots are kept in the journal: a worker opened later sees them."""
    first = limits(await open_another())
    await first.rate_reserve([draw(amount=2)], now=T0)
    await first.bulkhead_acquire("p", "h", max_concurrent=1, now=T0, lease_seconds=30)
    later = limits(await open_another())
    assert (await later.rate_reserve([draw(amount=0)], now=T0)).available == (0.0,)
    assert await later.bulkhead_active("p", now=T0) == 1


def test_the_embedded_stores_keep_limits_local_unless_asked(store: Store) -> None:
    """auto mode: PostgreSQL shares limits by default, SQLite and memory do not."""
    expected = type(store).__name__ == "PostgresStore"
    assert limits(store).cluster_limits_default is expected


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf])
def test_a_bucket_needs_a_positive_finite_capacity_and_rate(bad: float) -> None:
    """BucketDraw rejects a capacity or refill rate that is not > 0 and finite."""
    from stalwart.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        BucketDraw("k", 1, bad, 1)
    with pytest.raises(ConfigurationError):
        BucketDraw("k", 1, 1, bad)


async def test_a_postgres_journal_of_schema_1_gains_the_limit_tables(pg_url: str) -> None:
    """Opening a journal of schema 1 (before cluster limits) migrates it to the current
    version: the limit tables appear, and the runs already there stay."""
    import psycopg

    from stalwart.store._postgres import PostgresStore
    from stalwart.store._postgres_schema import SCHEMA_VERSION

    store = PostgresStore(pg_url)
    await store.open()
    await store.create_run(run_id="r", workflow="wf", input="[]", now=T0)
    await store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TABLE stalwart_rate_buckets, stalwart_bulkhead_slots")
        # and the blobs of schema 5, the blackboards of schema 4, the checksums of 3
        conn.execute("ALTER TABLE stalwart_events DROP COLUMN payload_ref")
        conn.execute("DROP TABLE stalwart_blobs")
        conn.execute("ALTER TABLE stalwart_runs DROP COLUMN event_head, DROP COLUMN "
                     "run_digest, DROP COLUMN outcome_digest")
        conn.execute("ALTER TABLE stalwart_events DROP COLUMN digest")
        conn.execute("DROP TABLE stalwart_board_entries, stalwart_board_ops")
        conn.execute("UPDATE stalwart_meta SET value = '1' WHERE key = 'schema_version'")
    store = PostgresStore(pg_url)
    await store.open()
    try:
        assert (await store.rate_reserve([draw()], now=T0)).available == (1.0,)
        assert await store.bulkhead_acquire("p", "h", max_concurrent=1, now=T0,
                                            lease_seconds=1)
        assert await store.get_run("r") is not None
        assert [e.kind for e in await store.load_events("r")] == ["run_created"]
    finally:
        await store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute("SELECT value FROM stalwart_meta WHERE key = 'schema_version'"
                           ).fetchone()
    assert row == (str(SCHEMA_VERSION),)


async def test_limits_view_shows_buckets_refilled_and_unexpired_slots(store: Store) -> None:
    """limits_view (the dashboard's): each bucket's tokens refilled to the moment of
    reading by the reservation rule, each pool's unexpired slots and since when."""
    from stalwart.store._limits import LimitsReader

    if not isinstance(store, LimitsReader):
        pytest.skip("the in-memory store keeps no bucket configuration to show")
    lim = limits(store)
    await lim.rate_reserve([draw("sim:a", 2, capacity=4, rate=0.5)], now=T0)
    assert await lim.bulkhead_acquire("tool:x", "w1:1", max_concurrent=2, now=T0,
                                      lease_seconds=10)
    assert await lim.bulkhead_acquire("tool:x", "w2:1", max_concurrent=2, now=T0 + 1,
                                      lease_seconds=1)
    view = await store.limits_view(now=T0 + 3)  # w2's slot expired at T0 + 2
    (bucket,) = view.buckets
    assert (bucket.key, bucket.tokens, bucket.capacity, bucket.refill_per_second) == (
        "sim:a", 3.5, 4.0, 0.5)
    (pool,) = view.pools
    assert (pool.pool, pool.in_use, pool.holders, pool.oldest) == ("tool:x", 1, ("w1:1",), T0)
    empty = await store.limits_view(now=T0 + 20)
    assert empty.pools == () and empty.buckets[0].tokens == 4.0  # full again, capped
