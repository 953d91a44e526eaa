"""One execution of one run: replay state, journal writes, and the outcome.

An execution starts when a worker claims a run's lease. It reads the run's journal,
calls the workflow function from the top with a fresh context (the caller makes it:
:class:`stalwart.Context`, which sits above the engine; recorded steps return their
records), and ends in exactly one journal transaction that completes,
fails, cancels or parks the run and releases the lease. Every write carries the lease,
so an execution whose lease was taken over cannot change the run (fencing).

Writes are fenced by the store; effects are fenced here. Before a step's code runs (a
step, each attempt of a tool or model call — in ``_calls.guarded_call``, after its rate
limit and bulkhead waits —, a child's start, a signal's take), :meth:`Execution.fence`
makes sure the lease is still this execution's: a comparison on the runtime's clock
while the lease is more than ``Engine.lease_margin`` from its expiry, else a renewal
in the store, which raises :class:`~stalwart.errors.LeaseLostError` if another owner took
the run over. So a process that was paused (SIGSTOP, a GC stall, a suspended VM) past
its lease stops at its next step instead of running it beside the new owner.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import random
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from .._clock import race_event
from .._serde import encode, encode_error
from ..errors import (
    Cancelled,
    LeaseLostError,
    NonDeterminismError,
    ResilienceError,
    StalwartError,
    StoreError,
)
from ..store._base import (
    Event,
    EventKind,
    Finish,
    Lease,
    NewEvent,
    RunRecord,
    RunStatus,
    Store,
    open_cleanups,
)
from ._budget import Budget, RunBudget
from ._determinism import History, is_provisional, step_path
from ._engine import Engine
from ._interceptor import (
    NOOP,
    RunEndInput,
    RunStartInput,
    StepEndInput,
    StepStartInput,
)
from ._scope import (
    Scope,
    StepInfo,
    Suspend,
    bind_step,
    current_scope,
    set_scope,
    shielded,
    unbind_step,
)
from ._workflow import Workflow

__all__ = ["Execution"]

log = logging.getLogger("stalwart.engine")

_OUTCOMES = (EventKind.STEP_COMPLETED, EventKind.STEP_FAILED)
_NOTE_EVENTS = frozenset({EventKind.TOOL_CALL_REPAIRED, EventKind.TOOL_CALL_REFUSED,
                          EventKind.TOOL_CALL_APPROVAL, EventKind.CONTEXT_WINDOW})
"""Notes about a model turn: its tool calls, keyed by the call's id, and what its
context window did, keyed by ``key`` (see :meth:`note`)."""
_STEP_EVENTS = frozenset({
    EventKind.STEP_COMPLETED, EventKind.STEP_FAILED, EventKind.ATTEMPT_FAILED,
    EventKind.TIMER_STARTED, EventKind.SIGNAL_WAIT_STARTED, EventKind.SIGNAL_RECEIVED,
    EventKind.SIGNAL_TIMED_OUT, EventKind.CHILD_STARTED,
})


class Execution:
    """The live state of a run while one worker executes it."""

    def __init__(self, engine: Engine, lease: Lease, run: RunRecord,
                 workflow: Workflow[Any, Any], events: list[Event], *,
                 store: Store | None = None, replay_only: bool = False) -> None:
        self.engine = engine
        """The services this execution uses (its runtime)."""
        self.store = store if store is not None else engine.store
        self.replay_only = replay_only
        """Replay the journal without running anything (``Runtime.replay``): a step that
        is not recorded parks the execution instead of running (see :meth:`go_live`)."""
        self.in_threads = 0
        """Synchronous steps of this run running in a thread now. A thread cannot be
        stopped: cancelling the run does not end them, so its lease is not handed back
        while one runs (another worker would run the step beside it)."""
        self._threads_lock = threading.Lock()
        self.unrecorded: list[tuple[str, str]] = []
        """In replay-only mode: the steps the code asked for that the journal lacks."""
        self.clock = engine.clock
        self.lease = lease
        self.run = run
        self.run_id = run.run_id
        self.workflow = workflow
        self.rng = random.Random(f"{run.run_id}:{lease.token}")
        self._read_journal(events)
        self.divergence: NonDeterminismError | None = None
        """The first certain divergence found: the run ends with it even if the workflow
        code caught it."""
        levels = [(level, b) for level, b in (("runtime", engine.budget),
                                               ("workflow", workflow.budget))
                  if isinstance(b, Budget)]
        self.budget = RunBudget(
            run_id=run.run_id, created_at=run.created_at, levels=levels,
            prices=engine.prices, clock=engine.clock, events=events,
            note=lambda step_id, key: engine.note_policy(
                run.run_id, step_id, "budget_exceeded", key))
        self.replaying = bool(self.recorded)
        self.cancel_requested = run.cancel_requested
        self.cancel_deferred = open_cleanups((e.kind, e.name) for e in events) > 0
        """The run holds a cleanup scope (``ctx.cleanup_on_cancel``): a cancel is
        delivered to its code, at its first live step, rather than at its start."""
        self.finished = False
        self.wakeup = asyncio.Event()
        self.cancelled = asyncio.Event()
        """Set when this process learns of a cancel (an in-memory sleep wakes on it)."""
        self.root_scope = Scope("")
        self.lease_lost = False
        """Set once this process knows the lease is gone (a heartbeat or a fence found it
        taken over, or this runtime claimed the run again): every later fence raises."""
        self.task: asyncio.Task[Any] | None = None
        """The task executing the run (the heartbeat cancels it when the lease is lost)."""
        self._fence_lock: asyncio.Lock | None = None
        # A replay-only execution (``Runtime.replay``) re-reads what was traced already.
        self.interceptor = NOOP if replay_only else engine.interceptor
        self.outcome: Finish | None = None

    def _read_journal(self, events: list[Event]) -> None:
        """What the journal holds: each step's events, redrives, notes, call timings,
        the fork origin; and the non-determinism detector over it."""
        self.fork_at: tuple[int, ...] | None = None
        self.fork_model: str | None = None
        self.recorded: dict[str, list[Event]] = {}
        self._redriven: dict[str, int] = {}
        self._call_started: dict[str, str] = {}
        self._noted: dict[tuple[str, str], str] = {}
        """The notes the journal holds, by (step id, key): their payloads (see
        :meth:`note`)."""
        self.redrives = 0
        """How many times ``dlq retry`` sent the run through again."""
        self.redriven_at: float | None = None
        for ev in events:
            if ev.kind == EventKind.RUN_REDRIVEN and ev.step_id is not None:
                # `dlq retry`: the step that dead-lettered the run runs again, afresh.
                self._redriven[ev.step_id] = ev.seq
                self.redrives += 1
                self.redriven_at = ev.created_at
                kept = [e for e in self.recorded.get(ev.step_id, ())
                        if e.kind != EventKind.STEP_FAILED]
                self.recorded[ev.step_id] = kept
            elif ev.step_id is not None and ev.kind in _STEP_EVENTS:
                self.recorded.setdefault(ev.step_id, []).append(ev)
            elif ev.kind in _NOTE_EVENTS and ev.step_id is not None:
                self._noted[(ev.step_id, _note_key(ev.payload))] = ev.payload or ""
            elif ev.kind in (EventKind.CALL_TIMED, EventKind.STEP_TIMED) and ev.step_id:
                self._call_started[ev.step_id] = ev.payload or ""
            elif ev.kind == EventKind.RUN_FORKED:
                fork = json.loads(ev.payload or "{}")
                self.fork_at = step_path(str(fork.get("at", "")))
                self.fork_model = fork.get("model")
        self.recorded = {k: v for k, v in self.recorded.items() if v}
        self.history = (History(self.run_id, {k: v[0].name for k, v in self.recorded.items()})
                        if self.recorded else None)
        """The non-determinism detector over this run's journal (``None``: nothing is
        recorded, every step is new)."""

    def next_step_id(self) -> str:
        """The id the next step begun in the calling scope (this branch) will get."""
        return current_scope(self.root_scope).peek()

    def go_live(self, step_id: str, name: str) -> None:
        """The step ``step_id`` is about to run for real (it has no recorded outcome):
        a new step, a call that had failed attempts, or a recorded wait going on.

        The non-determinism detector is asked first (:mod:`stalwart.engine._determinism`): a
        step that does not fit the journal raises :class:`NonDeterminismError` before
        anything of it runs. In replay-only mode nothing may run: a step the journal
        lacks is noted as unrecorded, and this branch of the workflow parks (a
        ``gather``'s other branches go on replaying); a recorded wait parks it too."""
        if self.cancel_requested and not shielded():
            raise Cancelled()  # the cancel stops the run here (see _cancel)
        if self.divergence is not None:
            raise self.divergence  # the code caught it and went on: still refused
        if self.history is not None:
            err = self.history.check_live(step_id, name)
            if err is not None:
                raise self.diverged(err)
        if self.replay_only:
            if step_id not in self.recorded:
                self.unrecorded.append((step_id, name))
            raise Suspend(RunStatus.WAITING, None)
        self.replaying = False
        # Timers and signal waits are no spans: they have no outcome to end one.
        if self.interceptor.active and name != "stalwart.sleep" and not name.startswith(
                "signal:"):
            self.interceptor.step_started(StepStartInput(
                self.run_id, step_id, name, self.first_seen(step_id)))

    def diverged(self, err: NonDeterminismError) -> NonDeterminismError:
        """Note a divergence the detector found; returns it, to be raised."""
        if self.divergence is None and not is_provisional(err):
            self.divergence = err
        return err

    def _check_end(self, how: str) -> None:
        """The workflow code finishes or parks the run: it must have reached every
        recorded step (and not have caught a divergence)."""
        if self.divergence is not None:
            raise self.divergence
        if self.history is not None:
            err = self.history.check_end(how)
            if err is not None:
                raise self.diverged(err)

    def first_seen(self, step_id: str) -> float | None:
        """When step ``step_id`` began, as the journal tells (``None``: not recorded): its
        call's recorded start (``call_timed``), else its first event's time."""
        events = self.recorded.get(step_id)
        if not events:
            return None
        timed = self._call_started.get(step_id)
        if timed:
            try:
                started = json.loads(timed).get("started_at")
            except (ValueError, AttributeError):
                started = None
            if isinstance(started, int | float):
                return float(started)
        return events[0].created_at

    def model_override(self, step_id: str) -> str | None:
        """The model a fork runs agent turns at and after its fork point with."""
        if self.fork_model is None or self.fork_at is None:
            return None
        return self.fork_model if step_path(step_id) >= self.fork_at else None

    def redriven_after(self, step_id: str) -> int:
        """The journal position after which this step's attempts count (0: all)."""
        return self._redriven.get(step_id, 0)

    # -- the lease -------------------------------------------------------------------

    async def fence(self) -> None:
        """Raise :class:`LeaseLostError` unless this execution still holds its lease;
        called before any step's code runs (see the module docstring).

        The fast path is one comparison on the runtime's clock: no other worker may
        claim the run before the lease expires, and a healthy heartbeat keeps it more
        than ``lease_margin`` ahead. A heartbeat that failed or came late leaves the
        expiry where it was, and a pause moves the clock past it, so either one sends the
        next step to the store: the lease is renewed there, or found taken over."""
        if self.lease_lost:
            raise self._lost()
        if self.clock.now() < self.lease.expires_at - self.engine.lease_margin:
            return
        if self._fence_lock is None:
            self._fence_lock = asyncio.Lock()
        async with self._fence_lock:  # one round trip for concurrent gather branches
            if self.lease_lost:
                raise self._lost()
            now = self.clock.now()
            if now < self.lease.expires_at - self.engine.lease_margin:
                return  # another branch renewed it meanwhile
            renewed = await self.store.renew([self.lease], now=now,
                                             lease_seconds=self.engine.lease_seconds)
            lease = renewed.get(self.run_id)
            if lease is None:
                self.lease_lost = True
                raise self._lost()
            self.lease = lease

    def _lost(self) -> LeaseLostError:
        lease = self.lease
        return LeaseLostError(
            f"run {self.run_id}: lease {lease.owner}#{lease.token} is no longer current "
            "(another owner took the run over); this execution runs nothing more",
            run_id=self.run_id)

    def lease_doubtful(self) -> bool:
        """Whether the lease may have lapsed, by this thread's reading of the clock (a
        synchronous step checks it once its thread starts: it may have queued)."""
        return self.lease_lost or (
            self.clock.now() >= self.lease.expires_at - self.engine.lease_margin)

    # -- journal ---------------------------------------------------------------------

    async def record(self, events: list[NewEvent], finish: Finish | None = None) -> None:
        result = await self.store.append(self.lease, events, now=self.clock.now(),
                                         finish=finish)
        self.engine.journal_written(self.run_id)
        if result.cancel_requested:
            self.cancel()
        self._steps_ended(events)

    def _steps_ended(self, events: list[NewEvent]) -> None:
        """Tell the interceptor of the step outcomes among ``events`` (just recorded)."""
        if self.interceptor.active:
            for ev in events:
                if ev.kind in _OUTCOMES and ev.step_id is not None:
                    self.interceptor.step_ended(StepEndInput(
                        self.run_id, ev.step_id, ev.name or "",
                        ev.payload if ev.kind == EventKind.STEP_FAILED else None))

    async def note(self, event: NewEvent, *, key: str) -> None:
        """Journal ``event``, a note about step ``event.step_id`` written after its
        outcome (a tool call repaired), unless the journal holds it already: a replay
        reaches the same note again. A replay-only execution writes nothing."""
        assert event.step_id is not None
        if self.replay_only or (event.step_id, key) in self._noted:
            return
        await self.record([event])
        self._noted[(event.step_id, key)] = event.payload or ""

    def recorded_note(self, step_id: str, key: str) -> str | None:
        """The payload of the note ``key`` about ``step_id`` the journal holds (``None``:
        none), so that a replay can check it decides as the recorded run did."""
        return self._noted.get((step_id, key))

    async def take_signal(self, name: str, step_id: str) -> str | None:
        self.wakeup.clear()
        await self.fence()
        taken = await self.store.take_signal(self.lease, name, step_id, now=self.clock.now())
        if taken is not None:
            self.engine.journal_written(self.run_id)
        return taken

    async def create_child(self, child_id: str, step_id: str, step_name: str,
                           workflow: Workflow[Any, Any], args: tuple[Any, ...],
                           kwargs: dict[str, Any], also: list[NewEvent] | None = None,
                           ) -> None:
        """Create the child run ``child_id``, journaling its start (and ``also``, in
        the same transaction) at ``step_id`` of this run."""
        self.engine.register(workflow)
        text = workflow.encode_input(args, kwargs)
        await self.fence()
        started = [NewEvent(EventKind.CHILD_STARTED, step_id, step_name, child_id),
                   *(also or ())]
        await self.store.create_run(
            run_id=child_id, workflow=workflow.name, input=text, now=self.clock.now(),
            workflow_ref=workflow.ref, parent=self.lease, parent_step_id=step_id,
            parent_events=started)
        self._steps_ended(started)
        self.engine.journal_written(self.run_id)
        self.engine.poke()

    async def child_settled(self, child_id: str) -> RunRecord:
        self.wakeup.clear()
        child = await self.store.get_run(child_id)
        if child is None:
            raise LeaseLostError(f"child run {child_id} vanished", run_id=self.run_id)
        return child

    # -- waiting ---------------------------------------------------------------------

    async def wait_until(self, wake_at: float, status: RunStatus) -> None:
        if self.replay_only:
            return  # a recorded timer: replay does not wait for it
        shield = shielded()
        while True:
            remaining = wake_at - self.clock.now()
            if remaining <= 0:
                return
            if shield:  # cleanup under a cancel: waits in memory, to its end
                await self.clock.sleep(remaining)
                continue
            if self.cancel_requested:  # before parking: a recorded sleep too
                raise Cancelled()
            if remaining > self.engine.park_after:
                raise Suspend(status, wake_at)
            # Sleep in memory, but not through a cancel: one sent here sets the event,
            # one sent from another process is read from the store at each poll.
            woken = await race_event(self.cancelled, self.clock,
                                     min(remaining, self.engine.poll_interval))
            if not woken and self.clock.now() < wake_at:
                await self.cancel_was_requested()

    def cancel(self) -> None:
        """This run's cancel was requested: it stops at its next step or wait."""
        self.cancel_requested = True
        self.cancelled.set()
        self.wakeup.set()

    async def cancel_was_requested(self) -> bool:
        """Whether this run's cancel was requested, as known here or in the store (a
        cancel sent from another process is otherwise seen only at this run's next
        write)."""
        if not self.cancel_requested:
            rec = await self.store.get_run(self.run_id)
            self.cancel_requested = rec is not None and rec.cancel_requested
        return self.cancel_requested

    def _stop_if_cancelled(self) -> None:
        if self.cancel_requested and not shielded():
            raise Cancelled()  # the cancel stops the run here (see _cancel)

    async def wait_for_wakeup(self, deadline: float | None, since: float) -> None:
        """Wait in memory for a wake-up (a local signal or child ending) or for the next
        poll, for at most ``park_after`` seconds since ``since`` (monotonic) in all; then
        park the run until ``deadline`` or the next wake-up. Callers re-check the store
        after each return, so wake-ups from other processes are seen within a poll.

        A cancel sent here (:meth:`cancel` sets the wake-up) stops the run at once, as
        at a step, not when the wait would have parked; under a cleanup scope the
        wait goes on."""
        self._stop_if_cancelled()
        now = self.clock.monotonic()
        budget = min(self.engine.poll_interval, since + self.engine.park_after - now)
        if deadline is not None:
            budget = min(budget, deadline - self.clock.now())
        if budget > 0:
            await race_event(self.wakeup, self.clock, budget)
            self._stop_if_cancelled()
            return
        if deadline is not None and self.clock.now() >= deadline:
            return
        raise Suspend(RunStatus.WAITING, deadline)

    # -- running steps ---------------------------------------------------------------

    async def invoke(self, info: StepInfo, fn: Callable[..., Any], args: tuple[Any, ...],
                     kwargs: dict[str, Any], *, is_async: bool, handle: Any = None) -> Any:
        """Call the user's ``fn`` for a step or tool (``handle``: its tool call's, from
        the interceptor), in a thread unless it is async. Fenced first (:meth:`fence`)."""
        await self.fence()
        token = bind_step(info)
        try:
            with self.interceptor.activated(info.run_id, info.step_id, handle):
                if is_async:
                    return await fn(*args, **kwargs)
                cctx = contextvars.copy_context()
                loop = asyncio.get_running_loop()
                with self.clock.activity():  # a virtual clock must not jump past a thread
                    return await loop.run_in_executor(
                        self.engine.thread_pool,
                        functools.partial(self._in_thread, info.step_id, cctx, fn, args, kwargs))
        finally:
            unbind_step(token)

    def _in_thread(self, step_id: str, cctx: contextvars.Context, fn: Callable[..., Any],
                   args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A synchronous step, on a pool thread: counted while it runs (only once it has
        started: one still queued is cancelled with the pool and never runs)."""
        with self._threads_lock:
            self.in_threads += 1
        try:
            if self.lease_doubtful():
                # It waited for a thread past the fence's margin: no heartbeat renewed
                # the lease meanwhile (or one found it lost). The fence is async; here
                # the step is refused, and the execution ends as after a lost lease (this
                # runtime or another claims the run again).
                raise LeaseLostError(
                    f"run {self.run_id}: its lease may have lapsed while step "
                    f"{step_id} waited for a thread; the step was not run",
                    run_id=self.run_id)
            return cctx.run(fn, *args, **kwargs)
        finally:
            with self._threads_lock:
                self.in_threads -= 1

    # -- the whole run ---------------------------------------------------------------

    async def execute(self, ctx: object) -> RunStatus | None:
        """Run the workflow with ``ctx`` (its context) to its next resting point; returns
        the status it reached, or ``None`` if the lease was lost (nothing more was
        written)."""
        set_scope(self.root_scope)
        self.interceptor.run_started(RunStartInput(self.run, resumed=bool(self.recorded),
                                                   redrives=self.redrives,
                                                   redriven_at=self.redriven_at))
        try:
            return await self._outcome_of(self._run_workflow(ctx))
        except LeaseLostError as exc:
            log.warning("run %s: lease lost, execution abandoned: %s", self.run_id, exc)
            return None
        finally:
            self.finished = True
            out = self.outcome
            self.interceptor.run_ended(RunEndInput(
                self.run, out.status if out is not None else None,
                out.error if out is not None else None))

    async def _run_workflow(self, ctx: object) -> Any:
        if self.cancel_requested and not self.cancel_deferred:
            raise Cancelled()
        args, kwargs = self.workflow.decode_input(self.run.input)
        return await self.workflow.fn(ctx, *args, **kwargs)

    async def _outcome_of(self, running: Awaitable[Any]) -> RunStatus:
        """Await the workflow and journal how it ended (completed, parked, cancelled,
        failed or dead-lettered) in the transaction that releases the lease."""
        try:
            try:
                result = await running
            except Suspend as park:
                self._check_end("parks the run")
                await self._finish([NewEvent(EventKind.RUN_SUSPENDED, name=str(park.status),
                                             payload=None if park.wake_at is None
                                             else repr(park.wake_at))],
                                   Finish(park.status, wake_at=park.wake_at))
                return park.status
            self._check_end("finishes")
            text = encode(result, self.workflow.result_type,
                          what=f"result of workflow {self.workflow.name}")
            await self._finish([NewEvent(EventKind.RUN_COMPLETED, payload=text)],
                               Finish(RunStatus.COMPLETED, result=text))
            return RunStatus.COMPLETED
        except Cancelled:
            await self._finish([NewEvent(EventKind.RUN_CANCELLED)],
                               Finish(RunStatus.CANCELLED))
            return RunStatus.CANCELLED
        except (asyncio.CancelledError, StoreError, LeaseLostError):
            # A journal failure is no outcome of the run: recording one (had the store
            # come back meanwhile) would fail a run over a database restart.
            raise
        except Exception as exc:
            return await self._failed(exc)

    async def _failed(self, exc: Exception) -> RunStatus:
        """Journal the run's failure. A run that exhausted its resilience policies goes
        to the dead-letter queue, from where ``stalwart dlq retry`` can send it through
        again. So does one whose code no longer matches its journal: it waits there for
        the code to be fixed or rolled back (Temporal keeps retrying such a workflow
        task), not failed for good by a deploy."""
        if isinstance(exc, StalwartError):
            exc = exc.located(run_id=self.run_id)
        info = encode_error(exc).to_json()
        dead = isinstance(exc, ResilienceError | NonDeterminismError)
        kind, status = ((EventKind.RUN_DEAD_LETTERED, RunStatus.DEAD_LETTERED) if dead
                        else (EventKind.RUN_FAILED, RunStatus.FAILED))
        step_id = exc.step_id if isinstance(exc, StalwartError) else None
        await self._finish([NewEvent(kind, step_id=step_id, payload=info)],
                           Finish(status, error=info))
        return status

    async def _finish(self, events: list[NewEvent], finish: Finish) -> None:
        self.finished = True
        await self.store.append(self.lease, events, now=self.clock.now(), finish=finish)
        self.outcome = finish
        self.engine.journal_written(self.run_id)


def _note_key(payload: str | None) -> str:
    try:
        info = json.loads(payload or "{}")
        return str(info.get("call_id", info.get("key", "")))
    except (ValueError, AttributeError):
        return ""

