"""The runtime: a store, a registry of workflows, and a worker that executes runs.

A :class:`Runtime` is both the client (start runs, signal, cancel, read results) and, by
default, a worker: on first use it opens the store and starts a scheduler task that
claims ready runs — new ones, parked ones whose time has come, and those whose owner
died — and executes them. A lease records its owner's host and pid, so a runtime that
starts on the same host reclaims a dead process's runs at once instead of waiting for
the lease to expire.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import random
import socket
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Concatenate, Generic, Literal, ParamSpec, TypeVar, final, overload

from ._clock import Clock, SystemClock
from ._context import Context
from ._serde import (
    ErrorInfo,
    decode,
    encode,
    input_hash,
    rebuild_error,
    return_type,
)
from ._store_retry import transient_retry
from .engine._budget import Budget
from .engine._cost import Prices, PriceTable, UsageReport, usage_report
from .engine._execution import Execution, race_event
from .engine._interceptor import NOOP, BindInput, Instrumentation, Interceptor, PolicyInput
from .engine._outage import StoreHealth
from .engine._policy import DEFAULT_POLICY, INHERIT, Policy, _Inherit
from .engine._timetravel import ReplayReport
from .errors import (
    ConfigurationError,
    IdempotencyConflictError,
    LeaseLostError,
    RunCancelledError,
    RunFailedError,
    RunNotFoundError,
    StoreError,
    WorkflowNotFoundError,
)
from .models import Model, parse_model
from .policies import (
    BackpressureRegistry,
    BreakerRegistry,
    BreakerTransition,
    BulkheadRegistry,
    ClusterBulkheadRegistry,
    ClusterRateLimiterRegistry,
    RateLimiterRegistry,
)
from .policies._distributed import shared_limit_store
from .store._base import (
    TERMINAL_STATUSES,
    Event,
    EventKind,
    Finish,
    InheritsRetry,
    Lease,
    NewEvent,
    Owner,
    RunRecord,
    RunStatus,
    Store,
    WorkerRecord,
)
from .store._sqlite import SQLiteStore

__all__ = ["RunHandle", "Runtime", "open_store"]

log = logging.getLogger("stalwart.runtime")

WORKERS_KEPT_FOR = 7 * 86_400.0
"""Seconds a worker's row stays in the registry after its last heartbeat."""

P = ParamSpec("P")
R = TypeVar("R")


IfExists = Literal["compare", "return"]
"""What ``start`` does with a run id that exists: compare inputs, or return the run."""


def import_ref(ref: str) -> Any:
    """Import ``module:qualname`` (a reference the caller gave, never one read from a
    journal) and return the object."""
    module_name, _, qualname = ref.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _check_existing(rec: RunRecord, workflow: str, text: str, if_exists: IfExists) -> None:
    """Refuse to hand back an existing run that is not the one the caller asked for."""
    existing, given = input_hash(rec.input), input_hash(text)
    if rec.workflow != workflow:
        problem = f"is already used by a run of workflow {rec.workflow!r}"
    elif if_exists == "compare" and existing != given:
        problem = (f"is already used by a run started with other input (sha256 "
                   f"{existing[:12]}…, now {given[:12]}…); the same id with the same input "
                   'returns that run, if_exists="return" returns it whatever its input')
    else:
        return
    raise IdempotencyConflictError(
        f"run id {rec.run_id!r} {problem}", workflow=rec.workflow,
        existing_input_hash=existing, input_hash=given, run_id=rec.run_id)


def open_store(store: Store | str | os.PathLike[str] | None, *,
               access: Literal["write", "client", "read"] = "write") -> Store:
    """A store from an instance, a URL or a path; ``None`` reads ``$STALWART_STORE`` and
    falls back to ``./.stalwart/stalwart.db``. ``access`` says how a store made here uses
    its journal: ``write`` (a worker: creates or migrates it), ``client`` (reads
    read-only until its first write) or ``read`` (never writes, creates nothing)."""
    if store is None:
        store = os.environ.get("STALWART_STORE") or None
        if store is None:
            return SQLiteStore(access=access)
    if isinstance(store, os.PathLike):
        return SQLiteStore(store, access=access)
    if isinstance(store, str):
        if store.startswith(("postgresql://", "postgres://")):
            try:
                from .store._postgres import PostgresStore  # type: ignore[import-not-found,unused-ignore]
            except ImportError as exc:
                raise ConfigurationError(
                    "a postgresql:// store needs the postgres extra: "
                    "pip install -e '.[postgres]' in a checkout") from exc
            pg: Store = PostgresStore(store, access=access)
            return pg
        if store.startswith("sqlite:///"):
            return SQLiteStore(store[len("sqlite:///"):], access=access)
        if "://" in store:
            raise ConfigurationError(
                f"unknown store URL {store!r}: use a file path, sqlite:///PATH or "
                "postgresql://...")
        return SQLiteStore(Path(store), access=access)
    return store


def _released(why: str) -> NewEvent:
    """The ``run_released`` event of an execution that hands its run back unfinished:
    ``shutdown`` (the runtime closed: a worker's SIGTERM, Ctrl-C in ``stalwart run``) or
    ``journal_failed`` (a write failed under it)."""
    return NewEvent(EventKind.RUN_RELEASED, name=why)


@final
@dataclass(frozen=True, slots=True)
class PolicyNote:
    """One thing a policy did: ``retried``, ``fallback``, ``breaker_open``..."""

    at: float
    run_id: str | None
    step_id: str | None
    action: str
    key: str


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` (on this host) still runs. A zombie does not: a process
    SIGKILLed but not yet reaped by its parent keeps its pid (and answers signal 0)
    until then, but it executes nothing and holds no lease any more."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """Whether ``/proc`` says ``pid`` has exited (state ``Z`` or ``X``); ``False`` where
    there is no ``/proc`` to ask."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    # "pid (comm) S ...": the command may hold spaces and parentheses; the state is the
    # first field after the last ")".
    fields = stat.rpartition(b")")[2].split()
    return bool(fields) and fields[0] in (b"Z", b"X")


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
        from .engine._stream import follow_events

        return follow_events(self.runtime, self.run_id, after=after, poll=poll)

    async def cancel(self) -> None:
        await self.runtime.cancel(self.run_id)


@final
class Runtime:
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
        self._settings: dict[str, Any] = {
            "clock": clock, "concurrency": concurrency, "lease_seconds": lease_seconds,
            "poll_interval": poll_interval, "park_after": park_after,
            "thread_pool_size": thread_pool_size, "budget": budget, "prices": prices,
            "policy": policy, "models": dict(models or {}), "pools": pools,
            "limits": limits, "tracing": tracing, "register_worker": register_worker}
        """The arguments it was made with, but the store and ``worker`` (see _like)."""
        if concurrency < 1:
            raise ConfigurationError("concurrency must be at least 1")
        if lease_seconds <= 0 or poll_interval <= 0 or park_after < 0:
            raise ConfigurationError("lease_seconds and poll_interval must be positive, "
                                     "park_after non-negative")
        # A client (worker=False) reads the journal read-only until it first writes.
        self.store = open_store(store, access="write" if worker else "client")
        self._store_arg = store
        """What the store was made from (``client()`` and the CLI open their own from a URL
        or path; ``None``: ``$STALWART_STORE`` or the default)."""
        self.clock = clock or SystemClock()
        if isinstance(self.store, InheritsRetry):  # its own retries: Retry, on our clock
            self.store.inherit_retry(transient_retry(self.clock, random.Random()))
        self.worker = worker
        self.register_worker = register_worker
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.lease_margin = lease_seconds / 3
        """A step starts on a local clock check only while its lease has more than this
        left (a healthy heartbeat keeps it there); nearer its expiry the lease is renewed
        in the store first (see ``Execution.fence``)."""
        self.poll_interval = poll_interval
        self.park_after = park_after
        self.owner = Owner(id=uuid.uuid4().hex[:12], host=socket.gethostname(), pid=os.getpid())
        self.thread_pool = ThreadPoolExecutor(max_workers=thread_pool_size,
                                              thread_name_prefix="stalwart-step")
        self._workflows: dict[str, Any] = {}
        self._active: dict[str, asyncio.Task[None]] = {}
        self._executions: dict[str, Execution] = {}
        self._superseded: dict[asyncio.Task[None], str] = {}
        """Executions of runs this runtime claimed again (their lease had expired) while
        they still ran: fenced out, they stop at their next step or write."""
        self._waiters: dict[str, asyncio.Event] = {}
        self._journal_watchers: dict[str, list[asyncio.Event]] = {}
        """Streams (``RunHandle.events``) waiting for a run's next journal write."""
        self._wake = asyncio.Event()
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._draining = False
        self._held_by_threads: list[str] = []
        self._claims_in_flight = 0
        self.pools = None if pools is None else frozenset(pools)
        self.started_at: float | None = None
        self._last_steal_scan = float("-inf")
        self.policy = (policy or Policy()).over(DEFAULT_POLICY)
        self.budget = budget
        self.prices = PriceTable.of(prices)
        self.breakers = BreakerRegistry(clock=self.clock)
        shared = shared_limit_store(limits, self.store)
        self.limits: Literal["cluster", "local"] = "local" if shared is None else "cluster"
        """Whether bulkheads and rate limits are shared through the store."""
        self.bulkheads: BulkheadRegistry | ClusterBulkheadRegistry
        self.rate_limiters: RateLimiterRegistry | ClusterRateLimiterRegistry
        if shared is None:
            self.bulkheads = BulkheadRegistry(clock=self.clock)
            self.rate_limiters = RateLimiterRegistry(clock=self.clock)
        else:
            self.bulkheads = ClusterBulkheadRegistry(
                store=shared, clock=self.clock, worker_id=self.owner.id,
                lease_seconds=self.lease_seconds)
            self.rate_limiters = ClusterRateLimiterRegistry(store=shared, clock=self.clock)
        self.backpressure = BackpressureRegistry(clock=self.clock)
        """Each dependency's back-pressure gate: a 429 holds every call to it here."""
        self._models: dict[str, Model] = dict(models or {})
        self._owned_models: list[Model] = []
        self.policy_log: deque[PolicyNote] = deque(maxlen=10_000)
        """Recent policy actions (retries, breaker transitions, fallbacks), newest last."""
        self.policy_counts: Counter[str] = Counter()
        """How often each policy action happened in this process."""
        self.breakers.add_listener(self._on_breaker)
        self.backpressure.add_listener(self._on_backpressure)
        self.health = StoreHealth(self.store.url, self.clock, log)
        """The store's reachability as this runtime's loops see it (an outage is logged
        in one line when it begins, once a minute while it lasts, one when it ends)."""
        self.interceptor: Interceptor = NOOP if tracing is None else tracing.bind(
            BindInput(self.clock, self.breakers, self.bulkheads))
        """The hooks executions call (see :mod:`stalwart.telemetry`): made by ``tracing``
        through the engine's :class:`~stalwart.telemetry.Instrumentation` protocol."""

    # -- registration ----------------------------------------------------------------

    @overload
    def workflow(self, fn: Callable[Concatenate[Context, P], Awaitable[R]], /) -> Any: ...

    @overload
    def workflow(self, fn: None = None, /, *, name: str | None = None,
                 pool: str | None = None, budget: Budget | None = None) -> Callable[..., Any]: ...

    def workflow(self, fn: Any = None, /, *, name: str | None = None,
                 pool: str | None = None, budget: Budget | None = None) -> Any:
        """Register an async function ``(ctx, ...)`` as a workflow (a decorator).
        ``pool`` names the worker pool whose workers execute its runs; ``budget`` limits
        what each of its runs may spend (on top of the runtime's)."""
        from .engine._workflow import Workflow

        def deco(f: Callable[Concatenate[Context, P], Awaitable[R]]) -> Workflow[P, R]:
            wf: Workflow[P, R] = Workflow(f, name=name, pool=pool, budget=budget)
            self.register(wf)
            wf.runtime = self
            return wf

        return deco(fn) if fn is not None else deco

    def register(self, wf: Any) -> None:
        """Make a workflow known to this runtime (so it can execute its runs)."""
        existing = self._workflows.get(wf.name)
        if existing is not None and existing.fn is not wf.fn:
            raise ConfigurationError(f"two different workflows are named {wf.name!r}")
        self._workflows[wf.name] = wf

    def _like(self, store: Store | str | os.PathLike[str] | None = None, *,
              worker: bool = True, **overrides: Any) -> Runtime:
        """A new runtime made with this one's arguments (budget, models, prices, policy,
        tracing, clock, limits...) but ``overrides``, on ``store`` (default: this one's
        store object), knowing this one's workflows. The CLI executes a module's
        workflows with it: ``stalwart run app:wf`` must spend under ``app``'s budget and
        call ``app``'s models, not a bare runtime's."""
        settings = {**self._settings, **overrides}
        settings["models"] = dict(settings["models"] or {})
        twin = Runtime(self.store if store is None else store, worker=worker, **settings)
        for wf in self._workflows.values():
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

    def _resolve(self, name: str) -> Any:
        wf = self._workflows.get(name)
        if wf is None:
            raise WorkflowNotFoundError(f"no workflow named {name!r} is registered")
        return wf

    @property
    def workflows(self) -> dict[str, Any]:
        return dict(self._workflows)

    def import_workflows(self, refs: list[str]) -> None:
        """Import ``module:attribute`` references and register the workflows found."""
        from .engine._workflow import Workflow

        for ref in refs:
            try:
                obj = import_ref(ref)
            except Exception as exc:
                raise WorkflowNotFoundError(f"cannot import {ref!r}: {exc}") from exc
            if not isinstance(obj, Workflow):
                raise WorkflowNotFoundError(f"{ref!r} is not a workflow")
            self.register(obj)

    # -- models, tools and policies --------------------------------------------------

    def tool(self, fn: Any = None, /, *, name: str | None = None,
             description: str | None = None, policy: Policy | None = None,
             max_argument_bytes: int | _Inherit = INHERIT,
             max_argument_depth: int | _Inherit = INHERIT) -> Any:
        """Make a function a :class:`~stalwart.Tool` (a decorator, with or without
        arguments)."""
        from .engine._tools import Tool

        def deco(f: Callable[..., Any]) -> Tool[Any, Any]:
            return Tool(f, name=name, description=description, policy=policy,
                        max_argument_bytes=max_argument_bytes,
                        max_argument_depth=max_argument_depth)

        return deco(fn) if fn is not None else deco

    def model(self, spec: str | Model) -> Model:
        """The model for a spec, built once per runtime (with the runtime's clock)."""
        if not isinstance(spec, str):
            return spec
        found = self._models.get(spec)
        if found is None:
            found = parse_model(spec, clock=self.clock)
            self._models[spec] = found
            self._owned_models.append(found)
        return found

    def effective_policy(self, *levels: Policy | None) -> Policy:
        """The policy for a call: the innermost (last) level wins field by field."""
        out = self.policy
        for level in levels:
            if level is not None:
                out = level.over(out)
        return out

    def note_policy(self, run_id: str, step_id: str | None, action: str, key: str) -> None:
        """Record a policy action (for the demo, stats and tests)."""
        self.policy_counts[action] += 1
        self.policy_log.append(PolicyNote(self.clock.now(), run_id, step_id, action, key))
        if self.interceptor.active:
            self.interceptor.policy_noted(PolicyInput(run_id, step_id, action, key))

    def _on_backpressure(self, key: str, seconds: float) -> None:
        self.policy_counts["backpressure_hold"] += 1
        self.policy_log.append(PolicyNote(self.clock.now(), None, None, "backpressure_hold",
                                          key))
        log.info("back-pressure %s: held for %gs by a 429", key, seconds)

    def _on_breaker(self, t: BreakerTransition) -> None:
        action = f"breaker_{t.to_state.value}"
        self.policy_counts[action] += 1
        self.policy_log.append(PolicyNote(self.clock.now(), None, None, action, t.key))
        log.info("circuit breaker %s: %s -> %s", t.key, t.from_state.value, t.to_state.value)

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
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            if self._closing:
                raise StoreError("the runtime is closed")
            await self.store.open()
            self._wake = asyncio.Event()
            if self.worker:
                self.started_at = self.clock.now()
                self._tasks.append(asyncio.create_task(self._scheduler(), name="sw-scheduler"))
                self._tasks.append(asyncio.create_task(self._heartbeat(), name="sw-heartbeat"))
                self._listen_for_notifications()
            self._started = True

    async def close(self) -> None:
        """Stop executing and hand unfinished runs back (their leases are released when
        the store supports it, else they expire), then close the store."""
        if self._closing:
            return
        self._closing = True
        for t in self._tasks:
            t.cancel()
        active = [*self._active.values(), *self._superseded]
        executions = list(self._executions.values())
        for t in active:
            t.cancel()
        await asyncio.gather(*self._tasks, *active, return_exceptions=True)
        # Steps still queued for a thread never start now; one already running cannot be
        # stopped, and its run is not handed back while it runs: another worker would
        # run the step beside it. Its lease expires (lease_seconds) instead, or the
        # process ends (stalwart worker exits) and a worker on this host takes it over.
        self.thread_pool.shutdown(wait=False, cancel_futures=True)
        leases = [ex.lease for ex in executions if not ex.in_threads]
        self._held_by_threads = [ex.run_id for ex in executions if ex.in_threads]
        for run_id in self._held_by_threads:
            log.warning("run %s: a synchronous step is still running in a thread; the run "
                        "is not handed back while it runs (its lease expires instead)",
                        run_id)
        if self._started and leases:
            await self._release(leases)
        if self._started and self.started_at is not None and self.register_worker:
            await self._report_worker(stopped=True)
        if self._started:
            await self.bulkheads.aclose()  # slot releases still on their way to the store
            await self.rate_limiters.aclose()
            await self.store.close()
        for m in self._owned_models:
            aclose = getattr(m, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    log.exception("closing model %r failed", m)
        self._started = False

    async def _release(self, leases: list[Lease]) -> None:
        """Hand interrupted runs back (pending) so any worker can take them at once."""
        for lease in leases:
            try:
                await self.store.append(lease, [_released("shutdown")], now=self.clock.now(),
                                        finish=Finish(RunStatus.PENDING))
                self.journal_written(lease.run_id)
            except LeaseLostError:
                pass
            except StoreError as exc:
                log.warning("run %s: could not hand it back (%s); its lease expires",
                            lease.run_id, " ".join(str(exc).split()))
            except Exception:
                log.exception("run %s: could not release its lease; it will expire",
                              lease.run_id)

    def poke(self) -> None:
        """Wake the scheduler (new work may be ready)."""
        self._wake.set()

    async def drain(self, grace: float) -> int:
        """Stop claiming runs and wait up to ``grace`` seconds (of the runtime's clock) for
        the executing ones to end or park; returns how many still execute.

        A graceful shutdown is ``drain`` then :meth:`close`, which hands the runs still
        executing back to the store: another worker replays them at once, and only their
        in-flight steps run again (with the same idempotency keys)."""
        self._draining = True
        self.poke()
        if self._active:
            sleeper = asyncio.ensure_future(self.clock.sleep(grace))
            try:
                while self._active and not sleeper.done():
                    await asyncio.wait({*self._active.values(), sleeper},
                                       return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
        return len(self._active)

    # -- the client API --------------------------------------------------------------

    async def start(self, workflow: Any, /, *args: Any, run_id: str | None = None,
                    if_exists: IfExists = "compare", **kwargs: Any) -> RunHandle[Any]:
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
        if if_exists not in ("compare", "return"):
            raise ConfigurationError(
                f'if_exists must be "compare" or "return", not {if_exists!r}')
        await self.open()
        wf = self._resolve(workflow) if isinstance(workflow, str) else workflow
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

    async def run(self, workflow: Any, /, *args: Any, run_id: str | None = None,
                  if_exists: IfExists = "compare", **kwargs: Any) -> Any:
        """Start a run (see :meth:`start`) and wait for its result."""
        handle = await self.start(workflow, *args, run_id=run_id, if_exists=if_exists,
                                  **kwargs)
        return await handle.result()

    def run_sync(self, workflow: Any, /, *args: Any, **kwargs: Any) -> Any:
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
        rec = await self.store.get_run(run_id)
        if rec is None:
            raise RunNotFoundError(f"no run {run_id!r} in {self.store.url}", run_id=run_id)
        return rec

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
        self._local_wakeup(run_id)
        self.journal_written(run_id)
        return rec

    async def cancel(self, run_id: str) -> RunRecord:
        """Cancel a run (and its children); a running one stops at its next step."""
        await self.open()
        rec = await self.store.request_cancel(run_id, now=self.clock.now())
        # The store cancels its descendants too; the ones executing here learn it now
        # (a child waiting in memory would otherwise finish its sleep first).
        parents = {r: ex.run.parent_run_id for r, ex in self._executions.items()}
        for rid, ex in list(self._executions.items()):
            up: str | None = rid
            while up is not None and up != run_id:
                up = parents.get(up)
            if up == run_id:
                ex.cancel()
        self._notify(run_id)
        self.poke()
        return rec

    async def resume(self, run_id: str | None = None) -> list[str]:
        """Claim ready runs now (or just ``run_id``) and execute them; returns their ids.

        A run held by a live owner is left alone; one whose owner died on this host, or
        whose lease expired, is taken over."""
        await self.open()
        if run_id is not None:
            await self.get_run(run_id)
        leases = await self._claim(limit=self.concurrency - len(self._active), run_id=run_id,
                                   force_scan=True)
        return [lease.run_id for lease in leases]

    async def usage(self, run_id: str) -> UsageReport:
        """Tokens, calls and cost of a run — in total, per agent, model and tool — read
        from its journal and priced with this runtime's prices."""
        return usage_report(await self.events(run_id), self.prices)

    async def replay(self, run_id: str) -> ReplayReport:
        """Re-run the current code of ``run_id``'s workflow against its journal, calling
        nothing external, and report whether the code is still deterministic for it."""
        from .engine._timetravel import replay_run

        await self.open()
        return await replay_run(self, run_id)

    async def fork(self, run_id: str, *, at: str, model: str | None = None,
                   run_id_for_fork: str | None = None) -> RunHandle[Any]:
        """Start a new run that reuses ``run_id``'s recorded results before step ``at``
        and executes from there — with ``model`` for agent turns from ``at`` on, when
        given. The fork's journal records its origin."""
        from .engine._timetravel import fork_run

        return await fork_run(self, run_id, at=at, model=model, new_run_id=run_id_for_fork)

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
        self._listen_for_notifications()
        while True:
            event = self._waiters.setdefault(run_id, asyncio.Event())
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
                if rec.status in TERMINAL_STATUSES and not self._executing_here(run_id):
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
            wf = self._workflows.get(rec.workflow)
            tp = return_type(wf.fn) if wf is not None else Any
            return decode(rec.result or "null", tp, what=f"result of run {rec.run_id}")
        if rec.status == RunStatus.CANCELLED:
            raise RunCancelledError(f"run {rec.run_id} was cancelled", run_id=rec.run_id)
        info = ErrorInfo.from_json(rec.error or '{"type": "unknown", "message": ""}')
        verb = "was dead-lettered" if rec.status == RunStatus.DEAD_LETTERED else "failed"
        err = RunFailedError(f"run {rec.run_id} {verb}: {info.type}: {info.message}",
                             error_type=info.type, run_id=rec.run_id)
        raise err from rebuild_error(info, run_id=rec.run_id)

    # -- the worker ------------------------------------------------------------------

    def _notify(self, run_id: str) -> None:
        ev = self._waiters.pop(run_id, None)
        if ev is not None:
            ev.set()
        self.journal_written(run_id)

    def journal_written(self, run_id: str) -> None:
        """Something was journaled for ``run_id`` here: wake its streams."""
        if self._journal_watchers:
            for ev in self._journal_watchers.pop(run_id, ()):
                ev.set()

    def _journal_waiter(self, run_id: str) -> asyncio.Event:
        """An event set at the next journal write for ``run_id`` known here."""
        ev = asyncio.Event()
        self._journal_watchers.setdefault(run_id, []).append(ev)
        return ev

    def _executing_here(self, run_id: str) -> bool:
        """Whether a task of this runtime still executes ``run_id``."""
        return run_id in self._active or run_id in self._superseded.values()

    def _local_wakeup(self, run_id: str) -> None:
        ex = self._executions.get(run_id)
        if ex is not None:
            ex.wakeup.set()
        self.poke()

    async def _steal_candidates(self) -> list[tuple[str, str, int]]:
        out = []
        for rec in await self.store.local_running(self.owner.host):
            if rec.owner_pid is None or rec.lease_owner is None:
                continue
            if rec.owner_pid != self.owner.pid and not _pid_alive(rec.owner_pid):
                out.append((rec.run_id, rec.lease_owner, rec.lease_token))
            elif (rec.lease_owner == self.owner.id and rec.run_id not in self._active
                  and not self._claims_in_flight):
                # Ours, yet nothing here executes it (and no claim's reply is pending):
                # a claim whose reply was lost with the connection, or a hand-back that
                # never reached the store.
                out.append((rec.run_id, rec.lease_owner, rec.lease_token))
        return out

    @property
    def in_flight(self) -> int:
        """How many runs this runtime is executing now."""
        return len(self._active)

    @property
    def held_by_threads(self) -> list[str]:
        """Runs that :meth:`close` did not hand back because a synchronous step of theirs
        was still running in a thread (their leases expire instead)."""
        return list(self._held_by_threads)

    def served_workflows(self) -> list[str]:
        """The workflows whose runs this runtime claims: its pools' (all without pools)."""
        if self.pools is None:
            return list(self._workflows)
        return [name for name, wf in self._workflows.items()
                if (getattr(wf, "pool", None) or "default") in self.pools]

    async def _claim(self, *, limit: int, run_id: str | None = None,
                     force_scan: bool = False) -> list[Lease]:
        if limit <= 0 or self._closing or self._draining:
            return []
        now = self.clock.now()
        steal: list[tuple[str, str, int]] = []
        if force_scan or self.clock.monotonic() - self._last_steal_scan >= self.poll_interval:
            self._last_steal_scan = self.clock.monotonic()
            steal = await self._steal_candidates()
            if run_id is not None:
                steal = [s for s in steal if s[0] == run_id]
        self._claims_in_flight += 1
        try:
            leases = await self.store.claim(
                self.owner, now=now, lease_seconds=self.lease_seconds, limit=limit,
                run_id=run_id, steal=steal, workflows=self.served_workflows())
        finally:
            self._claims_in_flight -= 1
        for lease in leases:
            old = self._active.get(lease.run_id)
            if old is not None:
                # Claimed again while an execution here still runs it: its lease expired
                # (the loop stalled, or its heartbeats failed). The old execution is
                # fenced out — its token is stale — and stops at its next step or write.
                self._supersede(lease.run_id, old)
            self._active[lease.run_id] = asyncio.create_task(
                self._execute(lease), name=f"sw-run-{lease.run_id}")
        return leases

    def _supersede(self, run_id: str, task: asyncio.Task[None]) -> None:
        ex = self._executions.get(run_id)
        if ex is not None and ex.task is task:
            ex.lease_lost = True
        self._superseded[task] = run_id
        task.add_done_callback(lambda t: self._superseded.pop(t, None))

    async def _execute(self, lease: Lease) -> None:
        run_id = lease.run_id
        me = asyncio.current_task()
        ex: Execution | None = None
        try:
            rec = await self.store.get_run(run_id)
            if rec is None:
                return
            wf = self._resolve(rec.workflow)
            events = await self.store.load_events(run_id)
            ex = Execution(self, lease, rec, wf, events)
            ex.task = me
            if me in self._superseded:
                ex.lease_lost = True  # claimed again before it even began
            else:
                self._executions[run_id] = ex
            status = await ex.execute()
            if status is not None and status in TERMINAL_STATUSES and rec.parent_run_id:
                self._local_wakeup(rec.parent_run_id)
        except asyncio.CancelledError:
            raise
        except LeaseLostError as exc:
            log.warning("run %s: %s", run_id, exc)
        except StoreError as exc:
            # The journal failed under the run (a database restart, a lost connection).
            # Nothing about the run was decided: hand it back for a replay, here or on
            # another worker, once the store answers again.
            log.warning("run %s: the journal failed (%s); handing the run back", run_id, exc)
            if self._executions.get(run_id) is ex:
                del self._executions[run_id]
            await self._hand_back(ex.lease if ex is not None else lease)
        except Exception:
            log.exception("run %s: the engine failed while executing it", run_id)
        finally:
            # Only this execution's entries: a newer claim of the run may own them now.
            if ex is not None and self._executions.get(run_id) is ex:
                del self._executions[run_id]
            if self._active.get(run_id) is me:
                del self._active[run_id]
            self._notify(run_id)
            self.poke()

    async def _scheduler(self) -> None:
        while not self._closing:
            self._wake.clear()
            try:
                await self._claim(limit=self.concurrency - len(self._active))
                delay = self.poll_interval
                # At capacity (or draining) no timer matters: a run ending pokes us.
                if len(self._active) < self.concurrency and not self._draining:
                    nxt = await self.store.next_wake_at()
                    if nxt is not None:
                        delay = max(0.0, min(delay, nxt - self.clock.now()))
                self.health.ok()
            except asyncio.CancelledError:
                raise
            except StoreError as exc:
                self.health.failed("claiming runs", exc)
                delay = self.poll_interval
            except Exception:
                log.exception("scheduler: cannot claim runs; retrying")
                delay = self.poll_interval
            if delay > 0 or not self._wake.is_set():
                await race_event(self._wake, self.clock, delay)

    async def _hand_back(self, lease: Lease) -> None:
        """Release ``lease`` (the run goes back to pending), retrying while the store is
        unreachable, until the lease would have expired anyway."""
        delay = 0.05
        while not self._closing:
            try:
                await self.store.append(lease, [_released("journal_failed")],
                                        now=self.clock.now(), finish=Finish(RunStatus.PENDING))
                self.journal_written(lease.run_id)
                return
            except LeaseLostError:
                return
            except StoreError as exc:
                if self.clock.now() + delay >= lease.expires_at:
                    log.warning("run %s: cannot hand it back (%s); its lease expires",
                                lease.run_id, exc)
                    return
            await self.clock.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _listen_for_notifications(self) -> None:
        """With a store that sends wake-ups (PostgreSQL's LISTEN/NOTIFY), poke the
        scheduler and wake ``wait_for_end`` callers on each; polling stays the net."""
        wait = getattr(self.store, "wait_for_notification", None)
        if wait is None or self._closing or any(
                t.get_name() == "sw-notifications" for t in self._tasks):
            return
        self._tasks.append(asyncio.create_task(self._notifications(wait),
                                               name="sw-notifications"))

    async def _notifications(self, wait: Callable[[float], Awaitable[bool]]) -> None:
        # The first wait subscribes; what was notified before that is caught by one
        # look once it returns.
        first = True
        while not self._closing:
            try:
                woken = await wait(max(self.poll_interval, 1.0))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("notifications: cannot wait for them; polling only")
                await self.clock.sleep(self.poll_interval)
                continue
            if woken or first:
                first = False
                self.poke()
                waiters, self._waiters = self._waiters, {}
                for ev in waiters.values():
                    ev.set()
                watchers, self._journal_watchers = self._journal_watchers, {}
                for evs in watchers.values():
                    for ev in evs:
                        ev.set()

    def worker_record(self, *, stopped: bool = False) -> WorkerRecord:
        """This runtime's row in the workers registry, as of now."""
        now = self.clock.now()
        return WorkerRecord(
            worker_id=self.owner.id, host=self.owner.host, pid=self.owner.pid,
            started_at=self.started_at if self.started_at is not None else now,
            heartbeat_at=now, concurrency=self.concurrency, in_flight=len(self._active),
            lease_seconds=self.lease_seconds,
            pools=tuple(sorted(self.pools)) if self.pools is not None else (),
            stopped_at=now if stopped else None)

    async def _report_worker(self, *, stopped: bool = False) -> None:
        try:
            await self.store.save_worker(self.worker_record(stopped=stopped))
            self.health.ok()
        except asyncio.CancelledError:
            raise
        except StoreError as exc:
            self.health.failed("reporting to the workers registry", exc)
        except Exception as exc:
            log.warning("workers registry: cannot report this worker (%s)", exc)

    async def _heartbeat(self) -> None:
        interval = self.lease_seconds / 3
        if self.register_worker:
            await self._report_worker()
            try:
                await self.store.forget_workers(before=self.clock.now() - WORKERS_KEPT_FOR)
            except asyncio.CancelledError:
                raise
            except StoreError as exc:
                self.health.failed("forgetting old workers", exc)
            except Exception as exc:
                log.warning("workers registry: cannot forget old workers (%s)", exc)
        while not self._closing:
            await self.clock.sleep(interval)
            if self.register_worker:
                await self._report_worker()
            executions = list(self._executions.values())
            if not executions:
                continue
            try:
                renewed = await self.store.renew([ex.lease for ex in executions],
                                                 now=self.clock.now(),
                                                 lease_seconds=self.lease_seconds)
                self.health.ok()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The leases keep the expiry they had: a step that starts near it asks
                # the store itself (Execution.fence).
                if isinstance(exc, StoreError):
                    self.health.failed("renewing leases", exc)
                else:
                    log.exception("heartbeat: cannot renew leases")
                continue
            for ex in executions:
                if ex.run_id not in renewed:
                    continue
                lease = renewed[ex.run_id]
                if lease is None and ex.finished:
                    # Its last write (the run ended or parked, the lease released) may
                    # have committed before this renewal read the row: "no lease" is
                    # that write, not a takeover. Were it a takeover, that write fails
                    # (fenced) and the execution ends by itself; it runs no more steps.
                    continue
                if lease is None:
                    log.warning("run %s: lease taken over; stopping local execution",
                                ex.run_id)
                    ex.lease_lost = True
                    if ex.task is not None:
                        ex.task.cancel()
                elif lease.token == ex.lease.token:
                    ex.lease = lease
