"""The Store protocol, checked against every backend (see ``conftest.py``).

Times are explicit ``now`` values, as the engine passes them from its clock; nothing
here sleeps. ``A`` and ``B`` are two workers; ``B`` takes over runs whose lease ``A``
let expire, which makes ``A``'s lease stale: everything ``A`` then writes is fenced off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from stalwart.errors import ConfigurationError, LeaseLostError, RunNotFoundError, StoreError
from stalwart.store import (
    EventKind,
    Finish,
    Lease,
    NewEvent,
    Owner,
    RunRecord,
    RunStatus,
    Store,
    WorkerRecord,
)
from stalwart.store._base import CLEANUP_CLOSED, CLEANUP_OPENED

StoreFactory = Callable[[], Awaitable[Store]]

T0 = 1_000.0
LEASE = 30.0
A = Owner(id="worker-a", host="host-a", pid=101)
B = Owner(id="worker-b", host="host-b", pid=202)


async def new_run(store: Store, run_id: str, *, workflow: str = "wf", now: float = T0,
                  input: str = "[]") -> RunRecord:
    rec, created = await store.create_run(run_id=run_id, workflow=workflow, input=input,
                                          now=now)
    assert created
    return rec


async def claim_one(store: Store, run_id: str, owner: Owner = A, *, now: float = T0,
                    lease_seconds: float = LEASE) -> Lease:
    leases = await store.claim(owner, now=now, lease_seconds=lease_seconds, limit=1,
                               run_id=run_id)
    assert [lease.run_id for lease in leases] == [run_id]
    return leases[0]


async def running(store: Store, run_id: str, owner: Owner = A, *, now: float = T0,
                  lease_seconds: float = LEASE) -> Lease:
    await new_run(store, run_id, now=now)
    return await claim_one(store, run_id, owner, now=now, lease_seconds=lease_seconds)


async def taken_over(store: Store, run_id: str) -> tuple[Lease, Lease]:
    """A run claimed by A whose lease expired and was claimed by B: (stale, current)."""
    stale = await running(store, run_id, A, lease_seconds=10)
    current = await claim_one(store, run_id, B, now=T0 + 20)
    assert current.token > stale.token
    return stale, current


async def get(store: Store, run_id: str) -> RunRecord:
    rec = await store.get_run(run_id)
    assert rec is not None
    return rec


async def ready_ids(store: Store, owner: Owner = B, *, now: float, limit: int = 100,
                    **kw: object) -> list[str]:
    leases = await store.claim(owner, now=now, lease_seconds=LEASE, limit=limit, **kw)  # type: ignore[arg-type]
    return [lease.run_id for lease in leases]


def step(step_id: str, payload: str = "1") -> NewEvent:
    return NewEvent(EventKind.STEP_COMPLETED, step_id=step_id, name="f", payload=payload)


# -- runs ------------------------------------------------------------------------------


async def test_create_run_records_a_pending_run_and_its_created_event(store: Store) -> None:
    """A new run is pending, unleased, with its input and a RUN_CREATED event at seq 1."""
    rec, created = await store.create_run(run_id="r1", workflow="wf", input='{"x": 1}',
                                          now=T0, workflow_ref="app:wf")
    assert created
    assert (rec.run_id, rec.workflow, rec.workflow_ref, rec.status, rec.input) == (
        "r1", "wf", "app:wf", RunStatus.PENDING, '{"x": 1}')
    assert (rec.result, rec.error, rec.parent_run_id, rec.parent_step_id) == (None,) * 4
    assert (rec.created_at, rec.updated_at, rec.wake_at) == (T0, T0, None)
    assert (rec.lease_owner, rec.lease_expires_at, rec.cancel_requested) == (None, None, False)
    assert not rec.is_terminal
    assert await get(store, "r1") == rec
    [ev] = await store.load_events("r1")
    assert (ev.run_id, ev.seq, ev.kind, ev.name, ev.payload, ev.created_at) == (
        "r1", 1, EventKind.RUN_CREATED, "wf", '{"x": 1}', T0)


async def test_create_run_is_idempotent_on_run_id(store: Store) -> None:
    """Creating a run id again returns the existing run untouched, with created=False."""
    first, _ = await store.create_run(run_id="r1", workflow="wf", input="[1]", now=T0)
    again, created = await store.create_run(run_id="r1", workflow="other", input="[2]",
                                            now=T0 + 5)
    assert not created
    assert again == first
    assert len(await store.load_events("r1")) == 1


async def test_get_run_of_an_unknown_id_is_none(store: Store) -> None:
    """get_run returns None for a run that does not exist, and it has no events."""
    assert await store.get_run("nope") is None
    assert await store.load_events("nope") == []


async def test_list_runs_is_newest_first_filtered_and_limited(store: Store) -> None:
    """list_runs orders by creation, newest first (ties: last created first), and filters."""
    await new_run(store, "old", now=T0)
    await new_run(store, "mid-1", now=T0 + 1)
    await new_run(store, "mid-2", now=T0 + 1)
    await new_run(store, "new", now=T0 + 2)
    await claim_one(store, "mid-1", now=T0 + 3)
    assert [r.run_id for r in await store.list_runs()] == ["new", "mid-2", "mid-1", "old"]
    assert [r.run_id for r in await store.list_runs(limit=2)] == ["new", "mid-2"]
    pending = await store.list_runs(status=RunStatus.PENDING)
    assert [r.run_id for r in pending] == ["new", "mid-2", "old"]
    assert [r.run_id for r in await store.list_runs(status=RunStatus.RUNNING)] == ["mid-1"]
    assert await store.list_runs(status=RunStatus.COMPLETED) == []


async def test_list_runs_filters_by_workflow_and_creation_time(store: Store) -> None:
    """list_runs(workflow=, created_before=, created_since=): the dashboard's filters and
    its pages (runs created before the last one shown); each alone and together."""
    for i, wf in enumerate(["a", "b", "a", "b"]):
        await store.create_run(run_id=f"r{i}", workflow=wf, input="[]", now=T0 + i)
    ids = lambda runs: [r.run_id for r in runs]  # noqa: E731
    assert ids(await store.list_runs(workflow="a")) == ["r2", "r0"]
    assert ids(await store.list_runs(created_before=T0 + 2)) == ["r1", "r0"]
    assert ids(await store.list_runs(created_since=T0 + 2)) == ["r3", "r2"]
    assert ids(await store.list_runs(workflow="b", created_before=T0 + 3,
                                     created_since=T0 + 1)) == ["r1"]
    assert await store.list_runs(workflow="nope") == []


async def test_list_runs_filters_by_parent(store: Store) -> None:
    """list_runs(parent_run_id=...) returns that run's children only."""
    parent = await running(store, "p")
    for i in range(2):
        await store.create_run(run_id=f"c{i}", workflow="child", input="[]", now=T0 + i,
                               parent=parent, parent_step_id=str(i))
    await new_run(store, "unrelated", now=T0 + 5)
    assert [r.run_id for r in await store.list_runs(parent_run_id="p")] == ["c1", "c0"]


async def test_events_are_appended_in_order_with_consecutive_seq(store: Store) -> None:
    """Appended events keep their order and fields; seq continues across appends."""
    lease = await running(store, "r1")
    await store.append(lease, [step("0", "a"), NewEvent(EventKind.TIMER_STARTED, "1", "t")],
                       now=T0 + 1)
    await store.append(lease, [step("2", "b")], now=T0 + 2)
    await store.append(lease, [], now=T0 + 3)
    events = await store.load_events("r1")
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert [e.kind for e in events] == [EventKind.RUN_CREATED, EventKind.RUN_CLAIMED,
                                        EventKind.STEP_COMPLETED, EventKind.TIMER_STARTED,
                                        EventKind.STEP_COMPLETED]
    assert [(e.step_id, e.name, e.payload, e.created_at) for e in events[2:]] == [
        ("0", "f", "a", T0 + 1), ("1", "t", None, T0 + 1), ("2", "f", "b", T0 + 2)]
    assert {e.run_id for e in events} == {"r1"}


async def test_a_second_outcome_for_a_recorded_step_is_rejected(store: Store) -> None:
    """A step has one recorded outcome: a second append of it fails and writes nothing."""
    lease = await running(store, "r1")
    await store.append(lease, [step("0", "first")], now=T0)
    with pytest.raises(StoreError):
        await store.append(lease, [step("1"), step("0", "second")], now=T0 + 1)
    payloads = [e.payload for e in await store.load_events("r1")
                if e.kind == EventKind.STEP_COMPLETED]
    assert payloads == ["first"]


# -- fencing ---------------------------------------------------------------------------


async def test_stale_lease_append_raises_and_writes_nothing(store: Store) -> None:
    """After a takeover the old owner's append, even with finish, is rejected whole."""
    stale, current = await taken_over(store, "r1")
    before_events, before_run = await store.load_events("r1"), await get(store, "r1")
    with pytest.raises(LeaseLostError):
        await store.append(stale, [step("0")], now=T0 + 21)
    with pytest.raises(LeaseLostError):
        await store.append(stale, [step("0")], now=T0 + 21,
                           finish=Finish(RunStatus.COMPLETED, result="1"))
    assert await store.load_events("r1") == before_events
    assert await get(store, "r1") == before_run
    await store.append(current, [step("0")], now=T0 + 22)


async def test_the_same_owner_reclaiming_its_expired_lease_fences_its_old_lease(
        store: Store) -> None:
    """Owner A's lease expires and A claims the run again (its loop stalled, or its
    heartbeats failed): owner and status still match the old lease, only the token
    tells them apart, and every write with the old one is refused."""
    stale = await running(store, "r1", A, lease_seconds=10)
    current = await claim_one(store, "r1", A, now=T0 + 20)
    assert (current.owner, current.token) == (stale.owner, stale.token + 1)
    await store.send_signal("r1", "go", '"x"', now=T0 + 20)
    before = await store.load_events("r1")
    with pytest.raises(LeaseLostError):
        await store.append(stale, [step("1")], now=T0 + 21)
    with pytest.raises(LeaseLostError):
        await store.append(stale, [], now=T0 + 21, finish=Finish(RunStatus.COMPLETED,
                                                                  result="1"))
    with pytest.raises(LeaseLostError):
        await store.take_signal(stale, "go", "2", now=T0 + 21)
    with pytest.raises(LeaseLostError):
        await store.create_run(
            run_id="c", workflow="child", input="[]", now=T0 + 21, parent=stale,
            parent_step_id="3", parent_events=[NewEvent(EventKind.CHILD_STARTED, "3",
                                                        "child", "c")])
    assert await store.renew([stale], now=T0 + 21, lease_seconds=LEASE) == {"r1": None}
    assert await store.load_events("r1") == before
    assert await store.get_run("c") is None
    assert (await get(store, "r1")).lease_token == current.token
    await store.append(current, [step("1")], now=T0 + 22)
    assert await store.take_signal(current, "go", "2", now=T0 + 22) == '"x"'


async def test_forged_or_released_lease_is_rejected(store: Store) -> None:
    """A lease with another token or owner, or one released by finish, cannot write."""
    lease = await running(store, "r1")
    for forged in (Lease("r1", lease.owner, lease.token + 1, lease.expires_at),
                   Lease("r1", "someone", lease.token, lease.expires_at),
                   Lease("missing", lease.owner, lease.token, lease.expires_at)):
        with pytest.raises(LeaseLostError):
            await store.append(forged, [step("0")], now=T0)
    await store.append(lease, [], now=T0, finish=Finish(RunStatus.COMPLETED, result="1"))
    with pytest.raises(LeaseLostError):
        await store.append(lease, [step("0")], now=T0 + 1)
    assert [e.kind for e in await store.load_events("r1")][-1] == EventKind.RUN_CLAIMED


async def test_stale_lease_take_signal_raises_and_leaves_the_signal(store: Store) -> None:
    """The old owner cannot consume a signal; the current owner still gets it."""
    stale, current = await taken_over(store, "r1")
    await store.send_signal("r1", "go", '"x"', now=T0 + 21)
    before = await store.load_events("r1")
    with pytest.raises(LeaseLostError):
        await store.take_signal(stale, "go", "0", now=T0 + 22)
    assert await store.load_events("r1") == before
    assert await store.take_signal(current, "go", "0", now=T0 + 23) == '"x"'


async def test_stale_lease_renew_returns_none_and_changes_nothing(store: Store) -> None:
    """Renewing a stale lease reports it lost and leaves the current lease's expiry alone."""
    stale, current = await taken_over(store, "r1")
    before = await get(store, "r1")
    renewed = await store.renew([stale, current], now=T0 + 25, lease_seconds=LEASE)
    assert renewed["r1"] is None or renewed["r1"].token == current.token
    only_stale = await store.renew([stale], now=T0 + 26, lease_seconds=LEASE)
    assert only_stale == {"r1": None}
    assert (await get(store, "r1")).lease_token == before.lease_token


async def test_renew_extends_a_live_lease(store: Store) -> None:
    """renew moves the expiry to now + lease_seconds; the run stays unclaimable until then."""
    lease = await running(store, "r1", lease_seconds=10)
    out = await store.renew([lease], now=T0 + 8, lease_seconds=10)
    renewed = out["r1"]
    assert renewed == Lease("r1", A.id, lease.token, T0 + 18)
    assert (await get(store, "r1")).lease_expires_at == T0 + 18
    assert await ready_ids(store, now=T0 + 15) == []
    await store.append(renewed, [step("0")], now=T0 + 15)
    assert await ready_ids(store, now=T0 + 19) == ["r1"]


async def test_create_child_with_a_stale_parent_lease_creates_nothing(store: Store) -> None:
    """create_run fenced by a stale parent lease raises and creates neither run nor event."""
    stale, _ = await taken_over(store, "p")
    before = await store.load_events("p")
    with pytest.raises(LeaseLostError):
        await store.create_run(
            run_id="c", workflow="child", input="[]", now=T0 + 21, parent=stale,
            parent_step_id="0",
            parent_events=[NewEvent(EventKind.CHILD_STARTED, "0", "child", "c")])
    assert await store.get_run("c") is None
    assert await store.load_events("p") == before


# -- claims ----------------------------------------------------------------------------


async def test_claim_takes_a_pending_run_once(store: Store) -> None:
    """A pending run is claimed by one worker, with a lease, a token and a RUN_CLAIMED event."""
    await new_run(store, "r1")
    [lease] = await store.claim(A, now=T0 + 1, lease_seconds=LEASE, limit=10)
    assert (lease.run_id, lease.owner, lease.expires_at) == ("r1", A.id, T0 + 1 + LEASE)
    assert await store.claim(A, now=T0 + 2, lease_seconds=LEASE, limit=10) == []
    assert await store.claim(B, now=T0 + 2, lease_seconds=LEASE, limit=10) == []
    rec = await get(store, "r1")
    assert (rec.status, rec.lease_owner, rec.lease_token, rec.lease_expires_at) == (
        RunStatus.RUNNING, A.id, lease.token, T0 + 1 + LEASE)
    assert (rec.owner_host, rec.owner_pid) == (A.host, A.pid)
    ev = (await store.load_events("r1"))[-1]
    assert (ev.seq, ev.kind, ev.name) == (2, EventKind.RUN_CLAIMED, A.id)


async def test_claim_takes_the_oldest_ready_runs_up_to_limit(store: Store) -> None:
    """claim returns at most ``limit`` leases, oldest runs first."""
    for i in range(5):
        await new_run(store, f"r{i}", now=T0 + i)
    leases = await store.claim(A, now=T0 + 10, lease_seconds=LEASE, limit=3)
    assert [lease.run_id for lease in leases] == ["r0", "r1", "r2"]
    assert await ready_ids(store, now=T0 + 10) == ["r3", "r4"]


async def test_a_dead_owners_run_is_claimed_before_a_backlog(store: Store) -> None:
    """A claim with room for one run takes the dead owner's (a steal entry) before any
    of an older backlog of pending runs: it is the oldest work (issue 13.8)."""
    lease = await running(store, "taken", now=T0 + 50, lease_seconds=1_000)
    for i in range(5):
        await new_run(store, f"pending-{i}", now=T0 + i)
    [first] = await store.claim(B, now=T0 + 60, lease_seconds=LEASE, limit=1,
                                steal=[("taken", A.id, lease.token)])
    assert first.run_id == "taken"
    assert await ready_ids(store, now=T0 + 61, limit=2) == ["pending-0", "pending-1"]


async def test_an_expired_lease_is_claimed_before_older_pending_runs(store: Store) -> None:
    """Runs whose lease expired (an owner dead on any host) come before pending runs,
    even older ones; then the oldest pending."""
    for i in range(3):
        await new_run(store, f"pending-{i}", now=T0 + i)
    await running(store, "expired", now=T0 + 10, lease_seconds=5)
    leases = await store.claim(B, now=T0 + 20, lease_seconds=LEASE, limit=2)
    assert [x.run_id for x in leases] == ["expired", "pending-0"]


async def test_concurrent_claimers_never_share_a_run(store: Store,
                                                     open_another: StoreFactory) -> None:
    """Claims racing from two store instances split the ready runs without overlap."""
    other = await open_another()
    for i in range(40):
        await new_run(store, f"r{i:02}", now=T0 + i / 100)
    owners = [Owner(id=f"w{i}", host="h", pid=i) for i in range(8)]
    stores = [store, other]
    results = await asyncio.gather(*(
        stores[i % 2].claim(o, now=T0 + 1, lease_seconds=LEASE, limit=7)
        for i, o in enumerate(owners)))
    claimed = [lease.run_id for leases in results for lease in leases]
    assert len(claimed) == len(set(claimed)) == 40
    for leases, o in zip(results, owners, strict=True):
        for lease in leases:
            assert (await get(store, lease.run_id)).lease_owner == o.id


async def test_a_run_with_a_live_lease_is_not_claimable(store: Store) -> None:
    """A running run is claimable only after its lease expired, with a new token."""
    lease = await running(store, "r1", lease_seconds=10)
    assert await ready_ids(store, now=T0 + 9) == []
    [taken] = await store.claim(B, now=T0 + 11, lease_seconds=LEASE, limit=5)
    assert (taken.run_id, taken.owner) == ("r1", B.id)
    assert taken.token > lease.token
    assert (await get(store, "r1")).lease_owner == B.id


async def test_a_parked_run_is_claimable_when_its_wake_at_is_due(store: Store) -> None:
    """A sleeping run becomes claimable at wake_at (inclusive), and its wake_at is cleared."""
    lease = await running(store, "r1")
    await store.append(lease, [], now=T0 + 1,
                       finish=Finish(RunStatus.SLEEPING, wake_at=T0 + 100))
    rec = await get(store, "r1")
    assert (rec.status, rec.wake_at, rec.lease_owner) == (RunStatus.SLEEPING, T0 + 100, None)
    assert await ready_ids(store, now=T0 + 99) == []
    assert await ready_ids(store, now=T0 + 100) == ["r1"]
    rec = await get(store, "r1")
    assert (rec.status, rec.wake_at) == (RunStatus.RUNNING, None)


async def test_a_waiting_run_is_claimable_at_its_timeout_only(store: Store) -> None:
    """A run waiting with a timeout is due at it; without one, time never wakes it."""
    for rid, wake_at in (("timeout", T0 + 50), ("forever", None)):
        lease = await running(store, rid)
        await store.append(lease, [], now=T0,
                           finish=Finish(RunStatus.WAITING, wake_at=wake_at))
    assert await ready_ids(store, now=T0 + 49) == []
    assert await ready_ids(store, now=T0 + 10_000) == ["timeout"]
    assert (await get(store, "forever")).status == RunStatus.WAITING


async def test_steal_takes_a_live_lease_only_with_matching_owner_and_token(
        store: Store) -> None:
    """A dead owner's run is stolen before expiry only if owner and token still match."""
    lease = await running(store, "r1", lease_seconds=1_000)

    async def steal(*entry: tuple[str, str, int]) -> list[str]:
        return [x.run_id for x in await store.claim(
            B, now=T0 + 1, lease_seconds=LEASE, limit=5, steal=list(entry))]

    assert await steal(("r1", A.id, lease.token + 1)) == []
    assert await steal(("r1", "worker-z", lease.token)) == []
    assert await steal(("missing", A.id, lease.token)) == []
    [stolen] = await store.claim(B, now=T0 + 1, lease_seconds=LEASE, limit=5,
                                 steal=[("r1", A.id, lease.token)])
    assert (stolen.run_id, stolen.owner) == ("r1", B.id)
    assert stolen.token > lease.token
    with pytest.raises(LeaseLostError):
        await store.append(lease, [step("0")], now=T0 + 2)
    assert await steal(("r1", A.id, lease.token)) == []


async def test_steal_does_not_take_a_finished_run(store: Store) -> None:
    """A steal entry for a run that has since ended (or parked) claims nothing."""
    lease = await running(store, "r1")
    await store.append(lease, [], now=T0, finish=Finish(RunStatus.COMPLETED, result="1"))
    out = await store.claim(B, now=T0 + 1, lease_seconds=LEASE, limit=5,
                            steal=[("r1", A.id, lease.token)])
    assert out == []
    assert (await get(store, "r1")).status == RunStatus.COMPLETED


async def test_claim_only_takes_runs_of_the_given_workflows(store: Store) -> None:
    """``workflows`` restricts claims (and steals) to runs this worker can execute."""
    await new_run(store, "a1", workflow="a")
    await new_run(store, "b1", workflow="b", now=T0 + 1)
    assert await ready_ids(store, now=T0 + 2, workflows=[]) == []
    assert await ready_ids(store, now=T0 + 2, workflows=["a", "zzz"]) == ["a1"]
    b_lease = await claim_one(store, "b1", A, now=T0 + 3, lease_seconds=1_000)
    stolen = await store.claim(B, now=T0 + 4, lease_seconds=LEASE, limit=5, workflows=["a"],
                               steal=[("b1", A.id, b_lease.token)])
    assert stolen == []
    assert (await get(store, "b1")).lease_owner == A.id


async def test_claim_with_run_id_takes_only_that_run(store: Store) -> None:
    """``run_id`` restricts the claim (and steals) to that run, if it is ready."""
    await new_run(store, "older")
    await new_run(store, "target", now=T0 + 1)
    dead = await running(store, "dead", lease_seconds=1_000, now=T0 + 2)
    out = await store.claim(B, now=T0 + 3, lease_seconds=LEASE, limit=10, run_id="target",
                            steal=[("dead", A.id, dead.token)])
    assert [lease.run_id for lease in out] == ["target"]
    assert await store.claim(B, now=T0 + 4, lease_seconds=LEASE, limit=10,
                             run_id="target") == []
    assert (await get(store, "older")).status == RunStatus.PENDING
    assert (await get(store, "dead")).lease_owner == A.id


async def test_local_running_lists_running_runs_of_a_host(store: Store) -> None:
    """local_running returns the running runs whose owner is on that host."""
    await running(store, "mine", A)
    await running(store, "theirs", B)
    await new_run(store, "pending")
    assert [r.run_id for r in await store.local_running(A.host)] == ["mine"]
    assert await store.local_running("elsewhere") == []


# -- finishing an execution ------------------------------------------------------------


async def test_complete_and_fail_end_the_run_and_release_the_lease(store: Store) -> None:
    """A terminal finish records result or error, releases the lease, and is never claimed."""
    ok = await running(store, "ok")
    bad = await running(store, "bad")
    await store.append(ok, [NewEvent(EventKind.RUN_COMPLETED, payload="42")], now=T0 + 1,
                       finish=Finish(RunStatus.COMPLETED, result="42"))
    await store.append(bad, [NewEvent(EventKind.RUN_FAILED, payload="{}")], now=T0 + 1,
                       finish=Finish(RunStatus.FAILED, error='{"type": "E"}'))
    done, failed = await get(store, "ok"), await get(store, "bad")
    assert (done.status, done.result, done.error) == (RunStatus.COMPLETED, "42", None)
    assert (failed.status, failed.result, failed.error) == (
        RunStatus.FAILED, None, '{"type": "E"}')
    for rec in (done, failed):
        assert rec.is_terminal
        assert (rec.lease_owner, rec.lease_expires_at, rec.updated_at) == (None, None, T0 + 1)
    assert await ready_ids(store, now=T0 + 10_000) == []
    assert (await store.load_events("ok"))[-1].kind == EventKind.RUN_COMPLETED


async def test_finish_pending_hands_the_run_back(store: Store) -> None:
    """Finishing with PENDING releases the lease and makes the run claimable at once."""
    lease = await running(store, "r1")
    await store.append(lease, [], now=T0 + 1, finish=Finish(RunStatus.PENDING))
    rec = await get(store, "r1")
    assert (rec.status, rec.lease_owner) == (RunStatus.PENDING, None)
    assert await ready_ids(store, now=T0 + 1) == ["r1"]


async def test_a_wake_up_racing_a_park_leaves_the_run_pending(store: Store) -> None:
    """A signal sent while the run executes turns its later WAITING park into PENDING."""
    lease = await running(store, "r1")
    rec = await store.send_signal("r1", "go", "1", now=T0 + 1)
    assert rec.status == RunStatus.RUNNING
    await store.append(lease, [], now=T0 + 2,
                       finish=Finish(RunStatus.WAITING, wake_at=T0 + 500))
    rec = await get(store, "r1")
    assert (rec.status, rec.wake_at) == (RunStatus.PENDING, None)
    assert await ready_ids(store, now=T0 + 3) == ["r1"]


async def test_a_cancel_racing_a_park_leaves_the_run_pending(store: Store) -> None:
    """A cancel flagged while the run executes makes its later park (even a long sleep)
    a PENDING hand-back, so the next claim observes the cancel at once."""
    for rid, finish in (("sleeps", Finish(RunStatus.SLEEPING, wake_at=T0 + 86_400)),
                        ("waits", Finish(RunStatus.WAITING, wake_at=T0 + 86_400))):
        lease = await running(store, rid)
        await store.request_cancel(rid, now=T0 + 1)
        await store.append(lease, [], now=T0 + 2, finish=finish)
        rec = await get(store, rid)
        assert (rec.status, rec.wake_at, rec.cancel_requested) == (
            RunStatus.PENDING, None, True)
    assert sorted(await ready_ids(store, now=T0 + 3)) == ["sleeps", "waits"]


async def test_a_park_after_the_next_claim_is_not_affected_by_old_wake_ups(
        store: Store) -> None:
    """A wake-up is consumed by the claim that follows it; the next park really parks."""
    lease = await running(store, "r1")
    await store.send_signal("r1", "go", "1", now=T0)
    await store.append(lease, [], now=T0, finish=Finish(RunStatus.WAITING))
    lease = await claim_one(store, "r1", now=T0 + 1)
    assert await store.take_signal(lease, "go", "0", now=T0 + 1) == "1"
    await store.append(lease, [], now=T0 + 2, finish=Finish(RunStatus.WAITING))
    assert (await get(store, "r1")).status == RunStatus.WAITING


# -- signals ---------------------------------------------------------------------------


async def test_signals_are_kept_and_delivered_once_in_order(store: Store) -> None:
    """Signals sent before a wait are kept per name, taken oldest first, each once."""
    lease = await running(store, "r1")
    await store.send_signal("r1", "go", '"first"', now=T0 + 1)
    await store.send_signal("r1", "other", '"o"', now=T0 + 2)
    await store.send_signal("r1", "go", '"second"', now=T0 + 3)
    assert await store.take_signal(lease, "go", "0", now=T0 + 4) == '"first"'
    assert await store.take_signal(lease, "go", "1", now=T0 + 4) == '"second"'
    assert await store.take_signal(lease, "go", "2", now=T0 + 4) is None
    assert await store.take_signal(lease, "other", "3", now=T0 + 5) == '"o"'
    received = [(e.step_id, e.name, e.payload) for e in await store.load_events("r1")
                if e.kind == EventKind.SIGNAL_RECEIVED]
    assert received == [("0", "go", '"first"'), ("1", "go", '"second"'),
                        ("3", "other", '"o"')]
    await store.append(lease, [], now=T0 + 6, finish=Finish(RunStatus.PENDING))
    again = await claim_one(store, "r1", now=T0 + 7)
    assert await store.take_signal(again, "go", "0", now=T0 + 7) is None


async def test_pending_signals_are_the_sent_and_not_taken_oldest_first(store: Store) -> None:
    """``pending_signals`` lists one run's signals not yet taken, in the order sent."""
    lease = await running(store, "r1")
    await new_run(store, "r2")
    assert await store.pending_signals("r1") == []
    await store.send_signal("r1", "go", '"first"', now=T0 + 1)
    await store.send_signal("r2", "go", '"theirs"', now=T0 + 1)
    await store.send_signal("r1", "other", '"o"', now=T0 + 2)
    await store.send_signal("r1", "go", '"second"', now=T0 + 3)
    assert await store.pending_signals("r1") == [
        ("go", '"first"'), ("other", '"o"'), ("go", '"second"')]
    assert await store.take_signal(lease, "go", "0", now=T0 + 4) == '"first"'
    assert await store.pending_signals("r1") == [("other", '"o"'), ("go", '"second"')]
    assert await store.pending_signals("r2") == [("go", '"theirs"')]
    assert await store.pending_signals("nope") == []


async def test_a_signal_wakes_a_waiting_run(store: Store) -> None:
    """A run waiting for a signal (with or without timeout) becomes pending when one comes."""
    lease = await running(store, "r1")
    await store.append(lease, [], now=T0, finish=Finish(RunStatus.WAITING, wake_at=T0 + 900))
    assert await ready_ids(store, now=T0 + 1) == []
    rec = await store.send_signal("r1", "go", "1", now=T0 + 2)
    assert (rec.status, rec.wake_at) == (RunStatus.PENDING, None)
    assert (await get(store, "r1")).status == RunStatus.PENDING
    [again] = await store.claim(A, now=T0 + 3, lease_seconds=LEASE, limit=5)
    assert await store.take_signal(again, "go", "0", now=T0 + 3) == "1"


async def test_a_signal_does_not_wake_a_sleeping_run(store: Store) -> None:
    """A sleeping run keeps sleeping until its timer; the signal waits for it."""
    lease = await running(store, "r1")
    await store.append(lease, [], now=T0, finish=Finish(RunStatus.SLEEPING, wake_at=T0 + 60))
    rec = await store.send_signal("r1", "go", "1", now=T0 + 1)
    assert (rec.status, rec.wake_at) == (RunStatus.SLEEPING, T0 + 60)
    assert await ready_ids(store, now=T0 + 2) == []
    again = await claim_one(store, "r1", now=T0 + 60)
    assert await store.take_signal(again, "go", "0", now=T0 + 60) == "1"


async def test_a_signal_to_an_unknown_run_raises(store: Store) -> None:
    """send_signal to a missing run raises RunNotFoundError."""
    with pytest.raises(RunNotFoundError):
        await store.send_signal("nope", "go", "1", now=T0)


# -- cancellation ----------------------------------------------------------------------


async def test_cancel_of_an_unleased_run_is_immediate(store: Store) -> None:
    """Pending and parked runs are cancelled at once, with a RUN_CANCELLED event."""
    await new_run(store, "pending")
    sleeper = await running(store, "sleeping")
    await store.append(sleeper, [], now=T0, finish=Finish(RunStatus.SLEEPING, wake_at=T0 + 9))
    for rid in ("pending", "sleeping"):
        rec = await store.request_cancel(rid, now=T0 + 1)
        assert (rec.status, rec.cancel_requested, rec.lease_owner) == (
            RunStatus.CANCELLED, True, None)
        assert (await store.load_events(rid))[-1].kind == EventKind.RUN_CANCELLED
    assert await ready_ids(store, now=T0 + 100) == []


async def test_cancel_of_a_leased_run_is_a_flag_returned_by_append(store: Store) -> None:
    """A run held by a live worker stays running; its worker learns of it from append."""
    lease = await running(store, "r1")
    assert not (await store.append(lease, [step("0")], now=T0 + 1)).cancel_requested
    rec = await store.request_cancel("r1", now=T0 + 2)
    assert (rec.status, rec.cancel_requested, rec.lease_owner) == (
        RunStatus.RUNNING, True, A.id)
    assert (await store.append(lease, [step("1")], now=T0 + 3)).cancel_requested
    await store.append(lease, [NewEvent(EventKind.RUN_CANCELLED)], now=T0 + 4,
                       finish=Finish(RunStatus.CANCELLED))
    assert (await get(store, "r1")).status == RunStatus.CANCELLED


async def test_cancel_of_a_run_with_an_expired_lease_is_immediate(store: Store) -> None:
    """A run whose worker's lease expired is cancelled at once; that worker is fenced off."""
    lease = await running(store, "r1", lease_seconds=10)
    rec = await store.request_cancel("r1", now=T0 + 11)
    assert rec.status == RunStatus.CANCELLED
    with pytest.raises(LeaseLostError):
        await store.append(lease, [step("0")], now=T0 + 12)


def cleanup(step_id: str, which: str) -> NewEvent:
    """The completed step that opens or closes a cleanup scope (ctx.cleanup_on_cancel)."""
    name = CLEANUP_OPENED if which == "open" else CLEANUP_CLOSED
    return NewEvent(EventKind.STEP_COMPLETED, step_id=step_id, name=name, payload="null")


async def test_cancel_of_an_idle_run_holding_a_cleanup_scope_wakes_it(store: Store) -> None:
    """A parked, pending or expired run that holds an open cleanup scope (a saga) is not
    cancelled by the store: it is flagged and made ready (parked: pending), with no
    RUN_CANCELLED event, so its code can clean up; one whose scopes are all closed again
    is cancelled at once."""
    parked = await running(store, "parked")
    await store.append(parked, [cleanup("1", "open"), step("2")], now=T0,
                       finish=Finish(RunStatus.WAITING, wake_at=T0 + 86_400))
    expired = await running(store, "expired", lease_seconds=5)
    await store.append(expired, [cleanup("1", "open")], now=T0)
    nested = await running(store, "nested")
    await store.append(nested, [cleanup("1", "open"), cleanup("2", "open"),
                                cleanup("3", "close")], now=T0,
                       finish=Finish(RunStatus.SLEEPING, wake_at=T0 + 86_400))
    closed = await running(store, "closed")
    await store.append(closed, [cleanup("1", "open"), cleanup("2", "close")], now=T0,
                       finish=Finish(RunStatus.SLEEPING, wake_at=T0 + 86_400))
    for rid, status in (("parked", RunStatus.PENDING), ("expired", RunStatus.RUNNING),
                        ("nested", RunStatus.PENDING)):
        rec = await store.request_cancel(rid, now=T0 + 10)
        assert (rec.status, rec.cancel_requested, rec.wake_at) == (status, True, None), rid
        assert EventKind.RUN_CANCELLED not in [e.kind for e in await store.load_events(rid)]
    rec = await store.request_cancel("closed", now=T0 + 10)
    assert (rec.status, rec.cancel_requested) == (RunStatus.CANCELLED, True)
    assert sorted(await ready_ids(store, now=T0 + 11)) == ["expired", "nested", "parked"]


async def test_cancel_of_a_finished_or_unknown_run(store: Store) -> None:
    """Cancelling an ended run changes nothing; an unknown run raises RunNotFoundError."""
    lease = await running(store, "r1")
    await store.append(lease, [], now=T0, finish=Finish(RunStatus.COMPLETED, result="1"))
    rec = await store.request_cancel("r1", now=T0 + 1)
    assert rec.status == RunStatus.COMPLETED
    assert (await store.load_events("r1"))[-1].kind == EventKind.RUN_CLAIMED
    with pytest.raises(RunNotFoundError):
        await store.request_cancel("nope", now=T0)


async def test_cancel_recurses_into_unfinished_children(store: Store) -> None:
    """Cancelling a parent cancels idle descendants and flags leased ones."""
    parent = await running(store, "p")
    for cid in ("idle", "busy", "done"):
        await store.create_run(run_id=cid, workflow="child", input="[]", now=T0,
                               parent=parent, parent_step_id=cid)
    busy = await claim_one(store, "busy", B, now=T0 + 1)
    done = await claim_one(store, "done", B, now=T0 + 1)
    await store.append(done, [], now=T0 + 1, finish=Finish(RunStatus.COMPLETED, result="1"))
    await store.create_run(run_id="grandchild", workflow="child", input="[]", now=T0 + 1,
                           parent=busy, parent_step_id="0")
    rec = await store.request_cancel("p", now=T0 + 2)
    assert (rec.status, rec.cancel_requested) == (RunStatus.RUNNING, True)
    statuses = {r.run_id: (r.status, r.cancel_requested) for r in
                [await get(store, x) for x in ("idle", "busy", "done", "grandchild")]}
    assert statuses == {
        "idle": (RunStatus.CANCELLED, True),
        "busy": (RunStatus.RUNNING, True),
        "done": (RunStatus.COMPLETED, False),
        "grandchild": (RunStatus.CANCELLED, True),
    }
    assert (await store.append(busy, [], now=T0 + 3)).cancel_requested


async def test_redrive_puts_a_dead_lettered_run_back_to_pending(store: Store) -> None:
    """redrive re-queues a dead-lettered run, journaling the step that dead-lettered it."""
    lease = await running(store, "r1")
    await store.append(lease, [NewEvent(EventKind.RUN_DEAD_LETTERED, step_id="3")], now=T0,
                       finish=Finish(RunStatus.DEAD_LETTERED, error='{"type": "E"}'))
    assert await ready_ids(store, now=T0 + 1) == []
    rec = await store.redrive("r1", now=T0 + 2)
    assert (rec.status, rec.result, rec.error, rec.cancel_requested) == (
        RunStatus.PENDING, None, None, False)
    last = (await store.load_events("r1"))[-1]
    assert (last.kind, last.step_id, last.created_at) == (EventKind.RUN_REDRIVEN, "3", T0 + 2)
    assert await ready_ids(store, now=T0 + 3) == ["r1"]


async def test_redrive_refuses_other_runs(store: Store) -> None:
    """Only a dead-lettered run can be redriven; an unknown one raises RunNotFoundError."""
    await new_run(store, "r1")
    with pytest.raises(ConfigurationError):
        await store.redrive("r1", now=T0)
    with pytest.raises(RunNotFoundError):
        await store.redrive("nope", now=T0)
    assert (await get(store, "r1")).status == RunStatus.PENDING


# -- children --------------------------------------------------------------------------


async def test_create_child_links_it_and_journals_parent_events(store: Store) -> None:
    """A child run records its parent; the parent's events are written with it."""
    parent = await running(store, "p")
    rec, created = await store.create_run(
        run_id="c", workflow="child", input="[7]", now=T0 + 1, workflow_ref="app:child",
        parent=parent, parent_step_id="3",
        parent_events=[NewEvent(EventKind.CHILD_STARTED, "3", "child", "c")])
    assert created
    assert (rec.parent_run_id, rec.parent_step_id, rec.status) == ("p", "3", RunStatus.PENDING)
    last = (await store.load_events("p"))[-1]
    assert (last.seq, last.kind, last.step_id, last.payload) == (
        3, EventKind.CHILD_STARTED, "3", "c")


@pytest.mark.parametrize("outcome", [RunStatus.COMPLETED, RunStatus.FAILED])
async def test_a_child_ending_wakes_its_waiting_parent(store: Store,
                                                       outcome: RunStatus) -> None:
    """A parent parked waiting on a child becomes pending when the child ends."""
    parent = await running(store, "p")
    await store.create_run(run_id="c", workflow="child", input="[]", now=T0, parent=parent,
                           parent_step_id="0")
    await store.append(parent, [], now=T0, finish=Finish(RunStatus.WAITING, wake_at=T0 + 999))
    child = await claim_one(store, "c", B, now=T0 + 1)
    assert (await get(store, "p")).status == RunStatus.WAITING
    await store.append(child, [], now=T0 + 2, finish=Finish(outcome, result="1", error="{}"))
    rec = await get(store, "p")
    assert (rec.status, rec.wake_at) == (RunStatus.PENDING, None)
    assert await ready_ids(store, now=T0 + 3) == ["p"]


async def test_a_child_ending_while_its_parent_runs_prevents_the_parent_parking(
        store: Store) -> None:
    """A child that ends before its parent parks makes that park a PENDING hand-back."""
    parent = await running(store, "p")
    await store.create_run(run_id="c", workflow="child", input="[]", now=T0, parent=parent,
                           parent_step_id="0")
    child = await claim_one(store, "c", B, now=T0 + 1)
    await store.append(child, [], now=T0 + 2, finish=Finish(RunStatus.COMPLETED, result="1"))
    assert (await get(store, "p")).status == RunStatus.RUNNING
    await store.append(parent, [], now=T0 + 3, finish=Finish(RunStatus.WAITING))
    assert (await get(store, "p")).status == RunStatus.PENDING


async def test_cancelling_an_idle_child_wakes_its_waiting_parent(store: Store) -> None:
    """A child cancelled directly wakes the parent that waits for it."""
    parent = await running(store, "p")
    await store.create_run(run_id="c", workflow="child", input="[]", now=T0, parent=parent,
                           parent_step_id="0")
    await store.append(parent, [], now=T0, finish=Finish(RunStatus.WAITING))
    await store.request_cancel("c", now=T0 + 1)
    assert (await get(store, "p")).status == RunStatus.PENDING


# -- timers ----------------------------------------------------------------------------


async def test_next_wake_at_is_the_earliest_parked_deadline(store: Store) -> None:
    """next_wake_at is the minimum wake_at over sleeping and waiting runs, else None."""
    assert await store.next_wake_at() is None
    for rid, finish in (("s", Finish(RunStatus.SLEEPING, wake_at=T0 + 50)),
                        ("w", Finish(RunStatus.WAITING, wake_at=T0 + 30)),
                        ("forever", Finish(RunStatus.WAITING)),
                        ("done", Finish(RunStatus.COMPLETED, result="1"))):
        await store.append(await running(store, rid), [], now=T0, finish=finish)
    assert await store.next_wake_at() == T0 + 30
    await store.send_signal("w", "go", "1", now=T0 + 1)
    assert await store.next_wake_at() == T0 + 50
    await store.request_cancel("s", now=T0 + 2)
    assert await store.next_wake_at() is None


# -- concurrency -----------------------------------------------------------------------


async def test_many_concurrent_appends_to_different_runs_all_land(store: Store) -> None:
    """Concurrent appends (group-committed together) each land, in order, exactly once."""
    ids = [f"r{i:02}" for i in range(50)]
    for i, rid in enumerate(ids):
        await new_run(store, rid, now=T0 + i / 1000)
    leases = await store.claim(A, now=T0 + 1, lease_seconds=LEASE, limit=len(ids))
    assert len(leases) == len(ids)

    async def work(lease: Lease) -> None:
        for n in range(3):
            await store.append(lease, [step(str(n), f"{lease.run_id}:{n}")], now=T0 + 2)
        await store.append(lease, [], now=T0 + 3, finish=Finish(RunStatus.COMPLETED, "1"))

    await asyncio.gather(*(work(lease) for lease in leases))
    for rid in ids:
        events = await store.load_events(rid)
        assert [e.payload for e in events if e.kind == EventKind.STEP_COMPLETED] == [
            f"{rid}:0", f"{rid}:1", f"{rid}:2"]
        assert [e.seq for e in events] == list(range(1, 6))
        assert (await get(store, rid)).status == RunStatus.COMPLETED


async def test_a_stale_writer_does_not_fail_its_neighbours_in_a_batch(store: Store) -> None:
    """Among concurrent appends, only the fenced-off one fails; the others are written."""
    leases = [await running(store, f"r{i}", lease_seconds=10) for i in range(10)]
    stale, _ = leases[4], await claim_one(store, "r4", B, now=T0 + 20)
    fresh = await store.renew([x for x in leases if x is not stale], now=T0 + 20,
                              lease_seconds=LEASE)
    current = [fresh.get(x.run_id) or x for x in leases]
    results = await asyncio.gather(
        *(store.append(x, [step("0", x.run_id)], now=T0 + 21) for x in current),
        return_exceptions=True)
    failures = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert failures == [4]
    assert isinstance(results[4], LeaseLostError)
    for i, lease in enumerate(current):
        payloads = [e.payload for e in await store.load_events(lease.run_id)
                    if e.kind == EventKind.STEP_COMPLETED]
        assert payloads == ([] if i == 4 else [lease.run_id])


async def test_concurrent_appends_of_one_run_get_distinct_seqs(store: Store) -> None:
    """Concurrent appends under one lease (gather branches) never reuse a seq."""
    lease = await running(store, "r1")
    await asyncio.gather(*(store.append(lease, [step(f"0/{i}")], now=T0 + 1)
                           for i in range(20)))
    events = await store.load_events("r1")
    assert [e.seq for e in events] == list(range(1, 23))
    assert {e.step_id for e in events[2:]} == {f"0/{i}" for i in range(20)}


async def test_open_is_idempotent_and_the_store_reports_a_url(store: Store) -> None:
    """open() on an open store is a no-op; url names the backend without secrets."""
    await store.open()
    assert store.url.split(":", 1)[0] in ("sqlite", "postgresql", "memory")
    assert isinstance(store, Store)


# -- the workers registry --------------------------------------------------------------


def worker(worker_id: str, *, heartbeat_at: float = T0, started_at: float = T0,
           in_flight: int = 0, stopped_at: float | None = None,
           pools: tuple[str, ...] = ()) -> WorkerRecord:
    return WorkerRecord(worker_id=worker_id, host="host-a", pid=101, started_at=started_at,
                        heartbeat_at=heartbeat_at, concurrency=8, in_flight=in_flight,
                        lease_seconds=LEASE, pools=pools, stopped_at=stopped_at)


async def test_save_worker_inserts_then_replaces_its_row(store: Store) -> None:
    """A worker's row is written at start and replaced by each heartbeat and its stop."""
    assert await store.list_workers(since=0.0) == []
    first = worker("w1", pools=("gpu", "default"))
    await store.save_worker(first)
    assert await store.list_workers(since=0.0) == [first]
    beat = worker("w1", heartbeat_at=T0 + 10, in_flight=3, pools=("gpu", "default"))
    await store.save_worker(beat)
    stopped = worker("w1", heartbeat_at=T0 + 12, stopped_at=T0 + 12, pools=("gpu", "default"))
    await store.save_worker(stopped)
    assert await store.list_workers(since=0.0) == [stopped]


async def test_list_workers_since_and_in_start_order(store: Store) -> None:
    """Only workers heard from since the cut-off are listed, oldest start first."""
    await store.save_worker(worker("late", started_at=T0 + 5, heartbeat_at=T0 + 50))
    await store.save_worker(worker("early", started_at=T0, heartbeat_at=T0 + 40))
    await store.save_worker(worker("gone", started_at=T0 - 100, heartbeat_at=T0 - 90))
    listed = await store.list_workers(since=T0)
    assert [w.worker_id for w in listed] == ["early", "late"]
    assert [w.worker_id for w in await store.list_workers(since=T0 + 45)] == ["late"]


async def test_forget_workers_deletes_only_old_rows(store: Store) -> None:
    """forget_workers removes rows last heard from before the cut-off and counts them."""
    for i in range(3):
        await store.save_worker(worker(f"old{i}", heartbeat_at=T0 - 1000 - i))
    await store.save_worker(worker("fresh", heartbeat_at=T0))
    assert await store.forget_workers(before=T0 - 500) == 3
    assert [w.worker_id for w in await store.list_workers(since=0.0)] == ["fresh"]
    assert await store.forget_workers(before=T0 - 500) == 0


async def test_workers_registry_is_shared_between_stores(open_another: StoreFactory) -> None:
    """Two processes on one journal see each other's workers."""
    one, two = await open_another(), await open_another()
    await one.save_worker(worker("w1"))
    await two.save_worker(worker("w2", started_at=T0 + 1))
    assert [w.worker_id for w in await one.list_workers(since=0.0)] == ["w1", "w2"]


def test_worker_alive_follows_heartbeat_age_and_stop() -> None:
    """A worker is alive until a lease period passes without a heartbeat, or it stops."""
    w = worker("w1", heartbeat_at=T0)
    assert w.alive(T0 + LEASE)
    assert not w.alive(T0 + LEASE + 0.001)
    assert not worker("w1", stopped_at=T0).alive(T0)
