"""``stalwart dlq``: the dead-letter queue — list it, show a run's error chain, redrive.

A run that exhausts its resilience policies (retries spent, every fallback model failed,
an open breaker with nowhere to go) ends ``dead_lettered`` instead of ``failed``: the
fault was in a dependency, so sending the run through again later may well succeed.
Its journal already holds the whole story: the ``run_dead_lettered`` event names the
step that gave up and carries the final error, and each failed attempt of that step is
an ``attempt_failed`` event (attempt number, dependency key, error, time, and what the
policy decided next). These commands read only that; ``retry`` calls
:meth:`Runtime.redrive <stalwart.Runtime.redrive>` and then executes the run here, the
way ``stalwart resume`` does.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .._runtime import Runtime
from .._serde import ErrorInfo
from ..engine._workflow import Workflow
from ..store._base import Event, EventKind, RunRecord, RunStatus, Store
from ._common import (
    FAILURE,
    USAGE,
    CliError,
    JsonOption,
    StoreOption,
    client_runtime,
    command_store,
    error_info,
    executing_runtime,
    fmt_duration,
    fmt_time,
    preview,
    print_json,
    run_async,
    store_hint,
)
from ._help import HelpCommand, HelpGroup
from ._journal import open_journal
from ._loader import add_cwd_to_path, imported_workflows, resolve_ref
from ._options import at_least
from ._output import Column, PlainOption, Rows, cell, console

__all__ = ["DeadLetter", "FailedAttempt", "dead_letters", "dlq_app", "read_dead_letter",
           "redrive_only"]

dlq_app = typer.Typer(help="The dead-letter queue: runs that exhausted their resilience "
                           "policies.", no_args_is_help=True, cls=HelpGroup,
                      rich_markup_mode=None)

_AT_REST = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED,
                      RunStatus.DEAD_LETTERED, RunStatus.SLEEPING, RunStatus.WAITING})


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    """One failed attempt of the step that dead-lettered the run, from its journal."""

    seq: int
    round: int
    """1 for the run's first pass, 2 after the first ``dlq retry``, ..."""
    attempt: int
    candidate: int
    """Which model of a fallback chain (0: the primary), or 0 for a tool."""
    key: str | None
    """The dependency key: ``provider:model`` or ``tool:name``."""
    at: float
    next: str
    """What the policies did next: ``retry``, ``fallback`` or ``fail``."""
    retry_at: float | None
    error_type: str
    error_message: str

    def as_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "round": self.round, "attempt": self.attempt,
                "candidate": self.candidate, "key": self.key, "at": self.at,
                "next": self.next, "retry_at": self.retry_at,
                "error": {"type": self.error_type, "message": self.error_message}}


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-lettered run with its error chain."""

    run: RunRecord
    at: float
    step_id: str | None
    step_name: str | None
    error: ErrorInfo
    redrives: int
    attempts: tuple[FailedAttempt, ...]

    def summary_json(self) -> dict[str, Any]:
        rec = self.run
        return {"run_id": rec.run_id, "workflow": rec.workflow,
                "workflow_ref": rec.workflow_ref, "status": str(rec.status),
                "dead_lettered_at": self.at, "step_id": self.step_id,
                "step_name": self.step_name, "attempts": len(self.attempts),
                "redrives": self.redrives,
                "error": {"type": self.error.type, "message": self.error.message}}

    @property
    def saga(self) -> dict[str, Any] | None:
        """The saga's state, when a saga's compensation dead-lettered the run
        (``CompensationFailedError``): what was done, undone and not undone."""
        attrs = self.error.attributes
        if "not_undone" not in attrs:
            return None
        return {k: attrs.get(k) for k in ("compensation", "done", "undone", "not_undone",
                                          "saga_error")}

    def as_json(self) -> dict[str, Any]:
        out = self.summary_json()
        out["saga"] = self.saga
        out["error"]["traceback"] = self.error.traceback
        out["input"] = _json_or_text(self.run.input)
        out["created_at"] = self.run.created_at
        out["failed_attempts"] = [a.as_json() for a in self.attempts]
        return out


def _json_or_text(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def read_dead_letter(rec: RunRecord, events: list[Event]) -> DeadLetter:
    """The error chain of a dead-lettered run: its last ``run_dead_lettered`` event and
    every ``attempt_failed`` event of the step it names (all rounds, oldest first)."""
    last = next((e for e in reversed(events) if e.kind == EventKind.RUN_DEAD_LETTERED), None)
    if last is None:
        raise CliError(f"run {rec.run_id} has no dead-letter event in its journal", FAILURE)
    step_id = last.step_id
    if step_id is None:  # raised outside a guarded step: take the last step that failed
        step_id = next((e.step_id for e in reversed(events)
                        if e.kind == EventKind.ATTEMPT_FAILED and e.seq < last.seq), None)
    attempts: list[FailedAttempt] = []
    round_ = 1
    step_name: str | None = None
    for ev in events:
        if ev.seq > last.seq:
            break
        if ev.kind == EventKind.RUN_REDRIVEN:
            round_ += 1
            continue
        if ev.step_id != step_id or step_id is None:
            continue
        step_name = step_name or ev.name
        if ev.kind != EventKind.ATTEMPT_FAILED:
            continue
        d = json.loads(ev.payload or "{}")
        err = d.get("error") or {}
        attempts.append(FailedAttempt(
            seq=ev.seq, round=round_, attempt=int(d.get("attempt", 0)),
            candidate=int(d.get("candidate", 0)), key=d.get("key"),
            at=float(d.get("at", ev.created_at)), next=str(d.get("next", "?")),
            retry_at=d.get("retry_at"), error_type=str(err.get("type", "?")),
            error_message=str(err.get("message", ""))))
    return DeadLetter(run=rec, at=last.created_at, step_id=step_id, step_name=step_name,
                      error=error_info(last.payload or rec.error), redrives=round_ - 1,
                      attempts=tuple(attempts))


def _short(type_name: str) -> str:
    return type_name.rpartition(".")[2]


def _not_dead(rec: RunRecord, store: str | Store | None) -> CliError:
    return CliError(f"run {rec.run_id} is {rec.status}, not dead-lettered (see `stalwart dlq "
                    f"list{store_hint(store)}`)", USAGE)


async def _load(store: str | None, run_id: str) -> DeadLetter:
    rt = client_runtime(store)
    try:
        rec = await rt.get_run(run_id)
        if rec.status != RunStatus.DEAD_LETTERED:
            raise _not_dead(rec, store)
        return read_dead_letter(rec, await rt.events(run_id))
    finally:
        await rt.close()


async def dead_letters(rt: Runtime, limit: int) -> list[DeadLetter]:
    """The newest ``limit`` dead-lettered runs, each with its error chain."""
    records = await rt.list_runs(status=RunStatus.DEAD_LETTERED, limit=limit)
    return [read_dead_letter(rec, await rt.events(rec.run_id)) for rec in records]


async def _load_all(store: str | None, limit: int) -> list[DeadLetter]:
    rt = client_runtime(store)
    try:
        return await dead_letters(rt, limit)
    finally:
        await rt.close()


# -- dlq list ------------------------------------------------------------------------


def _step_label(dl: DeadLetter) -> str:
    if dl.step_id is None:
        return "-"
    return f"{dl.step_id} {dl.step_name}" if dl.step_name else dl.step_id


@dlq_app.command("list", cls=HelpCommand)
def list_dead(
    limit: Annotated[int, typer.Option(
        metavar="N", callback=at_least(1), help="At most this many runs, newest first.")]
    = 20,
    as_json: JsonOption = False,
    plain: PlainOption = False,
    store: StoreOption = None,
) -> None:
    """List dead-lettered runs, newest first, with the step that gave up."""
    letters = run_async(_load_all(store, limit))
    if as_json:
        print_json([dl.summary_json() for dl in letters])
        return
    out = console()
    if not letters and not plain:
        out.print("no dead-lettered runs")
        return
    rows = Rows(["run id", "workflow", "dead-lettered", "step", "attempts",
                 Column("error", cut=True)])
    for dl in letters:
        rows.add(dl.run.run_id, Text(dl.run.workflow), fmt_time(dl.at, date=True),
                 Text(_step_label(dl)), str(len(dl.attempts)),
                 Text(cell(f"{_short(dl.error.type)}: {dl.error.message}", 32, plain=plain)))
    rows.print(out, plain=plain)
    if plain:
        return
    out.print(Text(f"details: stalwart dlq show RUN_ID{store_hint(store)}; send one through "
                   f"again: stalwart dlq retry RUN_ID{store_hint(store)}", style="dim"),
              soft_wrap=True)


# -- dlq show ------------------------------------------------------------------------


def _next_action(a: FailedAttempt, following: FailedAttempt | None) -> str:
    if a.next == "retry":
        if a.retry_at is None:
            return "retry"
        return f"retry at {fmt_time(a.retry_at)} (+{fmt_duration(a.retry_at - a.at)})"
    if a.next == "fallback":
        to = following.key if following is not None and following.key else "the next model"
        return f"fall back to {to}"
    if a.next == "fail":
        return "give up"
    return a.next


def render_dead_letter(out: Console, dl: DeadLetter, store: str | None) -> None:
    """Print a dead-lettered run: the final error, then each failed attempt."""
    rec = dl.run
    out.print(Text.assemble(("run ", "bold"), (rec.run_id, "bold"), "  ",
                            (str(rec.status), "red")))
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="dim")
    facts.add_column()
    ref = f" ({rec.workflow_ref})" if rec.workflow_ref else ""
    facts.add_row("workflow", Text(rec.workflow + ref))
    facts.add_row("input", Text(preview(rec.input, 100)))
    facts.add_row("dead-lettered", fmt_time(dl.at, date=True))
    facts.add_row("step", Text(_step_label(dl)))
    if dl.redrives:
        facts.add_row("redriven", f"{dl.redrives} time(s) before")
    out.print(facts)
    out.print()
    out.print(Text("error", style="bold"))
    out.print(Text(f"  {dl.error.type}: {dl.error.message}", style="red"), soft_wrap=True)
    out.print()
    if dl.saga is not None:
        _render_saga(out, dl.saga)
    out.print(Text("failed attempts", style="bold"))
    if not dl.attempts:
        out.print("  (none recorded: the error was raised outside a guarded call)")
    else:
        table = Table(box=None, pad_edge=False)
        cols = ["round"] if dl.redrives else []
        for col in (*cols, "attempt", "time", "dependency", "error", "next"):
            table.add_column(col, no_wrap=True)
        table.add_column("message", no_wrap=True, overflow="ellipsis")
        for i, a in enumerate(dl.attempts):
            following = dl.attempts[i + 1] if i + 1 < len(dl.attempts) else None
            row = [str(a.round)] if dl.redrives else []
            table.add_row(*row, str(a.attempt), fmt_time(a.at), Text(a.key or "-"),
                          Text(_short(a.error_type)), Text(_next_action(a, following)),
                          Text(preview(a.error_message, 70)))
        out.print(table)
    out.print()
    out.print(Text(f"send it through again: stalwart dlq retry {rec.run_id}"
                   f"{store_hint(store)}", style="dim"), soft_wrap=True)


def _render_saga(out: Console, saga: dict[str, Any]) -> None:
    def names(key: str) -> str:
        value = saga.get(key)
        return ", ".join(map(str, value)) if isinstance(value, list | tuple) and value \
            else "-"

    out.print(Text("saga (a compensation failed; dlq retry goes on undoing)", style="bold"))
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="dim")
    facts.add_column()
    facts.add_row("rolled back after", Text(str(saga.get("saga_error") or "-")))
    facts.add_row("done", Text(names("done")))
    facts.add_row("undone", Text(names("undone")))
    facts.add_row("not undone", Text(names("not_undone")))
    facts.add_row("failing", Text(str(saga.get("compensation") or "-")))
    out.print(facts)
    out.print()


@dlq_app.command("show", cls=HelpCommand)
def show_dead(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The dead-lettered run.")],
    as_json: JsonOption = False,
    store: StoreOption = None,
) -> None:
    """Show a dead-lettered run's error chain: the final error and every failed attempt."""
    dl = run_async(_load(store, run_id))
    if as_json:
        print_json(dl.as_json())
        return
    render_dead_letter(console(), dl, store)


# -- dlq retry -----------------------------------------------------------------------


def _info(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _workflow_for(rec: RunRecord, imports: list[str],
                  imported: list[Workflow[Any, Any]]) -> Workflow[Any, Any]:
    for wf in imported:
        if wf.name == rec.workflow:
            return wf
    if imports:
        raise CliError(f"none of {', '.join(imports)} defines workflow {rec.workflow!r} "
                       f"of run {rec.run_id}")
    if rec.workflow_ref is None:
        raise CliError(f"run {rec.run_id} does not say where its workflow {rec.workflow!r} "
                       "is defined; pass --import MODULE")
    try:
        wf = resolve_ref(rec.workflow_ref)
    except CliError as exc:
        raise CliError(f"cannot load the workflow of run {rec.run_id} ({rec.workflow}): "
                       f"{exc}; pass --import MODULE") from None
    if wf.name != rec.workflow:
        raise CliError(f"{rec.workflow_ref} is now named {wf.name!r}, not {rec.workflow!r}; "
                       "pass --import MODULE")
    return wf


async def _check(store: str | Store | None, run_id: str) -> RunRecord:
    rt = client_runtime(store)
    try:
        rec = await rt.get_run(run_id)
    finally:
        await rt.close()
    if rec.status != RunStatus.DEAD_LETTERED:
        raise _not_dead(rec, store)
    return rec


async def redrive_only(store: str | Store | None, run_id: str) -> RunRecord:
    """Put a dead-lettered run back in the queue (a worker executes it); a
    :class:`CliError` when it is not dead-lettered."""
    rt = client_runtime(store, read_only=False)
    try:
        rec = await rt.get_run(run_id)
        if rec.status != RunStatus.DEAD_LETTERED:
            raise _not_dead(rec, store)
        await rt.redrive(run_id)
        return await rt.get_run(run_id)
    finally:
        await rt.close()


async def _redrive_and_run(store: str | Store | None, wf: Workflow[Any, Any], run_id: str,
                           timeout: float | None) -> RunRecord:
    rt = executing_runtime([wf], store, poll_interval=0.2, register_worker=False)
    rt.register(wf)
    try:
        await open_journal(rt)
        await rt.redrive(run_id)
        await rt.resume(run_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            rec = await rt.get_run(run_id)
            if rec.status in _AT_REST:
                return rec
            if deadline is not None and time.monotonic() > deadline:
                raise CliError(f"run {run_id} is still executing after {timeout}s; it stays "
                               f"resumable: stalwart resume {run_id}{store_hint(store)}",
                               FAILURE)
            await asyncio.sleep(0.05)
    finally:
        await rt.close()


@dlq_app.command("retry", cls=HelpCommand)
def retry(
    run_id: Annotated[str, typer.Argument(
        metavar="RUN_ID", help="The dead-lettered run to send through again.")],
    store: StoreOption = None,
    imports: Annotated[list[str] | None, typer.Option(
        "--import", metavar="MODULE",
        help="Import the run's workflow from MODULE (or MODULE:WORKFLOW); needed when "
             "its own reference cannot be imported (e.g. it was started from __main__).")]
    = None,
    no_wait: Annotated[bool, typer.Option(
        "--no-wait", help="Only put the run back in the queue; a worker (stalwart resume) "
                          "executes it.")] = False,
    timeout: Annotated[float | None, typer.Option(
        metavar="SECONDS", callback=at_least(0),
        help="Stop waiting after this many seconds (the run stays resumable).")]
    = None,
) -> None:
    """Send a dead-lettered run through again, here, and print its outcome.

    The step that gave up runs again with a fresh attempt count; completed steps replay
    from the journal without running.
    """
    add_cwd_to_path()
    imported = imported_workflows(imports or [])
    store_ = command_store(store, imported)
    rec = run_async(_check(store_, run_id))
    hint = f"stalwart runs show {run_id}{store_hint(store_)}"
    if no_wait:
        after = run_async(redrive_only(store_, run_id))
        sys.stdout.write(run_id + "\n")
        _info(f"run {run_id} redriven ({after.status}); execute it with "
              f"`stalwart resume {run_id}{store_hint(store_)}`")
        return
    wf = _workflow_for(rec, imports or [], imported)
    started = time.monotonic()
    end = run_async(_redrive_and_run(store_, wf, run_id, timeout))
    if end.status == RunStatus.COMPLETED:
        sys.stdout.write((end.result or "null") + "\n")
        _info(f"run {run_id} redriven and completed in "
              f"{fmt_duration(time.monotonic() - started)}; inspect it with `{hint}`")
        return
    if end.status in (RunStatus.SLEEPING, RunStatus.WAITING):
        when = fmt_time(end.wake_at, date=True) if end.wake_at else "a signal or child run"
        console().print(f"run {run_id} redriven; now {end.status} until {when}; a running "
                        f"worker (or stalwart resume{store_hint(store_)} then) continues it",
                        soft_wrap=True)
        return
    info = error_info(end.error)
    again = (f"; see `stalwart dlq show {run_id}{store_hint(store_)}`"
             if end.status == RunStatus.DEAD_LETTERED else f" (details: {hint})")
    raise CliError(f"run {run_id} was redriven and ended {end.status}: "
                   f"{_short(info.type)}: {info.message}{again}", FAILURE)
