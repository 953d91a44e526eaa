"""The run planner (``store/_runs``): every transition alone, and random sequences of them
against a plain model.

No store and no I/O: a plan is applied here the way every store applies it (lock the
row, plan, write), on a dict of states. The conformance suite checks the stores end to
end; these check the rules themselves, fast.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stalwart.errors import ConfigurationError, LeaseLostError, RunNotFoundError
from stalwart.store import EventKind, Finish, Lease, NewEvent, Owner, RunStatus
from stalwart.store._chain import verify_events
from stalwart.store._runs import (
    APPEND_READS,
    STATE_COLUMNS,
    RunState,
    claim_order,
    is_ready,
    plan_append,
    plan_cancel,
    plan_claim,
    plan_create,
    plan_redrive,
    plan_renew,
    plan_take_signal,
    plan_wake,
    ready_sql,
    require,
    state_from_row,
)

T0 = 1_000.0
LEASE = 30.0
A = Owner("a", "host-a", 1)
B = Owner("b", "host-b", 2)


def step(step_id: str) -> NewEvent:
    return NewEvent(EventKind.STEP_COMPLETED, step_id=step_id, name="f", payload="1")


def created(run_id: str = "r", parent: str | None = None) -> RunState:
    return plan_create(run_id=run_id, workflow="wf", input="[]", now=T0,
                       parent_run_id=parent).state


def claimed(state: RunState | None = None, owner: Owner = A, now: float = T0
            ) -> tuple[RunState, Lease]:
    plan = plan_claim(state or created(), owner, now=now, lease_seconds=LEASE)
    assert plan is not None
    return plan.after, Lease(plan.after.run_id, owner.id, plan.after.lease_token,
                             now + LEASE)


# -- one transition at a time --------------------------------------------------------


def test_create_journals_run_created_then_the_given_events() -> None:
    """A new run is pending, its events numbered from 1 and chained from the genesis."""
    new = plan_create(run_id="r", workflow="wf", input='["x"]', now=T0,
                      events=[step("0"), step("1")])
    assert new.state.status == RunStatus.PENDING and new.record.status == RunStatus.PENDING
    assert [(e[1], e[2]) for e in new.events] == [
        (1, "run_created"), (2, "step_completed"), (3, "step_completed")]
    assert new.state.event_count == 3 and new.state.event_head == new.events[-1][7]
    verify_events("r", [e[1:] for e in new.events], count=3, head=new.state.event_head)


def test_claim_takes_a_ready_run_with_a_new_token_and_clears_the_wake_flag() -> None:
    """Pending -> running under a token one higher; wake_requested is cleared; the claim
    is journaled naming owner, host and pid."""
    state = created()._replace(wake_requested=True, lease_token=4)
    plan = plan_claim(state, A, now=T0 + 1, lease_seconds=LEASE)
    assert plan is not None
    after = plan.after
    assert (after.status, after.lease_owner, after.lease_token, after.lease_expires_at,
            after.owner_host, after.owner_pid, after.wake_requested) == (
        RunStatus.RUNNING, "a", 5, T0 + 1 + LEASE, "host-a", 1, False)
    assert [(e[1], e[2], e[4], e[5]) for e in plan.events] == [
        (2, "run_claimed", "a", '{"host": "host-a", "pid": 1}')]


@pytest.mark.parametrize(("status", "expires", "wake_at", "now", "ready"), [
    (RunStatus.PENDING, None, None, T0, True),
    (RunStatus.RUNNING, T0 + 10, None, T0 + 10, False),  # expires at, not before
    (RunStatus.RUNNING, T0 + 10, None, T0 + 10.5, True),
    (RunStatus.SLEEPING, None, T0 + 5, T0 + 4, False),
    (RunStatus.SLEEPING, None, T0 + 5, T0 + 5, True),
    (RunStatus.WAITING, None, None, T0 + 10**6, False),  # no timeout: only a wake-up
    (RunStatus.WAITING, None, T0 + 5, T0 + 6, True),
    (RunStatus.COMPLETED, None, None, T0, False),
    (RunStatus.DEAD_LETTERED, None, None, T0, False),
])
def test_which_runs_a_claim_may_take(status: RunStatus, expires: float | None,
                                     wake_at: float | None, now: float, ready: bool) -> None:
    """Pending, parked and due, or running on an expired lease; nothing else."""
    state = created()._replace(status=status, lease_expires_at=expires, wake_at=wake_at,
                    lease_owner="x" if status == RunStatus.RUNNING else None)
    assert is_ready(state, now) is ready
    assert (plan_claim(state, A, now=now, lease_seconds=LEASE) is not None) is ready


def test_a_dead_owners_run_is_stolen_only_with_its_owner_and_token() -> None:
    """A live lease is taken by steal=(owner, token) when both match, never otherwise."""
    state, lease = claimed()
    assert plan_claim(state, B, now=T0 + 1, lease_seconds=LEASE) is None
    assert plan_claim(state, B, now=T0 + 1, lease_seconds=LEASE,
                      steal=("a", lease.token + 1)) is None
    assert plan_claim(state, B, now=T0 + 1, lease_seconds=LEASE,
                      steal=("x", lease.token)) is None
    plan = plan_claim(state, B, now=T0 + 1, lease_seconds=LEASE, steal=("a", lease.token))
    assert plan is not None and plan.after.lease_owner == "b"


def test_claim_order_takes_dead_owners_runs_first_then_ready_each_once() -> None:
    """Stolen ids lead, ready ids follow in their order, no id twice, at most limit."""
    assert claim_order(["s1", "s2"], ["r1", "s1", "r2"], 10) == ["s1", "s2", "r1", "r2"]
    assert claim_order(["s1"], ["r1", "r2"], 2) == ["s1", "r1"]
    assert claim_order([], [], 3) == []


def test_renew_extends_a_current_lease_and_refuses_a_stale_one() -> None:
    """A current lease gets a new expiry; a lease whose token is old gets None."""
    state, lease = claimed()
    plan = plan_renew(state, lease, now=T0 + 5, lease_seconds=LEASE)
    assert plan is not None and plan.changes() == {"lease_expires_at": T0 + 5 + LEASE}
    assert plan_renew(state, replace(lease, token=lease.token - 1), now=T0 + 5,
                      lease_seconds=LEASE) is None
    assert plan_renew(None, lease, now=T0, lease_seconds=LEASE) is None


def test_a_stale_lease_writes_nothing() -> None:
    """Appending under an old token, another owner, or to a run that is not running
    raises LeaseLostError: there is no plan to write."""
    state, lease = claimed()
    for stale in (replace(lease, token=lease.token + 1), replace(lease, owner="b")):
        with pytest.raises(LeaseLostError):
            plan_append(state, stale, [step("0")], now=T0)
    with pytest.raises(LeaseLostError):
        plan_append(state._replace(status=RunStatus.PENDING), lease, [], now=T0)
    with pytest.raises(LeaseLostError):
        plan_append(None, lease, [], now=T0)
    with pytest.raises(LeaseLostError):
        plan_take_signal(state._replace(lease_token=9), lease, name="go", step_id="1",
                         payload="1", now=T0)


def test_an_append_holds_one_outcome_per_step() -> None:
    """Two outcomes of one step in one append are refused (the stores' unique index
    refuses a second one across appends)."""
    state, lease = claimed()
    with pytest.raises(LeaseLostError, match="two outcomes"):
        plan_append(state, lease, [step("3"), step("3")], now=T0)


def test_events_chain_on_from_the_runs_head() -> None:
    """Appended events continue the sequence and the chain; the row counts them."""
    state, lease = claimed()
    plan = plan_append(state, lease, [step("0"), step("1")], now=T0 + 1)
    assert [e[1] for e in plan.events] == [3, 4]
    assert plan.changes() == {"event_count": 4, "event_head": plan.events[-1][7],
                              "updated_at": T0 + 1}
    assert not plan.notify and plan.wake is None


@pytest.mark.parametrize(("park", "wake", "cancel", "ends"), [
    (RunStatus.WAITING, False, False, RunStatus.WAITING),
    (RunStatus.WAITING, True, False, RunStatus.PENDING),  # a wake-up raced the park
    (RunStatus.SLEEPING, True, False, RunStatus.SLEEPING),  # a signal wakes no sleeper
    (RunStatus.SLEEPING, False, True, RunStatus.PENDING),  # a cancel raced the sleep
    (RunStatus.WAITING, False, True, RunStatus.WAITING),
    (RunStatus.PENDING, True, True, RunStatus.PENDING),
])
def test_a_park_loses_to_a_racing_wake_up_or_cancel(park: RunStatus, wake: bool,
                                                    cancel: bool, ends: RunStatus) -> None:
    """The flags a wake-up or a cancel left while the run executed decide where a park
    ends: pending (claimable now, no wake time) instead of parked."""
    state, lease = claimed()
    state = state._replace(wake_requested=wake, cancel_requested=cancel)
    after = plan_append(state, lease, [], now=T0 + 1,
                        finish=Finish(park, wake_at=T0 + 60)).after
    assert after.status == ends
    assert after.wake_at == (T0 + 60 if ends == park else None)
    assert (after.lease_owner, after.lease_expires_at) == (None, None)


@pytest.mark.parametrize("status", [RunStatus.COMPLETED, RunStatus.FAILED,
                                    RunStatus.CANCELLED, RunStatus.DEAD_LETTERED])
def test_a_run_that_ends_wakes_its_parent(status: RunStatus) -> None:
    """A terminal finish names the parent to wake and writes result, error and digest."""
    state, lease = claimed(created("c", parent="p"))
    plan = plan_append(state, lease, [], now=T0 + 1,
                       finish=Finish(status, result='"r"', error=None))
    assert plan.wake == "p" and plan.notify
    assert plan.changes()["outcome_digest"]
    parked = plan_append(state, lease, [], now=T0 + 1,
                         finish=Finish(RunStatus.WAITING, wake_at=T0 + 9))
    assert parked.wake is None


def test_a_finish_cannot_leave_the_run_running() -> None:
    """Finish(RUNNING) is a programming error, not a state."""
    state, lease = claimed()
    with pytest.raises(ValueError, match="RUNNING"):
        plan_append(state, lease, [], now=T0, finish=Finish(RunStatus.RUNNING))


def test_a_wake_up_makes_a_waiting_run_pending_and_flags_any_other() -> None:
    """Waiting -> pending at once; running or sleeping keep their status, flagged; a
    finished run is left exactly as it is (its end time does not move)."""
    waiting = created()._replace(status=RunStatus.WAITING, wake_at=T0 + 50)
    after = plan_wake(waiting, now=T0 + 1).after
    assert (after.status, after.wake_at, after.wake_requested) == (
        RunStatus.PENDING, None, True)
    running, _ = claimed()
    assert plan_wake(running, now=T0 + 1).changes() == {"wake_requested": True,
                                                        "updated_at": T0 + 1}
    done = running._replace(status=RunStatus.COMPLETED, lease_owner=None)
    plan = plan_wake(done, now=T0 + 1)
    assert not plan.changed and not plan.notify


def test_cancel_flags_a_live_lease_and_cancels_anything_else_at_once() -> None:
    """A live lease is flagged (and its wake flag set); an expired one, a pending or a
    parked run is cancelled now, journaled, its parent woken; children follow."""
    state, _ = claimed(created("c", parent="p"))
    live = plan_cancel(state, now=T0 + 1)
    assert (live.after.status, live.after.cancel_requested, live.after.wake_requested) == (
        RunStatus.RUNNING, True, True)
    assert live.cascade and not live.events and live.wake is None
    for idle in (state, state._replace(status=RunStatus.SLEEPING, lease_owner=None,
                                lease_expires_at=None, wake_at=T0 + 9)):
        plan = plan_cancel(idle, now=T0 + LEASE + 1)
        assert plan.after.status == RunStatus.CANCELLED and plan.cascade
        assert (plan.after.lease_owner, plan.after.wake_at) == (None, None)
        assert [e[2] for e in plan.events] == ["run_cancelled"] and plan.wake == "p"


def test_a_run_holding_a_cleanup_scope_is_woken_by_a_cancel_not_ended() -> None:
    """No live lease and an open cleanup scope (a saga): flagged and made ready (a parked
    run pending, no wake time), nothing journaled, no parent woken, children next; a live
    lease is only flagged, as ever."""
    state, _ = claimed(created("c", parent="p"))
    parked = state._replace(status=RunStatus.WAITING, lease_owner=None,
                            lease_expires_at=None, wake_at=T0 + 99)
    plan = plan_cancel(parked, now=T0 + 1, cleanups=1)
    assert (plan.after.status, plan.after.wake_at, plan.after.cancel_requested,
            plan.after.wake_requested) == (RunStatus.PENDING, None, True, True)
    assert not plan.events and plan.wake is None and plan.cascade
    expired = plan_cancel(state, now=T0 + LEASE + 1, cleanups=2)
    assert expired.after.status == RunStatus.RUNNING and expired.after.cancel_requested
    live = plan_cancel(state, now=T0 + 1, cleanups=1)
    assert live.after == plan_cancel(state, now=T0 + 1).after
    assert plan_cancel(parked, now=T0 + 1, cleanups=0).after.status == RunStatus.CANCELLED


def test_cancel_leaves_a_finished_run_and_its_children_alone() -> None:
    """Nothing changes, and the cascade stops there."""
    done = created()._replace(status=RunStatus.COMPLETED)
    plan = plan_cancel(done, now=T0)
    assert not plan.changed and not plan.cascade


def test_redrive_puts_only_a_dead_lettered_run_back() -> None:
    """Dead-lettered -> pending, result, error and the cancel flag cleared, the dead
    step journaled; any other status is refused."""
    dead = created()._replace(status=RunStatus.DEAD_LETTERED, error="e",
                   cancel_requested=True)
    plan = plan_redrive(dead, "4", now=T0 + 1)
    assert (plan.after.status, plan.after.error, plan.after.cancel_requested) == (
        RunStatus.PENDING, None, False)
    assert [(e[2], e[3]) for e in plan.events] == [("run_redriven", "4")]
    with pytest.raises(ConfigurationError, match="not dead_lettered"):
        plan_redrive(created(), None, now=T0)


def test_a_missing_run_is_named() -> None:
    """require() turns a missing row into RunNotFoundError naming the id."""
    with pytest.raises(RunNotFoundError, match="'nope'"):
        require(None, "nope")


# -- properties ---------------------------------------------------------------------

STATUSES = st.sampled_from(list(RunStatus))
TIMES = st.one_of(st.none(), st.floats(T0 - 50, T0 + 50).map(lambda x: round(x, 1)))


@st.composite
def states(draw: st.DrawFn) -> RunState:
    status = draw(STATUSES)
    return created()._replace(status=status, wake_at=draw(TIMES),
                   lease_owner=draw(st.sampled_from([None, "a", "b"])),
                   lease_token=draw(st.integers(0, 3)), lease_expires_at=draw(TIMES),
                   cancel_requested=draw(st.booleans()),
                   wake_requested=draw(st.booleans()),
                   result=draw(st.sampled_from([None, '"x"'])),
                   error=draw(st.sampled_from([None, "e"])),
                   owner_host=draw(st.sampled_from([None, "h"])),
                   owner_pid=draw(st.sampled_from([None, 7])),
                   event_count=draw(st.integers(1, 4)),
                   event_head=draw(st.sampled_from(["0" * 32, "ab" * 16, "cd" * 16])),
                   updated_at=draw(st.floats(T0 - 50, T0 + 50)))


@settings(max_examples=300, deadline=None)
@given(states(), st.floats(T0 - 60, T0 + 60).map(lambda x: round(x, 1)))
def test_is_ready_and_ready_sql_are_one_rule(state: RunState, now: float) -> None:
    """The SQL condition the stores select with agrees with is_ready on any row."""
    conn = sqlite3.connect(":memory:")
    conn.execute(f"CREATE TABLE runs ({STATE_COLUMNS})")
    conn.execute(f"INSERT INTO runs VALUES ({', '.join('?' * 16)})",
                 [str(getattr(state, c.strip())) if c.strip() == "status"
                  else getattr(state, c.strip()) for c in STATE_COLUMNS.split(",")])
    found = conn.execute(f"SELECT {STATE_COLUMNS} FROM runs WHERE {ready_sql(':now')}",
                         {"now": now}).fetchall()
    assert bool(found) is is_ready(state, now)
    if found:
        assert state_from_row(found[0]) == state


FINISHES = st.one_of(st.none(), st.builds(
    Finish, st.sampled_from([s for s in RunStatus if s != RunStatus.RUNNING]),
    result=st.sampled_from([None, '"r"']), error=st.sampled_from([None, "e"]),
    wake_at=TIMES))


@settings(max_examples=400, deadline=None)
@given(states(), states(), st.integers(0, 3), FINISHES,
       st.lists(st.sampled_from(["0", "1", "2"]), max_size=3))
def test_an_append_depends_only_on_the_columns_it_reads(
        state: RunState, other: RunState, token: int, finish: Finish | None,
        steps: list[str]) -> None:
    """Two rows that agree on APPEND_READS get the same plan: the same events, the same
    written values, the same answer (so PostgreSQL's write, conditional on exactly these
    columns, is sound)."""
    other = other._replace(**{c: getattr(state, c) for c in APPEND_READS})
    lease = Lease("r", state.lease_owner or "a", token, T0 + LEASE)
    events = [step(s) for s in steps]
    outcomes = []
    for row in (state, other):
        try:
            outcomes.append(plan_append(row, lease, events, now=T0, finish=finish))
        except (LeaseLostError, ValueError) as exc:
            outcomes.append(type(exc))  # type: ignore[arg-type]
    first, second = outcomes
    if not hasattr(first, "after"):
        assert first == second
        return
    assert hasattr(second, "after")
    written = {k: v for k, v in first.changes().items() if k != "outcome_digest"}
    assert other._replace(**written) == second.after
    assert (first.events, first.wake, first.notify, first.before.cancel_requested) == (
        second.events, second.wake, second.notify, second.before.cancel_requested)
