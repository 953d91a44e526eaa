"""The runtime: the public face of the engine (a client, and by default a worker).

A :class:`Runtime` is both the client (start runs, signal, cancel, read results) and, by
default, a worker: on first use it opens the store and starts its
:class:`~stalwart.engine._worker.Worker`, which claims ready runs — new ones, parked ones
whose time has come, and those whose owner died — and executes them, each with a
:class:`~stalwart.Context`. What executions share (store, clock, registries, models,
interceptor) is the :class:`~stalwart.engine._engine.Engine` a runtime is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import importlib
import json
import logging
import math
import os
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Concatenate, Generic, Literal, ParamSpec, TypeVar, final, overload

from ._clock import Clock, race_event
from ._context import ActorContext, Context
from ._schedule import Schedule, make_schedule, run_schedule
from ._serde import ErrorInfo, decode, encode, input_hash, rebuild_error, return_type
from .engine._actor import (
    Actor,
    ActorMessage,
    Turn,
    actor_of,
    actor_run_id,
    check_key,
    deliver,
    message_body,
)
from .engine._approval import (
    ApprovalRequest,
    Decision,
    decision_signal,
    find_requests,
    judge,
    waiting,
)
from .engine._budget import Budget
from .engine._cost import Prices, UsageReport, usage_report
from .engine._engine import Engine, PolicyNote, Settings, open_store
from .engine._execution import Execution
from .engine._interceptor import Instrumentation
from .engine._policy import INHERIT, Policy, _Inherit
from .engine._stream import follow_events
from .engine._timetravel import ReplayReport, fork_run, replay_run
from .engine._tools import Effect, Tool
from .engine._worker import Worker
from .engine._workflow import Workflow
from .errors import (
    ActorError,
    ApprovalConflictError,
    ConfigurationError,
    IdempotencyConflictError,
    RunCancelledError,
    RunFailedError,
    SignalTimeoutError,
    StoreError,
    WorkflowNotFoundError,
)
from .models import Model
from .store._base import TERMINAL_STATUSES, Event, EventKind, RunRecord, RunStatus, Store

__all__ = ["PolicyNote", "RunHandle", "Runtime", "open_store", "runtime_of"]

log = logging.getLogger("stalwart.runtime")

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")
M = TypeVar("M")

IfExists = Literal["compare", "return"]
"""What ``start`` does with a run id that exists: compare inputs, or return the run."""

_INSTANCES_KEPT = 100_000
"""How many actor instances a runtime remembers as existing (a send to one it does not
remember makes it first, idempotently: one more round trip)."""

_HOMES: weakref.WeakKeyDictionary[Workflow[Any, Any], Runtime] = weakref.WeakKeyDictionary()


def runtime_of(workflow: Workflow[Any, Any]) -> Runtime | None:
    """The runtime whose ``@runtime.workflow`` made ``workflow``, if one did. The CLI
    executes its runs (``stalwart run``, ``resume``, ``worker``, ``runs fork``, ``dlq
    retry``) with that runtime's settings: its budget, models, prices, policies, tracing
    and, unless ``--store`` says otherwise for ``run`` and ``worker``, its journal."""
    return _HOMES.get(workflow)


def import_ref(ref: str) -> Any:
    """Import ``module:qualname`` (a reference the caller gave, never one read from a
    journal) and return the object."""
    module_name, _, qualname = ref.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


_UNFINISHED = (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.WAITING)


def _check_existing(rec: RunRecord, workflow: str, text: str, if_exists: IfExists) -> None:
    """Refuse to hand back an existing run that is not the one the caller asked for."""
    existing, given = input_hash(rec.input), input_hash(text)
    if rec.workflow != workflow:
        problem = f"is already used by a run of workflow {rec.workflow!r}"
    elif if_exists == "compare" and existing != given:
        problem = (f"is already used by a run started with other input (sha256 "
                   f"{existing[:12]}…, now {given[:12]}…); the same id with the same input "
                   'returns that run, if_exists="return" (stalwart run --if-exists return) '
                   "returns it whatever its input")
    else:
        return
    raise IdempotencyConflictError(
        f"run id {rec.run_id!r} {problem}", workflow=rec.workflow,
        existing_input_hash=existing, input_hash=given, run_id=rec.run_id)


@final
class RunHandle(Generic[R]):
    """A started run: wait for its result, or signal or cancel it."""

    def __init__(self, runtime: Runtime, run_id: str, created: bool = True) -> None:
        self.runtime = runtime
        self.run_id = run_id
        self.created = created
        """False when ``start`` found an existing run with the same id."""

    def __repr__(self) -> str:
        return f"<RunHandle {self.run_id}>"

    async def status(self) -> RunStatus:
        return (await self.runtime.get_run(self.run_id)).status

    async def result(self, *, timeout: float | None = None) -> R:
        """Wait for the run to end and return its result.

        Raises:
            RunFailedError: the run failed (``__cause__`` is the original error when it
                can be rebuilt).
            RunCancelledError: the run was cancelled.
            TimeoutError: ``timeout`` seconds (of the runtime's clock) passed first.

        The result is the run's, whichever worker finished it. In a process whose own
        execution of the run was taken over (it was paused past its lease), it returns
        once that execution has stopped: nothing of it runs after ``result()`` returns.
        """
        rec = await self.runtime.wait_for_end(self.run_id, timeout=timeout)
        return self.runtime.outcome(rec)  # type: ignore[no-any-return]

    async def signal(self, name: str, payload: Any = None) -> None:
        await self.runtime.signal(self.run_id, name, payload)

    def events(self, *, after: int = 0, poll: float | None = None) -> AsyncIterator[Event]:
        """The run's journal events as they are written, from the one after sequence
        number ``after`` (0: from the start), ending with the event that ends the run.

        It follows the run wherever it executes: here (each write wakes it at once), in
        a worker elsewhere (PostgreSQL's notifications wake it; it also polls the store
        every ``poll`` seconds, by default the runtime's ``poll_interval``), or not at
        all (an ended run's journal is read and the stream ends). A parked run's stream
        waits, as the run does. The event kinds are :class:`~stalwart.store.EventKind`'s
        (``docs/events.md`` says what each one means)::

            async for event in handle.events():
                print(event.seq, event.kind, event.step_id, event.name)
        """
        return self._events(after, poll)

    async def _events(self, after: int, poll: float | None) -> AsyncIterator[Event]:
        await self.runtime.open()
        async for event in follow_events(self.runtime, self.run_id, after=after, poll=poll):
            yield event

    async def cancel(self) -> None:
        await self.runtime.cancel(self.run_id)


@final
class Runtime(Engine):
    """Runs durable workflows on a journal store.

    Args:
        store: a :class:`Store`, a path or ``sqlite:///PATH`` for the embedded SQLite
            journal, or ``postgresql://...``; default ``$STALWART_STORE`` or
            ``./.stalwart/stalwart.db``.
        clock: the time source (tests pass a :class:`~stalwart.FakeClock`).
        worker: execute runs in this process (default). ``False`` makes a pure client.
        concurrency: runs executed at once by this runtime.
        lease_seconds: how long a claim lasts without a heartbeat. The heartbeat renews
            leases every third of it; a step starts without asking the store only while
            its lease has more than :attr:`lease_margin` (a third) left, else it renews
            the lease first, or stops if another owner took the run over.
        poll_interval: how often to look for work other processes made ready.
        park_after: a sleep or wait longer than this parks the run (its task ends and
            it is woken from the store); shorter ones wait in memory.
        thread_pool_size: threads for synchronous steps.
        budget: limits on what each run may spend (tokens, cost, calls, seconds); a
            workflow's and an agent's own budgets apply on top.
        prices: model prices for cost accounting and ``max_cost``: overrides over the
            built-in table, a :class:`~stalwart.PriceTable`, or a function
            ``(provider, model) -> Price | None``.
        policy: resilience policies for every model and tool call (over
            :data:`~stalwart.DEFAULT_POLICY`); agents, tools and calls refine it.
        models: model instances by spec (``{"sim:demo": SimulatedModel(...)}``), used
            instead of building one from the spec.
        pools: execute only runs of workflows in these worker pools
            (``@app.workflow(pool="gpu")``; a workflow without one is in ``"default"``).
            ``None`` (default) serves every registered workflow.
        limits: where bulkheads and rate limits keep their state: ``"cluster"`` in the
            store, shared by every worker on it (ten workers do not get ten times a
            provider's quota); ``"local"`` in this process; ``"auto"`` (default) is
            cluster on PostgreSQL and local on the embedded stores. Circuit breakers are
            always per worker.
        tracing: trace every run with OpenTelemetry (``stalwart.telemetry.Tracing()``,
            the ``otel`` extra); ``None`` (default): no tracing, at no cost.
        register_worker: while it executes runs, list this process in the store's
            workers registry (``stalwart workers list``), with heartbeats. The CLI's
            one-shot commands (``run``, ``resume``, ``runs fork``, ``dlq retry``) pass
            ``False``: their leases still carry host and pid, but they are not workers.
    """

    def __init__(
        self,
        store: Store | str | os.PathLike[str] | None = None,
        *,
        clock: Clock | None = None,
        worker: bool = True,
        concurrency: int = 100,
        lease_seconds: float = 30.0,
        poll_interval: float = 1.0,
        park_after: float = 5.0,
        thread_pool_size: int = 32,
        budget: Budget | None = None,
        prices: Prices | None = None,
        policy: Policy | None = None,
        models: Mapping[str, Model] | None = None,
        pools: Collection[str] | None = None,
        limits: Literal["auto", "cluster", "local"] = "auto",
        tracing: Instrumentation | None = None,
        register_worker: bool = True,
    ) -> None:
        settings = Settings(
            clock=clock, concurrency=concurrency, lease_seconds=lease_seconds,
            poll_interval=poll_interval, park_after=park_after,
            thread_pool_size=thread_pool_size, budget=budget, prices=prices, policy=policy,
            models=dict(models or {}), pools=pools, limits=limits, tracing=tracing,
            register_worker=register_worker)
        # A client (worker=False) reads the journal read-only until it first writes.
        super().__init__(open_store(store, access="write" if worker else "client"),
                         settings, worker=worker)
        self._store_arg = store
        """What the store was made from (``client()`` and the CLI open their own from a URL
        or path; ``None``: ``$STALWART_STORE`` or the default)."""
        self._worker = Worker(self, Context)
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        """The event loop the runtime was opened in: its tasks and store live there."""
        self._instances: set[str] = set()
        """Actor instances known to exist (sent to): ``send`` makes no other first."""
        self._schedules: list[Schedule] = []

    # -- registration ----------------------------------------------------------------

    @overload
    def workflow(self, fn: Callable[Concatenate[Context, P], Awaitable[R]], /
                 ) -> Workflow[P, R]: ...

    @overload
    def workflow(self, fn: None = None, /, *, name: str | None = None,
                 pool: str | None = None, budget: Budget | None = None,
                 ) -> Callable[[Callable[Concatenate[Context, P], Awaitable[R]]],
                               Workflow[P, R]]: ...

    def workflow(self, fn: Callable[Concatenate[Context, P], Awaitable[R]] | None = None, /,
                 *, name: str | None = None, pool: str | None = None,
                 budget: Budget | None = None,
                 ) -> (Workflow[P, R] | Callable[
                     [Callable[Concatenate[Context, P], Awaitable[R]]], Workflow[P, R]]):
        """Register an async function ``(ctx, ...)`` as a workflow (a decorator, with or
        without arguments). ``pool`` names the worker pool whose workers execute its
        runs; ``budget`` limits what each of its runs may spend (on top of the
        runtime's). The :class:`~stalwart.Workflow` it returns keeps the function's
        parameters (after the context) and result type: ``app.start``, ``app.run`` and
        ``ctx.child`` are checked against them by a type checker."""

        def deco(f: Callable[Concatenate[Context, P], Awaitable[R]]) -> Workflow[P, R]:
            wf: Workflow[P, R] = Workflow(f, name=name, pool=pool, budget=budget)
            self.register(wf)
            _HOMES[wf] = self
            return wf

        return deco(fn) if fn is not None else deco

    def scheduled(self, cron: str, *, catchup: timedelta = timedelta(0), tz: str = "UTC",
                  ) -> Callable[[Workflow[P, R]], Workflow[P, R]]:
        """Start a run of the workflow below at each tick of ``cron`` (placed over
        ``@app.workflow``; the workflow takes ``(ctx, scheduled_at: datetime)``, the
        tick, UTC-aware). ``tz`` is the zone the expression is read in (default UTC).

        Each tick is one run, id ``schedule:{workflow}:{tick ISO}``, started with
        ``if_exists="return"`` by every worker runtime of a fleet: it runs once. A tick
        whose previous run still runs is started all the same. After downtime, ticks
        missed within ``catchup`` are started, oldest first; older ones are skipped
        (logged). Declare it before the runtime opens; a client runtime starts none.

        Raises:
            ConfigurationError: an invalid cron expression or zone, a negative
                ``catchup``, a workflow that does not take ``(ctx, scheduled_at)``.
        """

        def deco(wf: Workflow[P, R]) -> Workflow[P, R]:
            if not isinstance(wf, Workflow):
                raise ConfigurationError("@app.scheduled goes over @app.workflow")
            self._schedules.append(make_schedule(wf, cron, catchup, tz))
            self.register(wf)
            return wf

        return deco

    async def _start_tick(self, schedule: Schedule, tick: datetime) -> None:
        await self.start(schedule.workflow, tick, run_id=schedule.run_id(tick),
                         if_exists="return")

    @property
    def schedules(self) -> list[Schedule]:
        """The schedules declared on this runtime."""
        return list(self._schedules)

    def actor(self, *, state: Callable[[], S], name: str | None = None,
              ) -> Callable[[Callable[[ActorContext[S], M], Awaitable[R]]], Actor[S, M, R]]:
        """Declare an actor (a virtual object): ``async def handler(ctx, message)``, with
        ``ctx`` an :class:`~stalwart.ActorContext`. Each key is an instance with its own
        durable state (``state()`` is a new instance's: a type such as ``int`` or a
        pydantic model, or a function) and mailbox, made by the first message to it. An
        instance handles one message at a time, in the order they were sent, each once,
        on whichever worker of a fleet holds it; its state is committed with each
        message's acknowledgement. Send with :meth:`send`, ``ctx.send`` and ``ctx.ask``.
        Declare it in every process that sends to it or runs it (``name``: default the
        function's)."""
        state_type: Any = state if isinstance(state, type) else return_type(state)

        def deco(fn: Callable[[ActorContext[S], M], Awaitable[R]]) -> Actor[S, M, R]:
            found: Actor[S, M, R] = Actor(fn, state=state, state_type=state_type, name=name,
                                          make_context=_actor_context)
            self.register(found.workflow)
            self.register(found.asker)
            _HOMES[found.workflow] = self
            return found

        return deco

    async def send(self, actor: Actor[Any, M, Any] | str, key: str | int, message: M, /, *,
                   message_id: str | None = None) -> str:
        """Put ``message`` into the mailbox of instance ``key`` of ``actor`` (made if new)
        and return its id. ``message_id`` is its idempotency key: sending again with the
        same id (a retry after an error or a crash) is handled once. Without one, each
        call is a new message.

        Raises:
            ActorNotFoundError: ``actor`` is not declared on this runtime; nothing sent.
            ActorKeyError: ``key`` is not a str or int (or bad text); nothing sent.
            SerializationError: ``message`` cannot be stored or is not of the handler's
                message type; nothing sent.
        """
        found = actor_of(self, actor)
        text_key = check_key(key, found.name)
        body = message_body(found, message)
        if message_id is not None and (not isinstance(message_id, str) or not message_id):
            raise ConfigurationError(f"message_id must be a non-empty str, not {message_id!r}")
        mid = message_id or f"m-{uuid.uuid4().hex}"
        await self.open()
        run_id = actor_run_id(found.name, text_key)
        # Instances are never deleted: one this runtime made or sent to exists.
        await deliver(self.store, found, text_key, ActorMessage(mid, body),
                      now=self.clock.now(), exists=run_id in self._instances)
        if len(self._instances) < _INSTANCES_KEPT:
            self._instances.add(run_id)
        self.wake_local(run_id)
        self.journal_written(run_id)
        self.poke()
        return mid

    async def ask(self, actor: Actor[Any, M, R] | str, key: str | int, message: M, /, *,
                  timeout: float | None = None, ask_id: str | None = None) -> R:
        """Send ``message`` to instance ``key`` of ``actor`` and return the handler's
        reply: :meth:`send` with an answer. The ask is a run of its own (workflow
        ``actor:{name}:ask``, run id ``ask:{name}:{key}:{ask_id}``) doing ``ctx.ask``, so
        it is as durable as one made in a workflow: a crash of this process or of the
        instance's worker loses neither the message nor the reply, and another process
        finishes the run. ``ask_id`` is its idempotency key: asking again with the same
        id (after a crash, or after this call was interrupted) sends nothing new and
        answers what the first ask answered, reply or error. Without one, each call is
        a new message.

        Raises:
            ActorNotFoundError: ``actor`` is not declared on this runtime; nothing sent.
            ActorKeyError: ``key`` is not a str or int (or bad text); nothing sent.
            SerializationError: ``message`` cannot be stored or is not of the handler's
                message type; nothing sent.
            ActorError: the handler raised (``__cause__`` is its error, rebuilt).
            SignalTimeoutError: no reply within ``timeout`` seconds (the message stays
                sent).
        """
        found = actor_of(self, actor)
        text_key = check_key(key, found.name)
        body = message_body(found, message)
        if ask_id is not None and (not isinstance(ask_id, str) or not ask_id):
            raise ConfigurationError(f"ask_id must be a non-empty str, not {ask_id!r}")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(
                timeout, int | float) or not 0 <= timeout < math.inf):
            raise ConfigurationError(f"ask: timeout must be a finite, non-negative number "
                                     f"of seconds or None, not {timeout!r}")
        run_id = f"ask:{found.name}:{text_key}:{ask_id or uuid.uuid4().hex}"
        try:
            reply = await self.run(found.asker, text_key, body, timeout, run_id=run_id,
                                   if_exists="return")
        except RunFailedError as exc:
            # The ask's own failure, as ctx.ask raises it (the run is an implementation
            # detail of the ask); anything else stays a failed run.
            if isinstance(exc.__cause__, ActorError | SignalTimeoutError):
                raise exc.__cause__ from exc.__cause__.__cause__
            raise
        return decode(json.dumps(reply), found.reply_type,  # type: ignore[no-any-return]
                      what=f"reply of actor {found.name!r}")

    async def actor_state(self, actor: Actor[S, Any, Any] | str, key: str | int) -> S:
        """The committed state of instance ``key`` of ``actor`` (a new instance's state
        when no message to it has been handled yet), read from its journal."""
        found = actor_of(self, actor)
        run_id = actor_run_id(found.name, check_key(key, found.name))
        await self.open()
        text = found.initial
        if await self.store.get_run(run_id) is not None:
            commit = f"actor:{found.name}.commit"
            for ev in reversed(await self.store.load_events(run_id)):
                if ev.kind == EventKind.STEP_COMPLETED and ev.name == commit:
                    text = json.dumps(json.loads(ev.payload or "{}")["state"])
                    break
        state: S = found.decode_state(text)
        return state

    def _like(self, store: Store | str | os.PathLike[str] | None = None, *,
              worker: bool = True, **overrides: Any) -> Runtime:
        """A new runtime made with this one's arguments (budget, models, prices, policy,
        tracing, clock, limits...) but ``overrides``, on ``store`` (default: this one's
        store object), knowing this one's workflows. The CLI executes a module's
        workflows with it: ``stalwart run app:wf`` must spend under ``app``'s budget and
        call ``app``'s models, not a bare runtime's."""
        settings = dataclasses.replace(self.settings, **overrides)
        fields = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
        fields["models"] = dict(settings.models)
        twin = Runtime(self.store if store is None else store, worker=worker, **fields)
        for wf in self.workflows.values():
            twin.register(wf)
        return twin

    def client(self, store: Store | str | os.PathLike[str] | None = None) -> Runtime:
        """A client of this runtime's journal: it knows these workflows and starts,
        signals, cancels and waits for their runs, but executes none (``worker=False``).

        This is what code that hands work to a fleet uses (a web handler, a cron job, a
        script): importing the module that made ``app`` and calling ``app.start`` would
        execute the run in that process, since a runtime is a worker by default. The
        client has this runtime's settings (its budget, prices, policies) and works on
        ``store``, by default on the same journal: a new connection to the same URL or
        file, or the same object when this runtime was given a store instance. Close it
        (``async with``) like any runtime; that leaves this one open.
        """
        if store is None:
            arg = self._store_arg
            store = (open_store(arg, access="client")
                     if arg is None or isinstance(arg, str | os.PathLike) else self.store)
        return self._like(store, worker=False)

    def import_workflows(self, refs: list[str]) -> None:
        """Import ``module:attribute`` references and register the workflows found."""
        for ref in refs:
            try:
                obj = import_ref(ref)
            except Exception as exc:
                raise WorkflowNotFoundError(f"cannot import {ref!r}: {exc}") from exc
            if not isinstance(obj, Workflow):
                raise WorkflowNotFoundError(f"{ref!r} is not a workflow")
            self.register(obj)

    def tool(self, fn: Any = None, /, *, name: str | None = None,
             description: str | None = None, policy: Policy | None = None,
             max_argument_bytes: int | _Inherit = INHERIT,
             max_argument_depth: int | _Inherit = INHERIT,
             effect: Effect = "write", scopes: Iterable[str] = ()) -> Any:
        """Make a function a :class:`~stalwart.Tool` (a decorator, with or without
        arguments); ``effect`` and ``scopes`` declare what it may do (least privilege)."""

        def deco(f: Callable[..., Any]) -> Tool[Any, Any]:
            return Tool(f, name=name, description=description, policy=policy,
                        max_argument_bytes=max_argument_bytes,
                        max_argument_depth=max_argument_depth, effect=effect, scopes=scopes)

        return deco(fn) if fn is not None else deco

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Runtime:
        await self.open()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def open(self) -> None:
        """Open the store and, for a worker, start executing (also recovers runs whose
        owner died). Called implicitly by the other methods."""
        if self._started:
            if self._loop is not asyncio.get_running_loop():
                # Its scheduler, heartbeat and store thread belong to that loop: waiting
                # on them from this one would never end.
                raise ConfigurationError(
                    "this runtime was opened in another event loop (an earlier "
                    "asyncio.run), whose tasks and store it keeps: make every call of a "
                    "runtime in one event loop (one asyncio.run), or a runtime per loop")
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            if self.closing:
                raise StoreError("the runtime is closed (by close(), the end of its async "
                                 "with, or run_sync, which closes it after its run): make a "
                                 "new Runtime for more")
            await self.store.open()
            self.wake = asyncio.Event()
            if self.worker:
                self._worker.start()
                self.listen_for_notifications()
                self.tasks.extend(asyncio.create_task(run_schedule(self, sch, self._start_tick),
                                                      name=f"sw-schedule-{sch.workflow.name}")
                                  for sch in self._schedules)
            self._loop = asyncio.get_running_loop()
            self._started = True

    async def close(self) -> None:
        """Stop executing and hand unfinished runs back (their leases are released when
        the store supports it, else they expire), then close the store."""
        if self.closing:
            return
        self.closing = True
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self._worker.stop(started=self._started)
        if self._started:
            await self.bulkheads.aclose()  # slot releases still on their way to the store
            await self.rate_limiters.aclose()
            await self.store.close()
        await self.close_models()
        self._started = False

    async def drain(self, grace: float) -> int:
        """Stop claiming runs and wait up to ``grace`` seconds (of the runtime's clock) for
        the executing ones to end or park; returns how many still execute.

        A graceful shutdown is ``drain`` then :meth:`close`, which hands the runs still
        executing back to the store: another worker replays them at once, and only their
        in-flight steps run again (with the same idempotency keys)."""
        return await self._worker.drain(grace)

    @property
    def in_flight(self) -> int:
        """How many runs this runtime is executing now."""
        return len(self._worker.active)

    @property
    def held_by_threads(self) -> list[str]:
        """Runs that :meth:`close` did not hand back because a synchronous step of theirs
        was still running in a thread (their leases expire instead)."""
        return list(self._worker.held_by_threads)

    def worker_record(self, *, stopped: bool = False) -> Any:
        """This runtime's row in the workers registry, as of now."""
        return self._worker.worker_record(stopped=stopped)

    # -- the client API --------------------------------------------------------------

    # With ``run_id=`` or ``if_exists=`` the arguments are not checked against the
    # workflow (its result type is): PEP 612 allows no keyword-only parameter between
    # ``*args: P.args`` and ``**kwargs: P.kwargs``.
    @overload
    async def start(self, workflow: Workflow[P, R], /, *args: P.args,
                    **kwargs: P.kwargs) -> RunHandle[R]: ...

    @overload
    async def start(self, workflow: Workflow[Any, R], /, *args: Any, run_id: str,
                    if_exists: IfExists = "compare", **kwargs: Any) -> RunHandle[R]: ...

    @overload
    async def start(self, workflow: Workflow[Any, R], /, *args: Any, run_id: str | None = None,
                    if_exists: IfExists, **kwargs: Any) -> RunHandle[R]: ...

    @overload
    async def start(self, workflow: str, /, *args: Any, run_id: str | None = None,
                    if_exists: IfExists = "compare", **kwargs: Any) -> RunHandle[Any]: ...

    async def start(self, workflow: Workflow[Any, Any] | str, /, *args: Any,
                    **kwargs: Any) -> RunHandle[Any]:
        """Start a run of ``workflow`` (a workflow object or its registered name).

        ``run_id`` is an idempotency key for the whole run, as Stripe's keys are for a
        request: starting again with the same id and the same input returns a handle to
        the existing run (``handle.created`` is False); with other input it raises
        :class:`~stalwart.IdempotencyConflictError`, unless ``if_exists="return"``,
        which returns the existing run whatever its input. Inputs are compared as
        canonical JSON (key order does not matter).

        Raises:
            IdempotencyConflictError: the id belongs to a run of another workflow, or
                (``if_exists="compare"``) to one started with other input.
        """
        run_id: str | None = kwargs.pop("run_id", None)
        if_exists: IfExists = kwargs.pop("if_exists", "compare")
        if if_exists not in ("compare", "return"):
            raise ConfigurationError(
                f'if_exists must be "compare" or "return", not {if_exists!r}')
        await self.open()
        wf = self.resolve(workflow) if isinstance(workflow, str) else workflow
        self.register(wf)
        text = wf.encode_input(args, kwargs)
        rid = run_id or uuid.uuid4().hex
        # The store returns the run that has the id, from the same transaction that did
        # not create it: comparing here holds also when two starts race.
        rec, created = await self.store.create_run(run_id=rid, workflow=wf.name, input=text,
                                                   now=self.clock.now(), workflow_ref=wf.ref)
        if not created:
            _check_existing(rec, wf.name, text, if_exists)
        self.poke()
        return RunHandle(self, rid, created)

    @overload
    async def run(self, workflow: Workflow[P, R], /, *args: P.args,
                  **kwargs: P.kwargs) -> R: ...

    @overload
    async def run(self, workflow: Workflow[Any, R], /, *args: Any, run_id: str,
                  if_exists: IfExists = "compare", **kwargs: Any) -> R: ...

    @overload
    async def run(self, workflow: Workflow[Any, R], /, *args: Any, run_id: str | None = None,
                  if_exists: IfExists, **kwargs: Any) -> R: ...

    @overload
    async def run(self, workflow: str, /, *args: Any, run_id: str | None = None,
                  if_exists: IfExists = "compare", **kwargs: Any) -> Any: ...

    async def run(self, workflow: Workflow[Any, Any] | str, /, *args: Any,
                  **kwargs: Any) -> Any:
        """Start a run (see :meth:`start`; ``run_id=`` and ``if_exists=`` as there) and
        wait for its result."""
        handle: RunHandle[Any] = await self.start(workflow, *args, **kwargs)
        return await handle.result()

    @overload
    def run_sync(self, workflow: Workflow[P, R], /, *args: P.args,
                 **kwargs: P.kwargs) -> R: ...

    @overload
    def run_sync(self, workflow: Workflow[Any, R] | str, /, *args: Any,
                 run_id: str, **kwargs: Any) -> R: ...

    @overload
    def run_sync(self, workflow: str, /, *args: Any, **kwargs: Any) -> Any: ...

    def run_sync(self, workflow: Workflow[Any, Any] | str, /, *args: Any,
                 **kwargs: Any) -> Any:
        """``run`` for synchronous code: an event loop for the duration of the call."""

        async def main() -> Any:
            try:
                return await self.run(workflow, *args, **kwargs)
            finally:
                await self.close()

        return asyncio.run(main())

    def handle(self, run_id: str) -> RunHandle[Any]:
        return RunHandle(self, run_id, created=False)

    async def get_run(self, run_id: str) -> RunRecord:
        await self.open()
        return await self.read_run(run_id)

    async def list_runs(self, *, status: RunStatus | None = None,
                        limit: int = 100) -> list[RunRecord]:
        await self.open()
        return await self.store.list_runs(status=status, limit=limit)

    async def events(self, run_id: str) -> list[Event]:
        await self.get_run(run_id)
        return await self.store.load_events(run_id)

    async def signal(self, run_id: str, name: str, payload: Any = None) -> RunRecord:
        """Send a signal; it is kept until a ``ctx.wait_for_signal(name)`` takes it."""
        await self.open()
        rec = await self.store.send_signal(run_id, name, encode(payload, what="signal payload"),
                                           now=self.clock.now())
        self.wake_local(run_id)
        self.journal_written(run_id)
        return rec

    # -- human approvals (ctx.approval) ----------------------------------------------

    async def approve(self, run_id: str, approval: str, *, by: str | None = None,
                      comment: str | None = None, token: str | None = None) -> Decision:
        """Approve the approval ``approval`` (its step id, or its name) of a run.

        ``token`` (from :meth:`approvals`) binds the decision to the payload that was
        shown: a different payload is refused. Approving again returns the decision
        already made; after a deny (or a timeout) it is refused. ``by`` defaults to the
        login name.

        Raises:
            RunNotFoundError: no such run.
            ApprovalNotFoundError: the run has no such approval.
            ApprovalConflictError: another payload, or the other decision was made.
        """
        return await self._decide(run_id, approval, True, by, comment, token)

    async def deny(self, run_id: str, approval: str, *, by: str | None = None,
                   comment: str | None = None, token: str | None = None) -> Decision:
        """Deny an approval; the mirror of :meth:`approve` (a deny is final too)."""
        return await self._decide(run_id, approval, False, by, comment, token)

    async def approvals(self, run_id: str | None = None, *,
                        limit: int = 1000) -> list[ApprovalRequest]:
        """Approvals waiting for a decision: of ``run_id``, or of every unfinished run
        (at most ``limit`` runs of each status are read), oldest first. A decision sent
        and not yet taken by its run is not pending.

        A view, read through the store's index of approval events
        (:meth:`~stalwart.store.Store.approval_journals`): it costs what those events
        cost, not the runs' journals, and checks each event it shows against its
        checksum but not the chain of a journal it does not read whole.
        :meth:`approve` and :meth:`deny` load and check the whole journal before they
        decide."""
        await self.open()
        if run_id is not None:
            run_ids = [(await self.read_run(run_id)).run_id]
        else:
            # In the order runs move: one claimed or parked while this reads is seen
            # twice (the store reads it once), not missed as a run claimed between the
            # reads of RUNNING and PENDING was when WAITING came first. One woken (a
            # signal) between the first read and the last can still be missed.
            run_ids = [rec.run_id for status in _UNFINISHED
                       for rec in await self.store.list_runs(status=status, limit=limit)]
        out: list[ApprovalRequest] = []
        for journal in await self.store.approval_journals(run_ids):
            out += waiting(journal.run_id, journal.events, journal.queued)
        return sorted(out, key=lambda r: r.requested_at)

    async def _decide(self, run_id: str, which: str, approved: bool, by: str | None,
                      comment: str | None, token: str | None) -> Decision:
        rec = await self.get_run(run_id)
        # Queued decisions first, then the journal: a decision the run takes between the
        # two reads is in the second (read the other way round, it would be in neither).
        queued = await self.store.pending_signals(run_id)
        requests = find_requests(run_id, await self.store.load_events(run_id))
        req, earlier = judge(requests, queued, run_id=run_id, which=which,
                             approved=approved, token=token)
        if earlier is not None:
            return earlier
        if rec.is_terminal:
            raise ApprovalConflictError(
                f"run {run_id} has ended ({rec.status}) before approval {req.name!r} "
                f"(step {req.step_id}) was decided", approval=req.name, run_id=run_id,
                step_id=req.step_id)
        decision = Decision(approved=approved, by=by or _login(), at=self.clock.now(),
                            comment=comment, token=req.token)
        await self.signal(run_id, decision_signal(req.step_id), decision.as_json())
        # Another decider may have passed judge() at the same time and been stored first:
        # the first stored is the decision (the run takes it), so judge again against
        # what is stored now. The other way round is refused (ours stays unread), the
        # same way returns the first.
        queued = await self.store.pending_signals(run_id)
        requests = find_requests(run_id, await self.store.load_events(run_id))
        _, first = judge(requests, queued, run_id=run_id, which=req.step_id,
                         approved=approved, token=req.token)
        return decision if first is None else first

    async def cancel(self, run_id: str) -> RunRecord:
        """Cancel a run (and its children); a running one stops at its next step."""
        await self.open()
        return await self.cancel_run(run_id)

    async def resume(self, run_id: str | None = None) -> list[str]:
        """Claim ready runs now (or just ``run_id``) and execute them; returns their ids.

        A run held by a live owner is left alone; one whose owner died on this host, or
        whose lease expired, is taken over."""
        await self.open()
        if run_id is not None:
            await self.get_run(run_id)
        leases = await self._worker.claim(limit=self.concurrency - self.in_flight,
                                          run_id=run_id, force_scan=True)
        return [lease.run_id for lease in leases]

    async def usage(self, run_id: str) -> UsageReport:
        """Tokens, calls and cost of a run — in total, per agent, model and tool — read
        from its journal and priced with this runtime's prices."""
        return usage_report(await self.events(run_id), self.prices)

    async def replay(self, run_id: str) -> ReplayReport:
        """Re-run the current code of ``run_id``'s workflow against its journal, calling
        nothing external, and report whether the code is still deterministic for it."""
        await self.open()
        return await replay_run(self, run_id, _context)

    async def fork(self, run_id: str, *, at: str, model: str | None = None,
                   run_id_for_fork: str | None = None) -> RunHandle[Any]:
        """Start a new run that reuses ``run_id``'s recorded results before step ``at``
        and executes from there — with ``model`` for agent turns from ``at`` on, when
        given. The fork's journal records its origin."""
        await self.open()
        rid = await fork_run(self, run_id, at=at, model=model, new_run_id=run_id_for_fork)
        return RunHandle(self, rid, True)

    async def redrive(self, run_id: str) -> RunHandle[Any]:
        """Send a dead-lettered run through again (``stalwart dlq retry``): the step that
        exhausted its policies runs again with a fresh attempt count."""
        await self.open()
        await self.store.redrive(run_id, now=self.clock.now())
        self.journal_written(run_id)
        self.poke()
        return RunHandle(self, run_id, created=False)

    async def wait_for_end(self, run_id: str, *, timeout: float | None = None) -> RunRecord:
        """Wait until the run is completed, failed or cancelled.

        A store that cannot be reached for a while (a database restart) is retried at
        every poll until ``timeout``."""
        deadline = None if timeout is None else self.clock.monotonic() + timeout
        await self.open()
        self.listen_for_notifications()
        while True:
            event = self.end_waiter(run_id)
            try:
                rec = await self.get_run(run_id)
            except StoreError as exc:
                if not exc.retryable:
                    raise
                self.health.failed(f"reading run {run_id}", exc)
            else:
                self.health.ok()
                # An execution of the run here that was taken over may still be inside a
                # step: the run's outcome is reported once it has stopped (its end
                # notifies this waiter).
                if rec.status in TERMINAL_STATUSES and not self.local.executing(run_id):
                    return rec
            wait = self.poll_interval
            if deadline is not None:
                left = deadline - self.clock.monotonic()
                if left <= 0:
                    raise TimeoutError(f"run {run_id} did not end within {timeout}s")
                wait = min(wait, left)
            await race_event(event, self.clock, wait)

    def outcome(self, rec: RunRecord) -> Any:
        """The result of an ended run, or its error raised."""
        if rec.status == RunStatus.COMPLETED:
            wf = self.workflows.get(rec.workflow)
            tp = wf.result_type if wf is not None else Any
            return decode(rec.result or "null", tp, what=f"result of run {rec.run_id}")
        if rec.status == RunStatus.CANCELLED:
            raise RunCancelledError(f"run {rec.run_id} was cancelled", run_id=rec.run_id)
        info = ErrorInfo.from_json(rec.error or '{"type": "unknown", "message": ""}')
        verb = "was dead-lettered" if rec.status == RunStatus.DEAD_LETTERED else "failed"
        err = RunFailedError(f"run {rec.run_id} {verb}: {info.type}: {info.message}",
                             error_type=info.type, run_id=rec.run_id)
        raise err from rebuild_error(info, run_id=rec.run_id)


def _context(ex: Execution) -> Context:
    return Context(ex)


def _actor_context(ctx: Context, actor: Actor[Any, Any, Any], turn: Turn) -> ActorContext[Any]:
    return ActorContext(ctx, actor, turn)


def _login() -> str:
    """Who decides when the caller does not say: the login name, else "unknown"."""
    try:
        return getpass.getuser()
    except Exception:  # no login name in this environment (no USER, no passwd entry)
        return "unknown"
