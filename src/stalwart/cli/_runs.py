"""``stalwart runs``: list runs, show one as a story, print its raw journal."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .._runtime import Runtime
from .._serde import ErrorInfo
from ..engine._cost import UsageReport, usage_report
from ..engine._timetravel import ForkInfo, fork_info
from ..engine._worker import pid_alive
from ..store._base import Event, RunRecord, RunStatus
from ._common import (
    JsonOption,
    StoreOption,
    client_runtime,
    error_info,
    fmt_duration,
    fmt_time,
    lease_note,
    preview,
    print_json,
    run_async,
    store_hint,
)
from ._frames import TracebackOption, traceback_lines
from ._help import HelpCommand, HelpGroup
from ._options import at_least
from ._output import Column, PlainOption, Rows, cell, console
from ._timeline import RunStory, read_story
from ._trace import fmt_cost
from ._views import fork, replay, trace

__all__ = ["RunView", "error_line", "read_run_view", "render_story", "run_json", "runs_app",
           "story_json"]

runs_app = typer.Typer(help="Inspect runs and their journals.", no_args_is_help=True,
                       cls=HelpGroup, rich_markup_mode=None)

_STATUS_STYLE = {
    RunStatus.COMPLETED: "green",
    RunStatus.FAILED: "red",
    RunStatus.DEAD_LETTERED: "red",
    RunStatus.CANCELLED: "yellow",
    RunStatus.RUNNING: "cyan",
    RunStatus.PENDING: "cyan",
    RunStatus.SLEEPING: "blue",
    RunStatus.WAITING: "blue",
}


def _json_or_text(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _error_json(text: str | None) -> Any:
    """A run's journaled error as its record's fields (an old record's pickle is left
    out: it is never read), or the text itself when it is not a record."""
    if text is None:
        return None
    try:
        return ErrorInfo.from_json(text).to_dict()
    except ValueError:
        return text


def run_json(rec: RunRecord) -> dict[str, Any]:
    error = _error_json(rec.error)
    return {
        "run_id": rec.run_id, "workflow": rec.workflow, "workflow_ref": rec.workflow_ref,
        "status": str(rec.status), "input": _json_or_text(rec.input),
        "result": _json_or_text(rec.result), "error": error,
        "parent_run_id": rec.parent_run_id, "parent_step_id": rec.parent_step_id,
        "created_at": rec.created_at, "updated_at": rec.updated_at, "wake_at": rec.wake_at,
        "lease_owner": rec.lease_owner, "owner_host": rec.owner_host,
        "owner_pid": rec.owner_pid, "cancel_requested": rec.cancel_requested,
    }


def event_json(ev: Event) -> dict[str, Any]:
    return {"seq": ev.seq, "kind": str(ev.kind), "step_id": ev.step_id, "name": ev.name,
            "payload": ev.payload, "created_at": ev.created_at}


def story_json(story: RunStory, children: list[RunRecord],
               usage: UsageReport | None = None, fork: ForkInfo | None = None,
               ) -> dict[str, Any]:
    out = run_json(story.run)
    out["usage"] = usage.as_json() if usage is not None else None
    out["forked_from"] = fork.as_json() if fork is not None else None
    out["executions"] = [e.as_json() for e in story.executions]
    out["steps"] = [s.as_json() for s in story.steps]
    out["children"] = [{"run_id": c.run_id, "workflow": c.workflow, "status": str(c.status),
                        "parent_step_id": c.parent_step_id} for c in children]
    out["crashes"] = story.crashes
    return out


def _status(status: RunStatus) -> Text:
    return Text(str(status), style=_STATUS_STYLE.get(status, ""))


def error_line(rec: RunRecord) -> str:
    info = _json_or_text(rec.error)
    if isinstance(info, dict):
        return f"{info.get('type', '?')}: {info.get('message', '')}"
    return str(info)


# -- runs list -----------------------------------------------------------------------


async def _list(store: str | None, status: RunStatus | None, limit: int) -> list[RunRecord]:
    rt = client_runtime(store)
    try:
        return await rt.list_runs(status=status, limit=limit)
    finally:
        await rt.close()


def list_runs(
    status: Annotated[RunStatus | None, typer.Option(
        metavar="STATUS", help="Only runs in this status: pending, running, sleeping, "
                               "waiting, completed, failed, dead_lettered, cancelled.")]
    = None,
    limit: Annotated[int, typer.Option(
        metavar="N", callback=at_least(1), help="At most this many runs, newest first.")]
    = 20,
    as_json: JsonOption = False,
    plain: PlainOption = False,
    store: StoreOption = None,
) -> None:
    """List runs, newest first."""
    records = run_async(_list(store, status, limit))
    out = console()
    if as_json:
        print_json([run_json(r) for r in records])
        return
    if not records and not plain:
        out.print("no runs" + (f" with status {status}" if status else ""))
        return
    rows = Rows(["run id", "workflow", "status", "created", "updated",
                 Column("result / error", cut=True)])
    for r in records:
        outcome = (cell(r.result, 40, plain=plain) if r.status == RunStatus.COMPLETED
                   else cell(error_line(r), 40, plain=plain) if r.error else "")
        rows.add(r.run_id, Text(r.workflow), _status(r.status),
                 fmt_time(r.created_at, date=True), fmt_time(r.updated_at),
                 Text(outcome))
    rows.print(out, plain=plain)


# -- runs show -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunView:
    """Everything ``runs show`` (and the dashboard's run page) shows of a run."""

    story: RunStory
    events: list[Event]
    children: list[RunRecord]
    usage: UsageReport
    fork: ForkInfo | None


async def read_run_view(rt: Runtime, run_id: str) -> RunView:
    """A run, its journal, its children, its usage and where it was forked from."""
    rec = await rt.get_run(run_id)
    events = await rt.events(run_id)
    children = await rt.store.list_runs(parent_run_id=run_id, limit=1000)
    return RunView(read_story(rec, events), events, children, usage_report(events, rt.prices),
                   fork_info(events))


async def _show(store: str | None, run_id: str) -> RunView:
    rt = client_runtime(store)
    try:
        return await read_run_view(rt, run_id)
    finally:
        await rt.close()


def _usage_line(usage: UsageReport) -> str:
    t = usage.total
    cost = fmt_cost(t.cost)
    if t.cost is None:
        cost = (f"unknown ({t.unpriced_calls} call(s) to unpriced models"
                + (f"; priced part {fmt_cost(t.priced_cost)})" if t.priced_cost else ")"))
    models = ", ".join(f"{k} {v.calls}x" for k, v in usage.by_model.items())
    return (f"{t.tokens} tokens ({t.input_tokens} in, {t.output_tokens} out), cost {cost}; "
            f"{t.calls} call(s)" + (f": {models}" if models else "")
            + (f"; {t.refused} refused before sending (a budget)" if t.refused else ""))


def render_story(out: Console, story: RunStory, children: list[RunRecord],
                 store: str | None, usage: UsageReport | None = None,
                 fork: ForkInfo | None = None, *, whole_traceback: bool = False) -> None:
    """Print a run: its facts, executions, steps and outcome."""
    rec = story.run
    head = Text.assemble(("run ", "bold"), (rec.run_id, "bold"), "  ", _status(rec.status))
    out.print(head)
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="dim")
    facts.add_column()
    ref = f" ({rec.workflow_ref})" if rec.workflow_ref else ""
    facts.add_row("workflow", Text(rec.workflow + ref))
    facts.add_row("created", fmt_time(rec.created_at, date=True))
    facts.add_row("updated", f"{fmt_time(rec.updated_at, date=True)}  "
                  f"({fmt_duration(rec.updated_at - rec.created_at)} after creation)")
    if rec.wake_at is not None and not rec.is_terminal:
        facts.add_row("wakes at", fmt_time(rec.wake_at, date=True))
    if rec.status == RunStatus.RUNNING and rec.owner_pid is not None:
        gone = lease_note(rec, now=time.time(), host=socket.gethostname(),
                          pid_alive=pid_alive)
        facts.add_row("held by", f"pid {rec.owner_pid} on {rec.owner_host}"
                      + (f" ({gone})" if gone else ""))
    if rec.cancel_requested and not rec.is_terminal:
        facts.add_row("cancel", "requested")
    facts.add_row("input", Text(preview(rec.input, 100)))
    if rec.parent_run_id:
        facts.add_row("parent", f"{rec.parent_run_id} (step {rec.parent_step_id})")
    if fork is not None:
        facts.add_row("forked", Text(f"forked from {fork.origin} at step {fork.at}"
                                     + (f" with model {fork.model}" if fork.model else "")
                                     + f" ({len(fork.reused)} step(s) reused)"))
    if usage is not None and usage.total.calls:
        facts.add_row("usage", Text(_usage_line(usage)))
    for child in children:
        facts.add_row("child", Text.assemble(f"{child.run_id} (step {child.parent_step_id}, "
                                             f"{child.workflow}) ", _status(child.status)))
    out.print(facts)

    if story.executions:
        out.print()
        title = "executions"
        if story.crashes:
            title += (f"  ({story.crashes} cut short by a crash or a lost lease, "
                      "then taken over)")
        out.print(Text(title, style="bold"))
        table = Table(box=None, pad_edge=False)
        for col in ("#", "claimed at", "host", "pid", "owner", "ended"):
            table.add_column(col)
        for ex in story.executions:
            ended = ex.ended
            if ex.followed and (ended == "interrupted" or ended.startswith("handed back")):
                verb = "taken over" if ended == "interrupted" else "continued"
                ended = f"{ended} -> {verb} by #{ex.number + 1}"
            elif ended == "interrupted":
                ended = "interrupted (its process died or lost its lease); not resumed yet"
            table.add_row(str(ex.number), fmt_time(ex.at), ex.host or "?",
                          str(ex.pid or "?"), ex.owner, Text(ended))
        out.print(table)

    out.print()
    out.print(Text("steps", style="bold"))
    if not story.steps:
        out.print("  (no steps recorded)")
    else:
        table = Table(box=None, pad_edge=False)
        for col in ("id", "name", "outcome", "duration", "exec"):
            table.add_column(col, no_wrap=True)
        table.add_column("detail", no_wrap=True, overflow="ellipsis")
        for st in story.steps:
            style = "red" if st.outcome in ("failed", "timed out") else ""
            detail = st.detail
            if st.kind == "sleep":
                detail = f"until {fmt_time(st.wake_at, date=True)}"
            took = (f"<{fmt_duration(st.under)}" if st.under is not None
                    else fmt_duration(st.duration))
            table.add_row(st.step_id, Text(st.name), Text(st.outcome, style=style),
                          took, "reused" if st.execution is None else f"#{st.execution}",
                          Text(preview(detail, 60)))
            for line in st.window:
                table.add_row("", "", Text("context", style="yellow"), "", "",
                              Text(preview(line, 60)))
            for line in st.repairs:
                table.add_row("", "", Text("repaired", style="yellow"), "", "",
                              Text(preview(line, 60)))
            for line in st.refusals:
                table.add_row("", "", Text("refused", style="red"), "", "",
                              Text(preview(line, 60)))
        out.print(table)

    out.print()
    if rec.status == RunStatus.COMPLETED:
        out.print(Text.assemble(("result ", "bold"), preview(rec.result, 400)), soft_wrap=True)
    elif rec.error:
        out.print(Text.assemble(("error ", "bold red"), error_line(rec)), soft_wrap=True)
        shown = traceback_lines(error_info(rec.error).traceback, whole=whole_traceback,
                                base=Path.cwd())
        for line in shown:
            out.print(Text(line, style="" if whole_traceback else "red"), soft_wrap=True)
        if shown and not whole_traceback:
            out.print(Text(f"  (your code's frames; the whole traceback: stalwart runs show "
                           f"{rec.run_id}{store_hint(store)} --traceback)", style="dim"))
    else:
        out.print(Text(f"not finished ({rec.status})", style="dim"))
    out.print(Text(f"raw journal: stalwart runs events {rec.run_id}{store_hint(store)}; "
                   f"waterfall: stalwart runs trace {rec.run_id}{store_hint(store)}",
                   style="dim"))


def show_run(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run to show.")],
    as_json: JsonOption = False,
    whole_traceback: TracebackOption = False,
    store: StoreOption = None,
) -> None:
    """Show a run: status, times, executions (crash-resume), each step, the outcome.

    A failed run's error is followed by the frames of your code in its traceback
    (file:line and source); --traceback prints the whole journaled traceback."""
    view = run_async(_show(store, run_id))
    out = console()
    if as_json:
        print_json(story_json(view.story, view.children, view.usage, view.fork))
        return
    render_story(out, view.story, view.children, store, view.usage, view.fork,
                 whole_traceback=whole_traceback)


# -- runs events ---------------------------------------------------------------------


async def _events(store: str | None, run_id: str) -> list[Event]:
    rt = client_runtime(store)
    try:
        return await rt.events(run_id)
    finally:
        await rt.close()


def run_events(
    run_id: Annotated[str, typer.Argument(
        metavar="RUN_ID", help="The run whose journal to print.")],
    as_json: JsonOption = False,
    plain: PlainOption = False,
    store: StoreOption = None,
) -> None:
    """Print a run's raw journal, one event per row."""
    events = run_async(_events(store, run_id))
    out = console()
    if as_json:
        print_json([event_json(e) for e in events])
        return
    rows = Rows(["seq", "time", "kind", "step", "name", Column("payload", cut=True)])
    for e in events:
        rows.add(str(e.seq), fmt_time(e.created_at), str(e.kind), e.step_id or "",
                 Text(e.name or ""), Text(cell(e.payload, 70, plain=plain)))
    rows.print(out, plain=plain)


# In the order they are used: find a run, read it, then check or retry it.
runs_app.command("list", cls=HelpCommand)(list_runs)
runs_app.command("show", cls=HelpCommand)(show_run)
runs_app.command("events", cls=HelpCommand)(run_events)
runs_app.command("trace", cls=HelpCommand)(trace)
runs_app.command("replay", cls=HelpCommand)(replay)
runs_app.command("fork", cls=HelpCommand)(fork)
