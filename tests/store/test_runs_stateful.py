"""Hypothesis drives the run planner with random claims, steals, appends, parks,
finishes, renewals, signals, cancels, redrives and passing time, on a parent and two
children, against a model written plainly; and checks the promises after every step:

* a fenced-out writer (a lease that is not current) gets LeaseLostError and no plan;
* a wake-up that arrives while a run executes is never lost to the park that follows;
* terminal states are final (only a dead-lettered run is redriven);
* a run has at most one current lease, and it is running exactly when it has an owner;
* every run's journal chains (the digests verify, the row counts every event).
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from stalwart.errors import ConfigurationError, LeaseLostError
from stalwart.store import EventKind, Finish, Lease, NewEvent, Owner, RunStatus
from stalwart.store._base import (
    CLEANUP_CLOSED,
    CLEANUP_OPENED,
    TERMINAL_STATUSES,
    open_cleanups,
)
from stalwart.store._chain import verify_events
from stalwart.store._runs import (
    EventRow,
    Plan,
    RunState,
    is_current,
    plan_append,
    plan_cancel,
    plan_claim,
    plan_create,
    plan_redrive,
    plan_renew,
    plan_take_signal,
    plan_wake,
)

LEASE = 10.0
RUNS = ("p", "c1", "c2")
PARENT = {"p": None, "c1": "p", "c2": "p"}
OWNERS = (Owner("a", "h", 1), Owner("b", "h", 2))
PARKED = (RunStatus.SLEEPING, RunStatus.WAITING)
ENDINGS = [s for s in RunStatus if s != RunStatus.RUNNING]


@dataclass
class Model:
    """One run, as the rules say in words (see ``store/_runs``)."""

    status: RunStatus = RunStatus.PENDING
    owner: str | None = None
    token: int = 0
    expires: float | None = None
    wake_at: float | None = None
    wake_flag: bool = False
    cancel_flag: bool = False
    events: int = 1  # run_created
    cleanups: int = 0  # open cleanup scopes (a saga's)

    def ready(self, now: float) -> bool:
        return (self.status == RunStatus.PENDING
                or (self.status == RunStatus.RUNNING and self.expires is not None
                    and self.expires < now)
                or (self.status in PARKED and self.wake_at is not None
                    and self.wake_at <= now))


class Runs(RuleBasedStateMachine):
    @initialize()
    def create(self) -> None:
        self.now = 1_000.0
        self.states: dict[str, RunState] = {}
        self.journal: dict[str, list[EventRow]] = {}
        for run_id in RUNS:
            new = plan_create(run_id=run_id, workflow="wf", input="[]", now=self.now,
                              parent_run_id=PARENT[run_id])
            self.states[run_id] = new.state
            self.journal[run_id] = list(new.events)
        self.model = {run_id: Model() for run_id in RUNS}
        self.leases: list[Lease] = []
        self.woken_since_claim = dict.fromkeys(RUNS, 0)
        """Wake-ups delivered (signals, a child's end, a cancel of a live lease) since
        the run was last claimed: counted here, apart from any flag of the planner's."""
        self.steps = 0

    # -- applying plans, as every store does -------------------------------------------

    def apply(self, plan: Plan) -> None:
        run_id = plan.before.run_id
        assert plan.before == self.states[run_id]  # planned from the row as it is
        self.states[run_id] = plan.after
        self.journal[run_id] += plan.events
        if plan.wake is not None:
            self.apply(plan_wake(self.states[plan.wake], now=self.now))

    def model_wake(self, run_id: str | None) -> None:
        if run_id is None:
            return
        m = self.model[run_id]
        if m.status in TERMINAL_STATUSES:
            return
        m.wake_flag = True
        self.woken_since_claim[run_id] += 1
        if m.status == RunStatus.WAITING:
            m.status, m.wake_at = RunStatus.PENDING, None

    def model_claim(self, run_id: str, owner: Owner) -> None:
        m = self.model[run_id]
        m.status, m.owner, m.token = RunStatus.RUNNING, owner.id, m.token + 1
        m.expires, m.wake_at, m.wake_flag = self.now + LEASE, None, False
        m.events += 1
        self.woken_since_claim[run_id] = 0

    def current(self, lease: Lease) -> bool:
        m = self.model[lease.run_id]
        return m.status == RunStatus.RUNNING and (m.owner, m.token) == (lease.owner,
                                                                        lease.token)

    # -- rules ---------------------------------------------------------------------

    @rule(owner=st.sampled_from(OWNERS), run_id=st.sampled_from(RUNS))
    def claim(self, owner: Owner, run_id: str) -> None:
        plan = plan_claim(self.states[run_id], owner, now=self.now, lease_seconds=LEASE)
        assert (plan is not None) == self.model[run_id].ready(self.now)
        if plan is not None:
            assert plan.after.lease_token > plan.before.lease_token
            self.apply(plan)
            self.model_claim(run_id, owner)
            self.leases.append(Lease(run_id, owner.id, plan.after.lease_token,
                                     self.now + LEASE))

    @rule(owner=st.sampled_from(OWNERS), pick=st.integers(0, 50))
    def steal(self, owner: Owner, pick: int) -> None:
        """Take a run from an owner believed dead, by its owner and token."""
        if not self.leases:
            return
        dead = self.leases[pick % len(self.leases)]
        plan = plan_claim(self.states[dead.run_id], owner, now=self.now,
                          lease_seconds=LEASE, steal=(dead.owner, dead.token))
        assert (plan is not None) == (self.current(dead)
                                      or self.model[dead.run_id].ready(self.now))
        if plan is not None:
            self.apply(plan)
            self.model_claim(dead.run_id, owner)
            self.leases.append(Lease(dead.run_id, owner.id, plan.after.lease_token,
                                     self.now + LEASE))

    @rule(pick=st.integers(0, 50), steps=st.integers(0, 2),
          finish=st.one_of(st.none(), st.sampled_from(ENDINGS)),
          wait=st.one_of(st.none(), st.floats(0, 30)),
          cleanup=st.sampled_from([None, CLEANUP_OPENED, CLEANUP_CLOSED]))
    def append(self, pick: int, steps: int, finish: RunStatus | None,
               wait: float | None, cleanup: str | None) -> None:
        """Steps (one may open or close a cleanup scope), perhaps ending the execution:
        a stale lease changes nothing."""
        if not self.leases:
            return
        lease = self.leases[pick % len(self.leases)]
        names = ["f"] * steps
        if cleanup is not None and (cleanup == CLEANUP_OPENED
                                    or self.model[lease.run_id].cleanups > 0):
            names.append(cleanup)
        events = [NewEvent(EventKind.STEP_COMPLETED, step_id=str(self.steps + i),
                           name=name, payload="1") for i, name in enumerate(names)]
        self.steps += len(names)
        wake_at = None if wait is None else self.now + wait
        end = None if finish is None else Finish(finish, result='"r"', wake_at=wake_at)
        before = self.states[lease.run_id]
        try:
            plan = plan_append(before, lease, events, now=self.now, finish=end)
        except LeaseLostError:
            assert not self.current(lease)  # fenced out, and nothing to write
            assert self.states[lease.run_id] == before
            return
        assert self.current(lease)
        self.apply(plan)
        m = self.model[lease.run_id]
        m.events += len(names)
        m.cleanups += names.count(CLEANUP_OPENED) - names.count(CLEANUP_CLOSED)
        if finish is None:
            return
        status, m.wake_at = finish, wake_at
        raced = {RunStatus.WAITING: m.wake_flag, RunStatus.SLEEPING: m.cancel_flag}
        if raced.get(finish, False):  # a wake-up (or a cancel) came first
            status, m.wake_at = RunStatus.PENDING, None
        m.status, m.owner, m.expires = status, None, None
        if finish == RunStatus.WAITING and self.woken_since_claim[lease.run_id]:
            assert plan.after.status == RunStatus.PENDING  # the wake-up is not lost
        if status in TERMINAL_STATUSES:
            self.model_wake(PARENT[lease.run_id])

    @rule(pick=st.integers(0, 50))
    def renew(self, pick: int) -> None:
        if not self.leases:
            return
        lease = self.leases[pick % len(self.leases)]
        plan = plan_renew(self.states[lease.run_id], lease, now=self.now,
                          lease_seconds=LEASE)
        assert (plan is not None) == self.current(lease)
        if plan is not None:
            self.apply(plan)
            self.model[lease.run_id].expires = self.now + LEASE

    @rule(pick=st.integers(0, 50))
    def take_signal(self, pick: int) -> None:
        if not self.leases:
            return
        lease = self.leases[pick % len(self.leases)]
        try:
            plan = plan_take_signal(self.states[lease.run_id], lease, name="go",
                                    step_id=f"s{self.steps}", payload="1", now=self.now)
        except LeaseLostError:
            assert not self.current(lease)
            return
        self.steps += 1
        assert self.current(lease)
        self.apply(plan)
        self.model[lease.run_id].events += 1

    @rule(run_id=st.sampled_from(RUNS))
    def signal(self, run_id: str) -> None:
        self.apply(plan_wake(self.states[run_id], now=self.now))
        self.model_wake(run_id)

    @rule(run_id=st.sampled_from(RUNS))
    def cancel(self, run_id: str) -> None:
        self.cancel_tree(run_id)

    def cancel_tree(self, run_id: str) -> None:
        counted = open_cleanups((r[2], r[4]) for r in self.journal[run_id])
        assert counted == self.model[run_id].cleanups
        plan = plan_cancel(self.states[run_id], now=self.now, cleanups=counted)
        self.apply(plan)
        m = self.model[run_id]
        if m.status in TERMINAL_STATUSES:
            assert not plan.cascade
            return
        if m.status == RunStatus.RUNNING and m.expires is not None and m.expires >= self.now:
            m.cancel_flag = True
            self.model_wake(run_id)
            m.status = RunStatus.RUNNING
        elif m.cleanups > 0:  # it cleans up when cancelled: woken, not ended
            m.cancel_flag = True
            self.model_wake(run_id)
            if m.status in PARKED:
                m.status = RunStatus.PENDING
            m.wake_at = None
            assert not plan.events
        else:
            m.status, m.cancel_flag, m.owner = RunStatus.CANCELLED, True, None
            m.expires = m.wake_at = None
            m.events += 1
            self.model_wake(PARENT[run_id])
        assert plan.cascade
        for child in (c for c in RUNS if PARENT[c] == run_id):
            self.cancel_tree(child)

    @rule(run_id=st.sampled_from(RUNS))
    def redrive(self, run_id: str) -> None:
        m = self.model[run_id]
        try:
            plan = plan_redrive(self.states[run_id], "0", now=self.now)
        except ConfigurationError:
            assert m.status != RunStatus.DEAD_LETTERED
            return
        assert m.status == RunStatus.DEAD_LETTERED
        self.apply(plan)
        m.status, m.cancel_flag = RunStatus.PENDING, False
        m.events += 1

    @rule(seconds=st.sampled_from([0.5, 3.0, 11.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def agrees_with_the_model(self) -> None:
        if not hasattr(self, "model"):
            return
        for run_id, m in self.model.items():
            s = self.states[run_id]
            assert (s.status, s.lease_owner, s.lease_token, s.lease_expires_at, s.wake_at,
                    s.cancel_requested, s.wake_requested, s.event_count) == (
                m.status, m.owner, m.token, m.expires, m.wake_at, m.cancel_flag,
                m.wake_flag, m.events), run_id

    @invariant()
    def one_current_lease_held_only_while_running(self) -> None:
        if not hasattr(self, "model"):
            return
        for run_id in RUNS:
            s = self.states[run_id]
            current = {(lease.owner, lease.token) for lease in self.leases
                       if lease.run_id == run_id and is_current(s, lease)}
            assert len(current) <= 1
            assert (s.status == RunStatus.RUNNING) == (s.lease_owner is not None)
            assert (s.lease_owner is None) == (s.lease_expires_at is None)

    @invariant()
    def journals_chain(self) -> None:
        if not hasattr(self, "model"):
            return
        for run_id, rows in self.journal.items():
            s = self.states[run_id]
            verify_events(run_id, [r[1:] for r in rows], count=s.event_count,
                          head=s.event_head)


class TerminalIsFinal(Runs):
    """The same machine, remembering each run's state once it ended: nothing changes a
    finished run but a redrive of a dead-lettered one."""

    @initialize()
    def remember(self) -> None:
        self.ended: dict[str, RunState] = {}

    def apply(self, plan: Plan) -> None:
        ended = self.ended.get(plan.before.run_id)
        if ended is not None and not (ended.status == RunStatus.DEAD_LETTERED
                                      and plan.after.status == RunStatus.PENDING):
            assert plan.after == ended and not plan.events and not plan.changed
        super().apply(plan)
        after = self.states[plan.before.run_id]
        if after.status in TERMINAL_STATUSES:
            self.ended[after.run_id] = after
        else:
            self.ended.pop(after.run_id, None)


TestRuns = Runs.TestCase
TestRuns.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestTerminalIsFinal = TerminalIsFinal.TestCase
TestTerminalIsFinal.settings = settings(max_examples=60, stateful_step_count=40,
                                        deadline=None)

