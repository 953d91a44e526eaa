"""``stalwart run``, ``resume``, ``signal`` and ``cancel``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, cast

import typer
from rich.table import Table
from rich.text import Text

from .._runtime import IfExists, Runtime
from ..engine._workflow import Workflow
from ..store._base import EventKind, RunRecord, RunStatus, Store
from ._common import (
    FAILURE,
    USAGE,
    CliError,
    StoreOption,
    client_runtime,
    command_store,
    error_info,
    executing_runtime,
    failure_line,
    fmt_duration,
    fmt_time,
    parse_json,
    preview,
    run_async,
    store_hint,
    store_hint_for,
)
from ._frames import TracebackOption, traceback_lines
from ._journal import open_journal
from ._loader import add_cwd_to_path, find_workflow, import_module, resolve_ref, workflows_in
from ._options import at_least
from ._output import console
from ._progress import Progress, watch_steps

__all__ = ["cancel", "cancel_run", "resume", "run", "signal"]

_AT_REST = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED,
                      RunStatus.DEAD_LETTERED, RunStatus.SLEEPING, RunStatus.WAITING})


def _info(line: str) -> None:
    """A progress or hint line: stderr, so that stdout carries only the result."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


# -- run -----------------------------------------------------------------------------


@dataclass
class _Started:
    """What ``stalwart run`` knows of its run when Ctrl-C comes."""

    run_id: str
    started: bool = False
    parked: RunRecord | None = None
    """The run as it was at the interrupt when no execution here held it (parked)."""


async def _run(rt: Runtime, wf: Workflow[Any, Any], args: tuple[Any, ...],
               kwargs: dict[str, Any], *, state: _Started, if_exists: IfExists, wait: bool,
               timeout: float | None, progress: Progress) -> tuple[RunRecord, bool]:
    try:
        await open_journal(rt)  # one clear line when --store cannot be used
        with warnings.catch_warnings():
            # A mistyped --input makes pydantic warn while dumping it, before the
            # validation error that we report anyway.
            warnings.filterwarnings("ignore", message="Pydantic serializer warnings")
            handle = await rt.start(wf, *args, run_id=state.run_id, if_exists=if_exists,
                                    **kwargs)
        state.started = True
        if not wait:
            return await rt.get_run(handle.run_id), handle.created
        progress.line(f"run {handle.run_id} " + (
            f"started: {wf.name}" if handle.created else
            f"already existed ({(await rt.get_run(handle.run_id)).status}): following it"))
        watcher = asyncio.ensure_future(
            progress.follow(handle) if not progress.quiet else asyncio.sleep(0))
        try:
            async with progress.spinning():
                rec = await rt.wait_for_end(handle.run_id, timeout=timeout)
        except TimeoutError:
            watcher.cancel()
            raise CliError(f"run {handle.run_id} did not end within {timeout}s; it is "
                           f"unfinished: stalwart resume {handle.run_id}"
                           f"{store_hint_for(rt.store)}",
                           FAILURE) from None
        except BaseException:
            watcher.cancel()
            raise
        # The run has ended: its stream ends as soon as it has printed the last events.
        await watcher
        return rec, handle.created
    finally:
        if state.started and not rt.in_flight:
            with contextlib.suppress(Exception):  # what to say at Ctrl-C; best effort
                state.parked = await rt.get_run(state.run_id)
        await rt.close()


def _interrupted(rt: Runtime, state: _Started, where: str) -> NoReturn:
    """Ctrl-C in ``stalwart run``: say what became of the run, exit 130."""
    rid = state.run_id
    if not state.started:
        _info(f"interrupted before run {rid} was started")
    elif rt.held_by_threads:
        # A thread cannot be stopped and the run was not handed back while its step
        # runs: ending the process ends the step, and `resume` on this host takes the
        # run over at once (its owner is gone).
        _info(f"interrupted; run {rid}: a synchronous step was still running, and ends "
              f"with this process; `stalwart resume {rid}{where}` takes the run over")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    elif state.parked is not None and state.parked.is_terminal:
        _info(f"interrupted; run {rid} had already ended ({state.parked.status})")
    elif state.parked is not None and state.parked.status != RunStatus.RUNNING:
        _info(f"interrupted; run {rid} {_at_rest(state.parked)}; a running worker, or "
              f"`stalwart resume {rid}{where}`, continues it")
    else:
        _info(f"interrupted; run {rid} handed back; `stalwart resume {rid}{where}` "
              "finishes it")
    raise typer.Exit(130)


def _at_rest(rec: RunRecord) -> str:
    """How a run no execution holds is: parked, pending or ended."""
    if rec.status == RunStatus.SLEEPING and rec.wake_at is not None:
        return f"is sleeping until {fmt_time(rec.wake_at, date=True)}"
    if rec.status == RunStatus.WAITING:
        return "is waiting for a signal or a child run"
    return f"is {rec.status}"


def run(
    target: Annotated[str, typer.Argument(metavar="MODULE:WORKFLOW",
                                          help="The workflow, e.g. app:weekly_report.")],
    input_json: Annotated[str | None, typer.Option(
        "--input", "-i", metavar="JSON",
        help="Arguments: an object binds by name, an array by position, anything else "
             "is the single argument.")] = None,
    run_id: Annotated[str | None, typer.Option(
        "--run-id", metavar="ID",
        help="Choose the run id, an idempotency key for the whole run: an existing id "
             "with the same input returns that run; with other input it is an error "
             "(exit 2).")] = None,
    if_exists: Annotated[str, typer.Option(
        "--if-exists", metavar="compare|return",
        help="With an existing --run-id: compare the inputs (refuse other input), or "
             "return the existing run whatever its input.")] = "compare",
    store: StoreOption = None,
    no_wait: Annotated[bool, typer.Option(
        "--no-wait", help="Only enqueue the run; a worker (stalwart resume) executes it.")]
    = False,
    timeout: Annotated[float | None, typer.Option(
        metavar="SECONDS", callback=at_least(0),
        help="Give up waiting after this many seconds (the run stays resumable).")]
    = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Print only the result (no run id, no step lines).")]
    = False,
    whole_traceback: TracebackOption = False,
) -> None:
    """Run a workflow and print its result (JSON) on stdout.

    On stderr it prints the run id at once, then a line for each step as it starts,
    retries, parks and completes (a spinner on a terminal); Ctrl-C hands the run back
    for `stalwart resume`."""
    if if_exists not in ("compare", "return"):
        raise CliError(f"--if-exists is compare or return, not {if_exists!r}", USAGE)
    data = parse_json(input_json, "--input")
    add_cwd_to_path()
    wf = find_workflow(target)
    args, kwargs = wf.input_from_json(data) if input_json is not None else ((), {})
    started = time.monotonic()
    # With the settings of the runtime the module made it with (budget, models...).
    # A one-shot process, not a worker: it stays out of `stalwart workers list`.
    rt = executing_runtime([wf], command_store(store, [wf]), worker=not no_wait,
                           register_worker=False)
    where = store_hint_for(rt.store)
    progress = Progress(sys.stderr, quiet=quiet)
    watch_steps(rt, progress)
    state = _Started(run_id or uuid.uuid4().hex)
    try:
        rec, created = run_async(_run(rt, wf, args, kwargs, state=state,
                                      if_exists=cast(IfExists, if_exists), wait=not no_wait,
                                      timeout=timeout, progress=progress))
    except KeyboardInterrupt:
        _interrupted(rt, state, where)
    hint = f"stalwart runs show {rec.run_id}{where}"
    say = (lambda line: None) if quiet else _info
    if not created and no_wait:
        say(f"run {rec.run_id} already existed ({rec.status}); not started again")
    if no_wait:
        sys.stdout.write(rec.run_id + "\n")
        say(f"run {rec.run_id} enqueued ({rec.status}); execute it with "
            f"`stalwart resume {rec.run_id}{where}`, inspect it with `{hint}`")
        return
    if rec.status != RunStatus.COMPLETED:
        # Where the user's code was when it failed, then the one error line.
        shown = traceback_lines(error_info(rec.error).traceback if rec.error else "",
                                whole=whole_traceback, base=Path.cwd())
        for line in shown:
            _info(line)
        more = "" if whole_traceback or not shown else "; the whole traceback: --traceback"
        raise CliError(f"{failure_line(rec)} (details: {hint}{more})", FAILURE)
    sys.stdout.write((rec.result or "null") + "\n")
    say(f"run {rec.run_id} completed in {fmt_duration(time.monotonic() - started)}; "
        f"inspect it with `{hint}`")


# -- resume --------------------------------------------------------------------------


@dataclass
class _Plan:
    ready: list[RunRecord]
    parked: list[RunRecord]
    unresolved: list[tuple[RunRecord, str]]
    workflows: dict[str, Workflow[Any, Any]]
    store: str | Store | None
    """The journal the runs were found in (see ``command_store``)."""


def _load_imports(imports: list[str]) -> dict[str, Workflow[Any, Any]]:
    found: dict[str, Workflow[Any, Any]] = {}
    for spec in imports:
        wfs = ([find_workflow(spec)] if ":" in spec else workflows_in(import_module(spec)))
        if not wfs:
            raise CliError(f"module {spec!r} defines no workflows")
        for wf in wfs:
            found[wf.name] = wf
    return found


async def _plan(flag: str | None, run_id: str | None, imports: list[str]) -> _Plan:
    # Imported inside the event loop: a module that runs a program when imported fails
    # here (see _loader) instead of running it.
    workflows = _load_imports(imports)
    store = command_store(flag, workflows.values())
    rt = client_runtime(store)
    try:
        if run_id is not None:
            records = [await rt.get_run(run_id)]
        else:
            records = []
            for status in (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.SLEEPING,
                           RunStatus.WAITING):
                records.extend(await rt.list_runs(status=status, limit=100_000))
        now = rt.clock.now()
    finally:
        await rt.close()
    plan = _Plan(ready=[], parked=[], unresolved=[], workflows=workflows, store=store)
    for rec in sorted(records, key=lambda r: r.created_at):
        if rec.is_terminal:
            continue
        if rec.status in (RunStatus.SLEEPING, RunStatus.WAITING) and (
                rec.wake_at is None or rec.wake_at > now):
            plan.parked.append(rec)
            continue
        if rec.workflow not in workflows:
            try:
                if rec.workflow_ref is None:
                    raise CliError("the run does not say where its workflow is defined")
                wf = resolve_ref(rec.workflow_ref)
                if wf.name != rec.workflow:
                    raise CliError(f"{rec.workflow_ref} is now named {wf.name!r}")
                workflows[wf.name] = wf
            except CliError as exc:
                plan.unresolved.append((rec, str(exc)))
                continue
        plan.ready.append(rec)
    return plan


async def _claimed_by(rt: Runtime, run_id: str) -> int | None:
    """The sequence number of this runtime's claim of ``run_id`` (``None``: not ours)."""
    for e in await rt.store.load_events(run_id):
        if e.kind == EventKind.RUN_CLAIMED and e.name == rt.owner.id:
            return e.seq
    return None


async def _execute(store: str | Store | None, plan: _Plan, run_id: str | None,
                   timeout: float | None, progress: Progress,
                   ) -> tuple[list[RunRecord], list[RunRecord]]:
    """Claim and run; returns (runs this process executed, ready runs left alone)."""
    rt = executing_runtime(plan.workflows.values(), store, poll_interval=0.2,
                           register_worker=False)
    for wf in plan.workflows.values():
        rt.register(wf)
    watch_steps(rt, progress)
    followers: dict[str, asyncio.Future[None]] = {}
    try:
        await open_journal(rt)
        await rt.resume(run_id)
        candidates = [r.run_id for r in plan.ready]
        ours: set[str] = set()
        deadline = None if timeout is None else time.monotonic() + timeout
        async with progress.spinning():
            while True:
                for rid in candidates:
                    if rid in ours:
                        continue
                    claim = await _claimed_by(rt, rid)
                    if claim is not None:
                        ours.add(rid)
                        progress.line(f"run {rid} resumed")
                        if not progress.quiet:
                            followers[rid] = asyncio.ensure_future(
                                progress.follow(rt.handle(rid), after=claim))
                busy = [rid for rid in ours
                        if (await rt.get_run(rid)).status not in _AT_REST]
                if not busy:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise CliError(f"runs still executing after {timeout}s: "
                                   f"{', '.join(busy)}; they stay resumable", FAILURE)
                await asyncio.sleep(0.05)
        done = [await rt.get_run(rid) for rid in candidates if rid in ours]
        left = [await rt.get_run(rid) for rid in candidates if rid not in ours]
        for rec in done:  # an ended run's stream ends once it has said its last events
            if rec.is_terminal and rec.run_id in followers:
                await followers[rec.run_id]
        return done, left
    finally:
        for follower in followers.values():
            follower.cancel()
        await rt.close()


def resume(
    run_id: Annotated[str | None, typer.Argument(
        metavar="RUN_ID", help="Resume only this run (default: every run that needs it).")]
    = None,
    store: StoreOption = None,
    imports: Annotated[list[str] | None, typer.Option(
        "--import", metavar="MODULE",
        help="Import workflows from MODULE (or MODULE:WORKFLOW) too; repeatable. Needed "
             "when a run's own reference cannot be imported (e.g. it was started from "
             "__main__).")] = None,
    timeout: Annotated[float | None, typer.Option(
        metavar="SECONDS", callback=at_least(0),
        help="Stop waiting for the resumed runs after this many seconds.")] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No step lines while the runs execute.")] = False,
) -> None:
    """Finish runs whose process died (or that are due): replay, then continue.

    While they execute it prints, on stderr, a line for each step as it starts, retries,
    parks and completes (a spinner on a terminal)."""
    add_cwd_to_path()
    plan = run_async(_plan(store, run_id, imports or []))
    where = plan.store
    out = console()
    if run_id is not None and not (plan.ready or plan.parked or plan.unresolved):
        rec = run_async(_get(where, run_id))
        out.print(f"run {run_id} has already ended ({rec.status}); nothing to resume")
        return
    for rec, why in plan.unresolved:
        if run_id is not None:
            raise CliError(f"cannot load the workflow of run {rec.run_id} "
                           f"({rec.workflow}): {why}; pass --import MODULE", USAGE)
        _info(f"warning: skipping run {rec.run_id} ({rec.workflow}): {why}; "
              "pass --import MODULE")
    done: list[RunRecord] = []
    left: list[RunRecord] = []
    if plan.ready:
        before = {r.run_id: r.status for r in plan.ready}
        progress = Progress(sys.stderr, quiet=quiet, prefix_runs=run_id is None)
        done, left = run_async(_execute(where, plan, run_id, timeout, progress))
        if done:
            table = Table(box=None, pad_edge=False)
            for col in ("run id", "workflow", "was", "now"):
                table.add_column(col, no_wrap=True)
            table.add_column("result / error", no_wrap=True, overflow="ellipsis")
            for rec in done:
                if rec.status == RunStatus.COMPLETED:
                    detail = preview(rec.result, 50)
                elif rec.status in (RunStatus.SLEEPING, RunStatus.WAITING):
                    detail = ("until " + fmt_time(rec.wake_at, date=True) if rec.wake_at
                              else "until a signal or child")
                else:
                    detail = failure_line(rec)
                table.add_row(rec.run_id, rec.workflow, str(before[rec.run_id]),
                              str(rec.status), Text(detail))
            out.print(f"resumed {len(done)} run(s):")
            out.print(table)
    for rec in left:
        holder = (f"pid {rec.owner_pid} on {rec.owner_host}" if rec.owner_pid
                  else "another worker")
        out.print(f"left alone: run {rec.run_id} is {rec.status}, held by {holder}")
    for rec in plan.parked:
        when = fmt_time(rec.wake_at, date=True) if rec.wake_at else "a signal or child run"
        out.print(f"parked: run {rec.run_id} ({rec.status}) wakes at {when}; "
                  "a running worker (or stalwart resume then) continues it")
    if not (done or left or plan.parked or plan.unresolved):
        out.print("nothing to resume")
    ended_badly = [rec for rec in done if rec.status in (
        RunStatus.FAILED, RunStatus.DEAD_LETTERED, RunStatus.CANCELLED)]
    if ended_badly:  # exit 1, as `run` does for a run that did not complete
        if len(ended_badly) == 1:
            raise CliError(failure_line(ended_badly[0]), FAILURE)
        raise CliError(f"{len(ended_badly)} of the {len(done)} resumed runs did not "
                       f"complete: {', '.join(f'{r.run_id} {r.status}' for r in ended_badly)}",
                       FAILURE)


async def _get(store: str | Store | None, run_id: str) -> RunRecord:
    rt = client_runtime(store)
    try:
        return await rt.get_run(run_id)
    finally:
        await rt.close()


# -- signal and cancel ---------------------------------------------------------------


async def _signal(store: str | None, run_id: str, name: str, payload: Any) -> RunRecord:
    rt = client_runtime(store, read_only=False)
    try:
        rec = await rt.get_run(run_id)
        if rec.is_terminal:
            raise CliError(f"run {run_id} has already ended ({rec.status}); "
                           "it takes no more signals", FAILURE)
        return await rt.signal(run_id, name, payload)
    finally:
        await rt.close()


def signal(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run to signal.")],
    name: Annotated[str, typer.Argument(
        metavar="NAME", help="The signal name the workflow waits for.")],
    payload: Annotated[str | None, typer.Option(
        "--payload", "-p", metavar="JSON", help="The signal's value (default: null).")]
    = None,
    store: StoreOption = None,
) -> None:
    """Send a signal to a run (kept until ctx.wait_for_signal takes it)."""
    value = parse_json(payload, "--payload")
    rec = run_async(_signal(store, run_id, name, value))
    out = console()
    out.print(Text(f"signal {name!r} sent to run {run_id} (now {rec.status})"))
    if rec.status == RunStatus.PENDING:
        out.print(Text(f"a running worker delivers it; if none is running: "
                       f"stalwart resume {run_id}{store_hint(store)}", style="dim"))


async def cancel_run(store: str | None, run_id: str) -> tuple[RunRecord, RunRecord]:
    """Request a run's cancellation: its record before and after (the same record when
    it had already ended: nothing is written then)."""
    rt = client_runtime(store, read_only=False)
    try:
        before = await rt.get_run(run_id)
        if before.is_terminal:
            return before, before
        return before, await rt.cancel(run_id)
    finally:
        await rt.close()


def cancel(
    run_id: Annotated[str, typer.Argument(
        metavar="RUN_ID", help="The run to cancel (its children too).")],
    store: StoreOption = None,
) -> None:
    """Cancel a run and its unfinished children."""
    before, rec = run_async(cancel_run(store, run_id))
    out = console()
    if before.is_terminal:
        if before.status == RunStatus.CANCELLED:
            out.print(f"run {run_id} was already cancelled")
            return
        raise CliError(f"run {run_id} has already ended ({before.status}); "
                       "nothing to cancel", FAILURE)
    if rec.status == RunStatus.CANCELLED:
        out.print(f"run {run_id} cancelled")
    else:
        holder = f"pid {rec.owner_pid} on {rec.owner_host}" if rec.owner_pid else "its worker"
        out.print(f"cancellation requested: run {run_id} is running; {holder} stops it "
                  "at its next step")
