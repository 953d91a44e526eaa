"""The worker: claim ready runs, execute them, keep their leases, hand them back.

A :class:`Worker` runs three loops for its :class:`~stalwart.engine._engine.Engine`: the
scheduler claims runs (new ones, parked ones whose time has come, those whose owner
died) up to the engine's concurrency and starts an execution for each; the heartbeat
renews the leases of the runs executing here (and the worker's row in the workers
registry); the store's notifications, when it sends them, wake both. A lease records
its owner's host and pid, so a worker on the same host reclaims a dead process's runs at
once instead of waiting for the lease to expire.

The worker is the engine's :class:`~stalwart.engine._engine.LocalRuns`: the engine asks
it to wake or cancel the runs executing here.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from .._clock import race_event, sleep_until
from ..errors import LeaseLostError, StoreError
from ..store._base import (
    TERMINAL_STATUSES,
    EventKind,
    Finish,
    Lease,
    NewEvent,
    RunStatus,
    WorkerRecord,
)
from ._engine import Engine
from ._execution import Execution

__all__ = ["WORKERS_KEPT_FOR", "Worker", "pid_alive"]

log = logging.getLogger("stalwart.runtime")

WORKERS_KEPT_FOR = 7 * 86_400.0
"""Seconds a worker's row stays in the registry after its last heartbeat."""


def released(why: str) -> NewEvent:
    """The ``run_released`` event of an execution that hands its run back unfinished:
    ``shutdown`` (the runtime closed: a worker's SIGTERM, Ctrl-C in ``stalwart run``) or
    ``journal_failed`` (a write failed under it)."""
    return NewEvent(EventKind.RUN_RELEASED, name=why)


def pid_alive(pid: int) -> bool:
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


class Worker:
    """Executes an engine's runs (see the module docstring). ``make_context`` gives
    each execution the context its workflow function receives."""

    def __init__(self, engine: Engine, make_context: Callable[[Execution], object]) -> None:
        self.engine = engine
        self.make_context = make_context
        self.active: dict[str, asyncio.Task[None]] = {}
        """The task executing each run here."""
        self.executions: dict[str, Execution] = {}
        self.superseded: dict[asyncio.Task[None], str] = {}
        """Executions of runs this runtime claimed again (their lease had expired) while
        they still ran: fenced out, they stop at their next step or write."""
        self.draining = False
        self.held_by_threads: list[str] = []
        """Runs :meth:`stop` did not hand back: a synchronous step of theirs still ran in
        a thread (their leases expire instead)."""
        self._claims_in_flight = 0
        self._last_steal_scan = float("-inf")
        engine.local = self

    # -- the engine's LocalRuns ------------------------------------------------------

    def executing(self, run_id: str) -> bool:
        return run_id in self.active or run_id in self.superseded.values()

    def wake(self, run_id: str) -> None:
        ex = self.executions.get(run_id)
        if ex is not None:
            ex.wakeup.set()

    def cancelled(self, run_id: str) -> None:
        parents = {r: ex.run.parent_run_id for r, ex in self.executions.items()}
        for rid, ex in list(self.executions.items()):
            up: str | None = rid
            while up is not None and up != run_id:
                up = parents.get(up)
            if up == run_id:
                ex.cancel()

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start the scheduler and the heartbeat."""
        engine = self.engine
        engine.started_at = engine.clock.now()
        engine.tasks.append(asyncio.create_task(self._scheduler(), name="sw-scheduler"))
        engine.tasks.append(asyncio.create_task(self._heartbeat(), name="sw-heartbeat"))

    async def stop(self, *, started: bool) -> None:
        """Stop executing (the engine's loops were cancelled) and hand unfinished runs
        back, but those a thread still runs a step of."""
        active = [*self.active.values(), *self.superseded]
        executions = list(self.executions.values())
        for t in active:
            t.cancel()
        await asyncio.gather(*active, return_exceptions=True)
        # Steps still queued for a thread never start now; one already running cannot be
        # stopped, and its run is not handed back while it runs: another worker would
        # run the step beside it. Its lease expires (lease_seconds) instead, or the
        # process ends (stalwart worker exits) and a worker on this host takes it over.
        self.engine.thread_pool.shutdown(wait=False, cancel_futures=True)
        leases = [ex.lease for ex in executions if not ex.in_threads]
        self.held_by_threads = [ex.run_id for ex in executions if ex.in_threads]
        for run_id in self.held_by_threads:
            log.warning("run %s: a synchronous step is still running in a thread; the run "
                        "is not handed back while it runs (its lease expires instead)",
                        run_id)
        if started and leases:
            await self._release(leases)
        if started and self.engine.started_at is not None and self.engine.register_worker:
            await self._report_worker(stopped=True)

    async def _release(self, leases: list[Lease]) -> None:
        """Hand interrupted runs back (pending) so any worker can take them at once."""
        engine = self.engine
        for lease in leases:
            try:
                await engine.store.append(lease, [released("shutdown")],
                                          now=engine.clock.now(),
                                          finish=Finish(RunStatus.PENDING))
                engine.journal_written(lease.run_id)
            except LeaseLostError:
                pass
            except StoreError as exc:
                log.warning("run %s: could not hand it back (%s); its lease expires",
                            lease.run_id, " ".join(str(exc).split()))
            except Exception:
                log.exception("run %s: could not release its lease; it will expire",
                              lease.run_id)

    async def drain(self, grace: float) -> int:
        """Stop claiming and wait up to ``grace`` seconds for the executing runs to end
        or park; returns how many still execute (see :meth:`stalwart.Runtime.drain`)."""
        self.draining = True
        self.engine.poke()
        if self.active:
            clock = self.engine.clock
            sleeper = asyncio.ensure_future(sleep_until(clock, clock.monotonic() + grace))
            try:
                while self.active and not sleeper.done():
                    await asyncio.wait({*self.active.values(), sleeper},
                                       return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
        return len(self.active)

    # -- claiming and executing ------------------------------------------------------

    async def _steal_candidates(self) -> list[tuple[str, str, int]]:
        engine = self.engine
        out = []
        for rec in await engine.store.local_running(engine.owner.host):
            if rec.owner_pid is None or rec.lease_owner is None:
                continue
            if rec.owner_pid != engine.owner.pid and not pid_alive(rec.owner_pid):
                out.append((rec.run_id, rec.lease_owner, rec.lease_token))
            elif (rec.lease_owner == engine.owner.id and rec.run_id not in self.active
                  and not self._claims_in_flight):
                # Ours, yet nothing here executes it (and no claim's reply is pending):
                # a claim whose reply was lost with the connection, or a hand-back that
                # never reached the store.
                out.append((rec.run_id, rec.lease_owner, rec.lease_token))
        return out

    async def claim(self, *, limit: int, run_id: str | None = None,
                    force_scan: bool = False) -> list[Lease]:
        """Claim up to ``limit`` ready runs (or just ``run_id``) and execute them."""
        engine = self.engine
        if limit <= 0 or engine.closing or self.draining:
            return []
        now = engine.clock.now()
        steal: list[tuple[str, str, int]] = []
        if force_scan or engine.clock.monotonic() - self._last_steal_scan >= (
                engine.poll_interval):
            self._last_steal_scan = engine.clock.monotonic()
            steal = await self._steal_candidates()
            if run_id is not None:
                steal = [s for s in steal if s[0] == run_id]
        self._claims_in_flight += 1
        try:
            leases = await engine.store.claim(
                engine.owner, now=now, lease_seconds=engine.lease_seconds, limit=limit,
                run_id=run_id, steal=steal, workflows=engine.served_workflows())
        finally:
            self._claims_in_flight -= 1
        for lease in leases:
            old = self.active.get(lease.run_id)
            if old is not None:
                # Claimed again while an execution here still runs it: its lease expired
                # (the loop stalled, or its heartbeats failed). The old execution is
                # fenced out — its token is stale — and stops at its next step or write.
                self._supersede(lease.run_id, old)
            self.active[lease.run_id] = asyncio.create_task(
                self._execute(lease), name=f"sw-run-{lease.run_id}")
        return leases

    def _supersede(self, run_id: str, task: asyncio.Task[None]) -> None:
        ex = self.executions.get(run_id)
        if ex is not None and ex.task is task:
            ex.lease_lost = True
        self.superseded[task] = run_id
        task.add_done_callback(lambda t: self.superseded.pop(t, None))

    async def _execute(self, lease: Lease) -> None:
        engine = self.engine
        run_id = lease.run_id
        me = asyncio.current_task()
        ex: Execution | None = None
        try:
            rec = await engine.store.get_run(run_id)
            if rec is None:
                return
            wf = engine.resolve(rec.workflow)
            events = await engine.store.load_events(run_id)
            ex = Execution(engine, lease, rec, wf, events)
            ex.task = me
            if me in self.superseded:
                ex.lease_lost = True  # claimed again before it even began
            else:
                self.executions[run_id] = ex
            status = await ex.execute(self.make_context(ex))
            if status is not None and status in TERMINAL_STATUSES and rec.parent_run_id:
                engine.wake_local(rec.parent_run_id)
        except asyncio.CancelledError:
            raise
        except LeaseLostError as exc:
            log.warning("run %s: %s", run_id, exc)
        except StoreError as exc:
            # The journal failed under the run (a database restart, a lost connection).
            # Nothing about the run was decided: hand it back for a replay, here or on
            # another worker, once the store answers again.
            log.warning("run %s: the journal failed (%s); handing the run back", run_id, exc)
            if self.executions.get(run_id) is ex:
                del self.executions[run_id]
            await self._hand_back(ex.lease if ex is not None else lease)
        except Exception:
            log.exception("run %s: the engine failed while executing it", run_id)
        finally:
            # Only this execution's entries: a newer claim of the run may own them now.
            if ex is not None and self.executions.get(run_id) is ex:
                del self.executions[run_id]
            if self.active.get(run_id) is me:
                del self.active[run_id]
            engine.run_ended(run_id)
            engine.poke()

    async def _scheduler(self) -> None:
        engine = self.engine
        while not engine.closing:
            engine.wake.clear()
            try:
                await self.claim(limit=engine.concurrency - len(self.active))
                delay = engine.poll_interval
                # At capacity (or draining) no timer matters: a run ending pokes us.
                if len(self.active) < engine.concurrency and not self.draining:
                    nxt = await engine.store.next_wake_at()
                    if nxt is not None:
                        delay = max(0.0, min(delay, nxt - engine.clock.now()))
                engine.health.ok()
            except asyncio.CancelledError:
                raise
            except StoreError as exc:
                engine.health.failed("claiming runs", exc)
                delay = engine.poll_interval
            except Exception:
                log.exception("scheduler: cannot claim runs; retrying")
                delay = engine.poll_interval
            if delay > 0 or not engine.wake.is_set():
                await race_event(engine.wake, engine.clock, delay)

    async def _hand_back(self, lease: Lease) -> None:
        """Release ``lease`` (the run goes back to pending), retrying while the store is
        unreachable, until the lease would have expired anyway."""
        engine = self.engine
        delay = 0.05
        while not engine.closing:
            try:
                await engine.store.append(lease, [released("journal_failed")],
                                          now=engine.clock.now(),
                                          finish=Finish(RunStatus.PENDING))
                engine.journal_written(lease.run_id)
                return
            except LeaseLostError:
                return
            except StoreError as exc:
                if engine.clock.now() + delay >= lease.expires_at:
                    log.warning("run %s: cannot hand it back (%s); its lease expires",
                                lease.run_id, exc)
                    return
            await engine.clock.sleep(delay)
            delay = min(delay * 2, 1.0)

    # -- the heartbeat ---------------------------------------------------------------

    def worker_record(self, *, stopped: bool = False) -> WorkerRecord:
        """This worker's row in the workers registry, as of now."""
        engine = self.engine
        now = engine.clock.now()
        return WorkerRecord(
            worker_id=engine.owner.id, host=engine.owner.host, pid=engine.owner.pid,
            started_at=engine.started_at if engine.started_at is not None else now,
            heartbeat_at=now, concurrency=engine.concurrency, in_flight=len(self.active),
            lease_seconds=engine.lease_seconds,
            pools=tuple(sorted(engine.pools)) if engine.pools is not None else (),
            stopped_at=now if stopped else None)

    async def _report_worker(self, *, stopped: bool = False) -> None:
        try:
            await self.engine.store.save_worker(self.worker_record(stopped=stopped))
            self.engine.health.ok()
        except asyncio.CancelledError:
            raise
        except StoreError as exc:
            self.engine.health.failed("reporting to the workers registry", exc)
        except Exception as exc:
            log.warning("workers registry: cannot report this worker (%s)", exc)

    async def _forget_old_workers(self) -> None:
        engine = self.engine
        try:
            await engine.store.forget_workers(before=engine.clock.now() - WORKERS_KEPT_FOR)
        except asyncio.CancelledError:
            raise
        except StoreError as exc:
            engine.health.failed("forgetting old workers", exc)
        except Exception as exc:
            log.warning("workers registry: cannot forget old workers (%s)", exc)

    async def _heartbeat(self) -> None:
        engine = self.engine
        if engine.register_worker:
            await self._report_worker()
            await self._forget_old_workers()
        while not engine.closing:
            await engine.clock.sleep(engine.lease_seconds / 3)
            if engine.register_worker:
                await self._report_worker()
            executions = list(self.executions.values())
            if executions:
                await self._renew(executions)

    async def _renew(self, executions: list[Execution]) -> None:
        """Renew the leases of ``executions``; stop those whose lease was taken over."""
        engine = self.engine
        try:
            renewed = await engine.store.renew([ex.lease for ex in executions],
                                               now=engine.clock.now(),
                                               lease_seconds=engine.lease_seconds)
            engine.health.ok()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The leases keep the expiry they had: a step that starts near it asks
            # the store itself (Execution.fence).
            if isinstance(exc, StoreError):
                engine.health.failed("renewing leases", exc)
            else:
                log.exception("heartbeat: cannot renew leases")
            return
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
                log.warning("run %s: lease taken over; stopping local execution", ex.run_id)
                ex.lease_lost = True
                if ex.task is not None:
                    ex.task.cancel()
            elif lease.token == ex.lease.token:
                ex.lease = lease
