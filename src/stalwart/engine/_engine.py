"""What every execution of a runtime shares: the engine's services.

An :class:`Engine` holds the store, the clock, the settings, the workflow registry, the
policies' registries (breakers, bulkheads, rate limiters, back-pressure gates), the
models, the interceptor, and the wake-ups that tie them together (the scheduler's poke,
the waiters of ``result()`` and of event streams). Executions, the step machinery and
the worker loops use it; :class:`stalwart.Runtime` is an engine with the public client
API on top.

The runs that execute in this process are the worker's (:mod:`._worker`); the engine
reaches them only through :class:`LocalRuns` (wake one, cancel one and its descendants,
ask whether one still runs), so it needs nothing of an execution's type.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, final

from .._clock import Clock, SystemClock
from ..errors import (
    ConfigurationError,
    RunNotFoundError,
    WorkflowNotFoundError,
    _install_hint,
)
from ..models import Model, parse_model
from ..policies import (
    BackpressureRegistry,
    BreakerRegistry,
    BreakerTransition,
    BulkheadRegistry,
    ClusterBulkheadRegistry,
    ClusterRateLimiterRegistry,
    RateLimiterRegistry,
)
from ..policies._distributed import shared_limit_store
from ..store._base import InheritsRetry, Owner, RunRecord, Store
from ..store._sqlite import SQLiteStore
from ._budget import Budget
from ._cost import Prices, PriceTable
from ._interceptor import NOOP, BindInput, Instrumentation, Interceptor, PolicyInput
from ._outage import StoreHealth
from ._policy import DEFAULT_POLICY, Policy
from ._store_retry import transient_retry
from ._workflow import Workflow

__all__ = ["Engine", "LocalRuns", "PolicyNote", "Settings", "open_store"]

log = logging.getLogger("stalwart.runtime")


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
            return _postgres(store, access)
        if store.startswith("sqlite:///"):
            return SQLiteStore(store[len("sqlite:///"):], access=access)
        if "://" in store:
            raise ConfigurationError(
                f"unknown store URL {store!r}: use a file path, sqlite:///PATH or "
                "postgresql://...")
        return SQLiteStore(Path(store), access=access)
    return store


def _postgres(url: str, access: Literal["write", "client", "read"]) -> Store:
    try:  # the postgres extra: psycopg is imported only by those who name the store
        from ..store._postgres import PostgresStore  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise ConfigurationError(
            f"a postgresql:// store needs the postgres extra: {_install_hint('postgres')}"
        ) from exc
    pg: Store = PostgresStore(url, access=access)
    return pg


@final
@dataclass(frozen=True, slots=True)
class PolicyNote:
    """One thing a policy did: ``retried``, ``fallback``, ``breaker_open``..."""

    at: float
    run_id: str | None
    step_id: str | None
    action: str
    key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """A runtime's settings (the arguments of :class:`stalwart.Runtime` but the store
    and ``worker``); checked when made."""

    clock: Clock | None = None
    concurrency: int = 100
    lease_seconds: float = 30.0
    poll_interval: float = 1.0
    park_after: float = 5.0
    thread_pool_size: int = 32
    budget: Budget | None = None
    prices: Prices | None = None
    policy: Policy | None = None
    models: Mapping[str, Model] = field(default_factory=dict)
    pools: Collection[str] | None = None
    limits: Literal["auto", "cluster", "local"] = "auto"
    tracing: Instrumentation | None = None
    register_worker: bool = True

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigurationError("concurrency must be at least 1")
        if self.lease_seconds <= 0 or self.poll_interval <= 0 or self.park_after < 0:
            raise ConfigurationError("lease_seconds and poll_interval must be positive, "
                                     "park_after non-negative")
        if self.tracing is not None and not callable(getattr(self.tracing, "bind", None)):
            raise ConfigurationError(f"tracing takes stalwart.telemetry.Tracing() (or None "
                                     f"for none), not {self.tracing!r}")


class LocalRuns(Protocol):
    """The runs that execute in this process, as the engine sees them (the worker's)."""

    def executing(self, run_id: str) -> bool:
        """Whether a task here still executes ``run_id`` (also one fenced out)."""
        ...

    def wake(self, run_id: str) -> None:
        """Something ``run_id`` may wait for happened (a signal, a child's end)."""
        ...

    def cancelled(self, run_id: str) -> None:
        """``run_id`` was cancelled: its execution here and its descendants' stop."""
        ...


class _NoRuns:
    """The local runs of an engine that executes none (yet)."""

    def executing(self, run_id: str) -> bool:
        return False

    def wake(self, run_id: str) -> None:
        pass

    def cancelled(self, run_id: str) -> None:
        pass


class Engine:
    """The services a runtime's executions share (see the module docstring)."""

    def __init__(self, store: Store, settings: Settings, *, worker: bool) -> None:
        self.settings = settings
        self.store = store
        self.clock = settings.clock or SystemClock()
        if isinstance(store, InheritsRetry):  # its own retries: Retry, on our clock
            store.inherit_retry(transient_retry(self.clock, random.Random()))
        self.worker = worker
        self.register_worker = settings.register_worker
        self.concurrency = settings.concurrency
        self.lease_seconds = settings.lease_seconds
        self.lease_margin = settings.lease_seconds / 3
        """A step starts on a local clock check only while its lease has more than this
        left (a healthy heartbeat keeps it there); nearer its expiry the lease is renewed
        in the store first (see ``Execution.fence``)."""
        self.poll_interval = settings.poll_interval
        self.park_after = settings.park_after
        self.owner = Owner(id=uuid.uuid4().hex[:12], host=socket.gethostname(), pid=os.getpid())
        self.thread_pool = ThreadPoolExecutor(max_workers=settings.thread_pool_size,
                                              thread_name_prefix="stalwart-step")
        self.pools = None if settings.pools is None else frozenset(settings.pools)
        self.started_at: float | None = None
        self.closing = False
        self.local: LocalRuns = _NoRuns()
        """The runs executing here (the worker sets itself here)."""
        self._workflows: dict[str, Workflow[Any, Any]] = {}
        self._waiters: dict[str, asyncio.Event] = {}
        self._journal_watchers: dict[str, list[asyncio.Event]] = {}
        """Streams (``RunHandle.events``) waiting for a run's next journal write."""
        self.wake = asyncio.Event()
        """Set to wake the scheduler (:meth:`poke`)."""
        self.tasks: list[asyncio.Task[None]] = []
        """The engine's own loops (scheduler, heartbeat, notifications)."""
        self._setup_policies(settings)
        self._models: dict[str, Model] = dict(settings.models)
        self._owned_models: list[Model] = []
        self.health = StoreHealth(self.store.url, self.clock, log)
        """The store's reachability as this runtime's loops see it (an outage is logged
        in one line when it begins, once a minute while it lasts, one when it ends)."""
        tracing = settings.tracing
        self.interceptor: Interceptor = NOOP if tracing is None else tracing.bind(
            BindInput(self.clock, self.breakers, self.bulkheads))
        """The hooks executions call (see :mod:`stalwart.telemetry`): made by ``tracing``
        through the engine's :class:`~stalwart.telemetry.Instrumentation` protocol."""

    def _setup_policies(self, settings: Settings) -> None:
        self.policy = (settings.policy or Policy()).over(DEFAULT_POLICY)
        self.budget = settings.budget
        self.prices = PriceTable.of(settings.prices)
        self.breakers = BreakerRegistry(clock=self.clock)
        shared = shared_limit_store(settings.limits, self.store)
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
        self.policy_log: deque[PolicyNote] = deque(maxlen=10_000)
        """Recent policy actions (retries, breaker transitions, fallbacks), newest last."""
        self.policy_counts: Counter[str] = Counter()
        """How often each policy action happened in this process."""
        self.breakers.add_listener(self._on_breaker)
        self.backpressure.add_listener(self._on_backpressure)

    # -- workflows -------------------------------------------------------------------

    def register(self, wf: Workflow[Any, Any]) -> None:
        """Make a workflow known to this runtime (so it can execute its runs)."""
        if not isinstance(wf, Workflow):
            what = getattr(wf, "__qualname__", type(wf).__name__)
            raise ConfigurationError(f"{what} is not a stalwart workflow: decorate it with "
                                     "@runtime.workflow (or pass a workflow's name)")
        existing = self._workflows.get(wf.name)
        if existing is not None and existing.fn is not wf.fn:
            raise ConfigurationError(f"two different workflows are named {wf.name!r}")
        self._workflows[wf.name] = wf

    def resolve(self, name: str) -> Workflow[Any, Any]:
        """The registered workflow ``name``.

        Raises:
            WorkflowNotFoundError: none is registered under that name.
        """
        wf = self._workflows.get(name)
        if wf is None:
            raise WorkflowNotFoundError(f"no workflow named {name!r} is registered")
        return wf

    @property
    def workflows(self) -> dict[str, Workflow[Any, Any]]:
        return dict(self._workflows)

    def served_workflows(self) -> list[str]:
        """The workflows whose runs this runtime claims: its pools' (all without pools)."""
        if self.pools is None:
            return list(self._workflows)
        return [name for name, wf in self._workflows.items()
                if (wf.pool or "default") in self.pools]

    # -- models and policies ---------------------------------------------------------

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

    async def close_models(self) -> None:
        """Close the models this runtime built (their HTTP clients)."""
        for m in self._owned_models:
            aclose = getattr(m, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    log.exception("closing model %r failed", m)

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

    # -- runs ------------------------------------------------------------------------

    async def read_run(self, run_id: str) -> RunRecord:
        """The run's record.

        Raises:
            RunNotFoundError: the store has no such run.
        """
        rec = await self.store.get_run(run_id)
        if rec is None:
            raise RunNotFoundError(f"no run {run_id!r} in {self.store.url}", run_id=run_id)
        return rec

    async def cancel_run(self, run_id: str) -> RunRecord:
        """Cancel a run (and its children); a running one stops at its next step."""
        rec = await self.store.request_cancel(run_id, now=self.clock.now())
        # The store cancels its descendants too; the ones executing here learn it now
        # (a child waiting in memory would otherwise finish its sleep first).
        self.local.cancelled(run_id)
        self.run_ended(run_id)
        self.poke()
        return rec

    # -- wake-ups --------------------------------------------------------------------

    def poke(self) -> None:
        """Wake the scheduler (new work may be ready)."""
        self.wake.set()

    def wake_local(self, run_id: str) -> None:
        """Something ``run_id`` may wait for happened here: wake it, and the scheduler."""
        self.local.wake(run_id)
        self.poke()

    def run_ended(self, run_id: str) -> None:
        """``run_id`` may have ended: wake its ``result()`` waiters and its streams."""
        ev = self._waiters.pop(run_id, None)
        if ev is not None:
            ev.set()
        self.journal_written(run_id)

    def end_waiter(self, run_id: str) -> asyncio.Event:
        """An event set when ``run_id`` may have ended (see :meth:`run_ended`)."""
        return self._waiters.setdefault(run_id, asyncio.Event())

    def journal_written(self, run_id: str) -> None:
        """Something was journaled for ``run_id`` here: wake its streams."""
        if self._journal_watchers:
            for ev in self._journal_watchers.pop(run_id, ()):
                ev.set()

    def journal_waiter(self, run_id: str) -> asyncio.Event:
        """An event set at the next journal write for ``run_id`` known here."""
        ev = asyncio.Event()
        self._journal_watchers.setdefault(run_id, []).append(ev)
        return ev

    def listen_for_notifications(self) -> None:
        """With a store that sends wake-ups (PostgreSQL's LISTEN/NOTIFY), poke the
        scheduler and wake ``wait_for_end`` callers on each; polling stays the net."""
        wait = getattr(self.store, "wait_for_notification", None)
        if wait is None or self.closing or any(
                t.get_name() == "sw-notifications" for t in self.tasks):
            return
        self.tasks.append(asyncio.create_task(self._notifications(wait),
                                              name="sw-notifications"))

    async def _notifications(self, wait: Callable[[float], Awaitable[bool]]) -> None:
        # The first wait subscribes; what was notified before that is caught by one
        # look once it returns.
        first = True
        while not self.closing:
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
                self._wake_everyone()

    def _wake_everyone(self) -> None:
        self.poke()
        waiters, self._waiters = self._waiters, {}
        for ev in waiters.values():
            ev.set()
        watchers, self._journal_watchers = self._journal_watchers, {}
        for evs in watchers.values():
            for ev in evs:
                ev.set()
