"""``stalwart worker`` (a process that executes runs until SIGTERM) and ``workers list``.

A worker imports the modules that define workflows, registers every workflow it finds
and claims their runs from the store — on PostgreSQL, any number of workers on any
number of machines share one journal. On SIGTERM or SIGINT it stops claiming, lets the
runs it executes finish for ``--grace`` seconds, then hands the rest back (another
worker replays them at once); a second signal skips what is left of the grace period.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from .._runtime import Runtime, runtime_of
from ..engine._worker import pid_alive
from ..engine._workflow import Workflow
from ..errors import StoreError
from ..store._base import RunRecord, RunStatus, Store, WorkerRecord
from ..store._sqlite import SQLiteStore
from ._common import (
    CliError,
    JsonOption,
    StoreOption,
    client_runtime,
    command_store,
    executing_runtime,
    fmt_duration,
    print_json,
    run_async,
)
from ._help import HelpCommand, HelpGroup
from ._journal import open_journal
from ._loader import add_cwd_to_path, find_workflow, import_module, workflows_in
from ._options import at_least
from ._output import PlainOption, Rows, console, parse_duration, pipe_console

__all__ = ["Fleet", "WorkerRow", "fleet_of", "read_fleet", "worker", "worker_state",
           "workers_app"]

log = logging.getLogger("stalwart.worker")


def _info(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _workflows(imports: list[str]) -> dict[str, Workflow[Any, Any]]:
    found: dict[str, Workflow[Any, Any]] = {}
    for spec in imports:
        wfs = [find_workflow(spec)] if ":" in spec else workflows_in(import_module(spec))
        if not wfs:
            raise CliError(f"module {spec!r} defines no workflows")
        for wf in wfs:
            other = found.get(wf.name)
            if other is not None and other.fn is not wf.fn:
                raise CliError(f"two different workflows are named {wf.name!r} "
                               f"({other.ref} and {wf.ref})")
            found[wf.name] = wf
    return found


# -- stalwart worker -----------------------------------------------------------------


_FIRST_RETRY, _MAX_RETRY = 1.0, 30.0


async def _open_when_reachable(rt: Runtime, signals: asyncio.Queue[int]) -> bool:
    """Open the runtime, retrying while the store cannot be reached (a database that
    starts after its workers, or restarts); ``False`` if a signal came first."""
    delay = _FIRST_RETRY
    while True:
        try:
            await open_journal(rt)  # a path that cannot be used: one line, exit 2
            return True
        except StoreError as exc:
            if not exc.retryable:
                raise
            _info(f"cannot reach the store ({exc}); retrying in {delay:g}s")
        try:
            sig = await asyncio.wait_for(signals.get(), delay)
        except TimeoutError:
            delay = min(delay * 2, _MAX_RETRY)
            continue
        _info(f"{signal.Signals(sig).name} while waiting for the store: stopping")
        return False


def _pooled(arg: Store | str | os.PathLike[str] | None, max_connections: int) -> Store:
    """The PostgreSQL store ``arg`` names, with a pool of ``max_connections``."""
    if arg is None:
        arg = os.environ.get("STALWART_STORE") or None
    if isinstance(arg, str) and arg.startswith(("postgresql://", "postgres://")):
        from ..store._postgres import PostgresStore  # type: ignore[import-not-found,unused-ignore]

        pg: Store = PostgresStore(arg, max_connections=max_connections,
                                  write_concurrency=min(4, max_connections))
        return pg
    if arg is not None and not isinstance(arg, str | os.PathLike):
        raise CliError("--max-connections: the workflows' Runtime was given a store "
                       "object; set its pool size there (PostgresStore(url, "
                       "max_connections=N))")
    raise CliError("--max-connections is for a PostgreSQL store (postgresql://...); this "
                   f"worker's store is {arg or 'the default SQLite journal'}")


def store_origin(store_flag: str | None, rt: Runtime,
                 workflows: dict[str, Workflow[Any, Any]]) -> str:
    """Where the store a worker serves came from, for its banner."""
    if store_flag is not None:
        return "--store"
    for wf in workflows.values():
        home = runtime_of(wf)
        if home is not None and home._store_arg is not None:
            return f"the Runtime of {wf.ref.partition(':')[0] if wf.ref else 'its module'}"
    if os.environ.get("STALWART_STORE"):
        return "$STALWART_STORE"
    return "the default"


def store_banner(rt: Runtime, origin: str) -> list[str]:
    """What a worker says about the journal it serves: which one, from where, and a
    warning when it is a local file (only this machine's processes can share it) or
    when nothing chose it (the default journal in the working directory)."""
    lines = [f"serving the journal {rt.store.url} (from {origin})"]
    if isinstance(rt.store, SQLiteStore):
        path = Path(rt.store.path).resolve()
        if origin == "the default":
            lines.append(f"warning: no --store and no $STALWART_STORE: this worker serves "
                         f"the default journal, {path}, in the working directory")
        lines.append(f"warning: the journal is a local SQLite file ({path}): only "
                     "processes on this machine share it; for workers on several machines "
                     "point every one at one PostgreSQL database (--store "
                     "postgresql://... or $STALWART_STORE)")
    return lines


async def _serve(rt: Runtime, grace: float, banner: list[str]) -> int:
    """Execute runs until a signal; returns how many runs were handed back."""
    loop = asyncio.get_running_loop()
    signals = asyncio.Queue[int]()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    try:
        if not await _open_when_reachable(rt, signals):
            return 0
        served = rt.served_workflows()
        pools = f", pools {', '.join(sorted(rt.pools))}" if rt.pools is not None else ""
        _info(f"worker {rt.owner.id} (pid {rt.owner.pid} on {rt.owner.host}) executes "
              f"{', '.join(sorted(served)) or 'nothing'}; concurrency {rt.concurrency}"
              f"{pools}")
        for line in banner:
            _info(line)
        if not served:
            _info("warning: no imported workflow is in the pools served; this worker "
                  "will claim nothing")
        first = await signals.get()
        _info(f"{signal.Signals(first).name}: no more claims; waiting up to {grace:g}s for "
              f"{rt.in_flight} executing run(s) (signal again to stop at once)")
        drain = asyncio.ensure_future(rt.drain(grace))
        again = asyncio.ensure_future(signals.get())
        await asyncio.wait({drain, again}, return_when=asyncio.FIRST_COMPLETED)
        again.cancel()
        drain.cancel()
        left = rt.in_flight
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await rt.close()
    return left


def worker(
    imports: Annotated[list[str], typer.Option(
        "--import", metavar="MODULE",
        help="Import workflows from MODULE (every workflow defined there) or "
             "MODULE:WORKFLOW; repeatable, at least one.")],
    store: StoreOption = None,
    concurrency: Annotated[int | None, typer.Option(
        metavar="N", callback=at_least(1),
        show_default="its workflows' runtime's, else 100",
        help="Runs executed at once by this worker.")] = None,
    pools: Annotated[list[str] | None, typer.Option(
        "--pool", metavar="NAME",
        show_default="all imported",
        help="Serve only workflows of this worker pool (@app.workflow(pool=NAME); "
             "'default' for those without one); repeatable.")]
    = None,
    grace: Annotated[float, typer.Option(
        metavar="SECONDS", callback=at_least(0),
        help="On SIGTERM/SIGINT, seconds to let executing runs finish before handing "
             "them back.")] = 30.0,
    lease_seconds: Annotated[float | None, typer.Option(
        "--lease", metavar="SECONDS", callback=at_least(0.1),
        show_default="its workflows' runtime's, else 30",
        help="Seconds a claim lasts without a heartbeat: how soon other workers take "
             "over the runs of a worker that died.")] = None,
    poll_interval: Annotated[float | None, typer.Option(
        "--poll", metavar="SECONDS", callback=at_least(0.01),
        show_default="its workflows' runtime's, else 1",
        help="Seconds between looks for ready runs when no notification arrives.")]
    = None,
    max_connections: Annotated[int | None, typer.Option(
        "--max-connections", metavar="N", callback=at_least(1),
        show_default="10",
        help="PostgreSQL: the most pooled connections this worker opens (it opens one "
             "more to LISTEN for wake-ups).")] = None,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Log at INFO level (default: warnings only).")] = False,
    create: Annotated[bool, typer.Option(
        "--create", help="PostgreSQL: create the journal even in a schema that holds "
                         "other tables (by default only an empty schema gets one).")]
    = False,
) -> None:
    """Execute runs from the store until SIGTERM: one of any number of workers.

    A store that cannot be reached at start (a database still starting) is retried,
    1 s apart and doubling up to 30 s, until it can be or a signal arrives. A URL that
    cannot work (malformed, an invalid option) is refused at once."""
    add_cwd_to_path()
    workflows = _workflows(imports)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        # During a database outage the pool warns at every reconnection attempt, in three
        # lines each; the runtime says that the store is unreachable, once a minute that
        # it still is, and when it is back (--verbose shows the pool's attempts too).
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    # The settings of the runtime the modules made their workflows with (budget, models,
    # policies, tracing, its journal...), but what the options say.
    given = {name: value for name, value in (
        ("concurrency", concurrency), ("lease_seconds", lease_seconds),
        ("poll_interval", poll_interval), ("pools", pools or None)) if value is not None}
    target: Store | str | None = command_store(store, workflows.values())
    if max_connections is not None:
        target = _pooled(target, max_connections)
    rt = executing_runtime(workflows.values(), target, **given)
    if create and hasattr(rt.store, "create"):
        rt.store.create = True  # PostgreSQL; an SQLite file is only ever created empty
    for wf in workflows.values():
        rt.register(wf)
    banner = store_banner(rt, store_origin(store, rt, workflows))
    left = run_async(_serve(rt, grace, banner))
    held = rt.held_by_threads
    handed = left - len(held)
    _info(f"worker {rt.owner.id} stopped" + (
        f"; handed {handed} unfinished run(s) back to the store" if handed > 0 else ""))
    if held:
        # A thread cannot be stopped, and its run was not handed back while it runs.
        # Ending the process ends the step: a worker on this host takes the run over at
        # once (its owner is gone), one elsewhere when its lease expires. Exiting here
        # skips atexit handlers (spans still queued for export are lost with it).
        _info(f"{len(held)} run(s) had a synchronous step still running in a thread "
              f"({', '.join(held)}): exiting now so that it does not run on beside the "
              "worker that takes the run over")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


# -- stalwart workers list -----------------------------------------------------------

workers_app = typer.Typer(
    help="The workers registry: who executes runs, and what they hold.",
    no_args_is_help=True,
    cls=HelpGroup,
    rich_markup_mode=None,
)


def worker_state(w: WorkerRecord, now: float, host: str) -> str:
    """``stopped`` (cleanly), ``dead`` (its process is gone from this host, or it has not
    been heard from within its lease) or ``live`` — the engine's own rule for taking a
    worker's runs over."""
    if w.stopped_at is not None:
        return "stopped"
    if w.host == host and w.pid != os.getpid() and not pid_alive(w.pid):
        return "dead"
    return "live" if w.alive(now) else "dead"


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """A worker as ``workers list`` (and the dashboard) show it: its state and the runs
    it holds a lease on."""

    worker: WorkerRecord
    state: str
    held: tuple[RunRecord, ...]

    def uptime(self, now: float) -> float:
        """Up till now while it lives; else till it stopped or was last heard from."""
        w = self.worker
        end = now if self.state == "live" else (w.stopped_at or w.heartbeat_at)
        return end - w.started_at

    def expired(self, now: float) -> int:
        """How many of its leases have expired."""
        return sum(1 for r in self.held if (r.lease_expires_at or 0) < now)


@dataclass(frozen=True, slots=True)
class Fleet:
    """The workers registry read at ``now``: each worker with its leases, and the running
    runs leased by processes not in the registry."""

    now: float
    host: str
    rows: tuple[WorkerRow, ...]
    orphans: tuple[RunRecord, ...]


def fleet_of(workers: list[WorkerRecord], running: list[RunRecord], now: float,
             host: str) -> Fleet:
    """Each worker's state and leases (a pure function of what the store returned)."""
    leases: dict[str, list[RunRecord]] = {}
    for r in running:
        if r.lease_owner is not None:
            leases.setdefault(r.lease_owner, []).append(r)
    rows = tuple(WorkerRow(w, worker_state(w, now, host), tuple(leases.pop(w.worker_id, [])))
                 for w in workers)
    return Fleet(now=now, host=host, rows=rows,
                 orphans=tuple(r for held in leases.values() for r in held))


async def read_fleet(rt: Runtime, since: float) -> Fleet:
    """The workers heard from in the last ``since`` seconds, read through ``rt``."""
    await rt.open()
    now = time.time()
    workers = await rt.store.list_workers(since=now - since)
    running = await rt.store.list_runs(status=RunStatus.RUNNING, limit=1_000_000)
    return fleet_of(workers, running, now, socket.gethostname())


async def _read(store: str | None, since: float) -> Fleet:
    rt = client_runtime(store)
    try:
        return await read_fleet(rt, since)
    finally:
        await rt.close()


def _lease_view(r: RunRecord, now: float) -> dict[str, Any]:
    return {"run_id": r.run_id, "workflow": r.workflow,
            "expires_in": None if r.lease_expires_at is None
            else round(r.lease_expires_at - now, 3)}


@workers_app.command("list", cls=HelpCommand)
def list_workers(
    store: StoreOption = None,
    json_out: JsonOption = False,
    plain: PlainOption = False,
    since_text: Annotated[str, typer.Option(
        "--since", metavar="DURATION",
        help="Also show workers stopped or dead within this period: 90s, 15m, 2h, 1d "
             "(a bare number is seconds).")] = "1h",
) -> None:
    """Live workers (and recently stopped or dead ones), their leases and heartbeats."""
    since = parse_duration(since_text)
    fleet = run_async(_read(store, since))
    now, host = fleet.now, fleet.host
    rows = [(r.worker, r.state, list(r.held)) for r in fleet.rows]
    orphans = list(fleet.orphans)
    if json_out:
        print_json({
            "now": now,
            "workers": [{
                "worker_id": w.worker_id, "state": state, "host": w.host, "pid": w.pid,
                "started_at": w.started_at, "heartbeat_at": w.heartbeat_at,
                "heartbeat_age": round(now - w.heartbeat_at, 3),
                "stopped_at": w.stopped_at, "concurrency": w.concurrency,
                "in_flight": w.in_flight, "lease_seconds": w.lease_seconds,
                "pools": list(w.pools), "leases": [_lease_view(r, now) for r in held],
            } for w, state, held in rows],
            "unregistered_leases": [_lease_view(r, now) | {"owner": r.lease_owner}
                                    for r in orphans],
        })
        return
    out = console()
    if not rows and not orphans and not plain:
        out.print(f"no workers heard from in the last {since_text}")
        return
    table = Rows(["worker", "state", "host", "pid", "up", "heartbeat", "in flight",
                  "leases", "pools"])
    for w, state, held in rows:
        style = {"live": "green", "dead": "red"}.get(state, "dim")
        row = WorkerRow(w, state, tuple(held))
        expired = row.expired(now)
        held_text = str(len(held)) + (f" ({expired} expired)" if expired else "")
        table.add(w.worker_id, Text(state, style=style), w.host, str(w.pid),
                  fmt_duration(row.uptime(now)),
                  f"{fmt_duration(now - w.heartbeat_at)} ago",
                  f"{w.in_flight}/{w.concurrency}", held_text,
                  ", ".join(w.pools) or "all")
    table.print(out, plain=plain)
    if plain:  # the table alone on stdout; what it means on stderr
        out = pipe_console(sys.stderr)
    dead = [(w, held) for w, state, held in rows if state == "dead" and held]
    for w, held in dead:
        if w.host == host:
            out.print(f"worker {w.worker_id} is dead (pid {w.pid} is gone from this host): "
                      f"its {len(held)} run(s) are reclaimable now; a worker on this host "
                      "takes them over at once")
        elif all((r.lease_expires_at or 0) < now for r in held):
            out.print(f"worker {w.worker_id} is dead: its {len(held)} run(s) are free for "
                      "any worker (their leases expired)")
        else:
            out.print(f"worker {w.worker_id} is dead: its {len(held)} run(s) go to other "
                      "workers when their leases expire (at most "
                      f"{fmt_duration(w.lease_seconds)})")
    if orphans:
        out.print(f"{len(orphans)} running run(s) are leased by processes not in the "
                  "registry (one-shot commands such as stalwart run or resume, workers "
                  f"heard from more than {since_text} ago, or older stalwarts)")
