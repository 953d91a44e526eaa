"""``stalwart demo``: agents on flaky models, a real ``SIGKILL``, a resume; offline, seconds.

The parent process starts the demo workflow in a child process: three researcher agents
fan out on simulated models that return 500s and 429 bursts, and a writer agent whose
primary model is down joins them through its circuit breaker and a fallback model. The
parent watches the journal and the ledger, and kills the child with ``SIGKILL`` at the
worst moment: ``publish_report`` has applied its external effect but its result is not
in the journal yet. The parent then takes the run over (its owner's pid is dead, so it
need not wait for the lease to expire), replays the recorded steps — every model turn
included — from the journal without running them, runs the interrupted step again with
the same idempotency key, and shows that the ledger applied the effect once, next to
what the resilience policies did (from the journal's ``attempt_failed`` events and the
child runtime's ``policy_counts``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .._demo import (
    RETRY_AFTER,
    WRITER_BACKUP,
    WRITER_PRIMARY,
    LedgerEffect,
    LedgerExecution,
    ensure_ledger,
    ledger_effects,
    ledger_executions,
    ledger_policy_notes,
    research_report,
)
from .._runtime import Runtime
from ..errors import NotAStalwartStoreError, StoreError
from ..store import _sqlite_schema
from ..store._base import Event, EventKind, RunRecord, RunStatus
from ..store._sqlite import SQLiteStore
from ._common import (
    DEMO_STORE,
    FAILURE,
    CliError,
    exit_code_for,
    fmt_duration,
    fmt_time,
    preview,
)
from ._demo_child import demo_runtime
from ._demo_policies import PolicyStory, read_attempt, read_policies, render_policies
from ._journal import journal_error
from ._output import console
from ._timeline import RunStory, read_story

__all__ = ["demo"]

TOPIC = "durable agents"
WATCH_SECONDS = 40.0
"""Give up if the child has not reached the crash point by then."""


def _paths(store: str | None) -> tuple[Path, Path]:
    if store is None:
        db = DEMO_STORE
    elif store.startswith("sqlite:///"):
        db = Path(store[len("sqlite:///"):])
    elif "://" in store or store == ":memory:":
        raise CliError("the demo crashes a real process, so it needs an SQLite file: "
                       "pass --store PATH")
    else:
        db = Path(store)
    return db, db.with_name(f"{db.stem}-ledger.db")


_NOT_OURS = "pass --store a path of its own (--fresh deletes only a stalwart journal)"


def _refuse_foreign(db: Path) -> None:
    """The demo writes (and --fresh deletes) its journal, or a damaged one, never another
    program's file: the path is the user's to type, so it may name their notes or their
    app's database. Checked first, so nothing (no ledger beside it) is made for one."""
    path = str(db)
    try:
        if _sqlite_schema.file_state(path) != "sqlite":
            return  # nothing there, or an empty file
        conn = _sqlite_schema.connect(path, read_only=True, busy_timeout=1.0)
        try:
            _sqlite_schema.inspect(conn, path)
        finally:
            conn.close()
    except NotAStalwartStoreError as exc:
        raise CliError(f"{exc}; {_NOT_OURS}", exit_code_for(exc)) from None
    except StoreError:
        return  # a journal too damaged to read: what --fresh is for


def _delete(*paths: Path) -> None:
    for p in paths:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{p}{suffix}").unlink(missing_ok=True)


@dataclass
class _Narrator:
    """Prints the journal as it grows, naming the process behind each event."""

    out: Console
    child_pid: int
    recorded_at_crash: list[str] = field(default_factory=list)
    seen: int = 0
    pid: int | None = None
    claims: int = 0
    parked: bool = False

    def who(self, pid: int | None) -> str:
        if pid == os.getpid():
            return f"[pid {pid}, this process]"
        if pid == self.child_pid:
            return f"[pid {pid}, child]"
        return f"[pid {pid}]"

    def say(self, text: str, style: str = "") -> None:
        self.out.print(Text("  " + text, style=style), soft_wrap=True)

    def feed(self, events: list[Event]) -> None:
        for ev in events:
            if ev.seq <= self.seen:
                continue
            self.seen = ev.seq
            self.event(ev)

    def event(self, ev: Event) -> None:
        who = self.who(self.pid)
        if ev.kind == EventKind.RUN_CLAIMED:
            self.claims += 1
            self.pid = json.loads(ev.payload or "{}").get("pid")
            who = self.who(self.pid)
            if self.recorded_at_crash and self.pid == os.getpid():
                self.say(f"{who} claims the run (execution #{self.claims}): its owner "
                         f"pid {self.child_pid} is dead, so no lease expiry to wait for",
                         "bold")
                self.say(f"{who} replays from the journal, running nothing: steps "
                         f"{', '.join(self.recorded_at_crash)}", "bold")
            elif self.parked:
                self.say(f"{who} claims the run (execution #{self.claims}): its timer is "
                         "due; the recorded steps replay from the journal, then it goes on")
            else:
                self.say(f"{who} claims the run (execution #{self.claims})")
            self.parked = False
        elif ev.kind == EventKind.STEP_COMPLETED:
            self.say(f"{who} step {ev.step_id} {ev.name}: done -> {preview(ev.payload, 50)}")
        elif ev.kind == EventKind.ATTEMPT_FAILED:
            self.say(f"{who} step {ev.step_id} {ev.name}: {read_attempt(ev).describe()}",
                     "yellow")
        elif ev.kind == EventKind.STEP_FAILED:
            self.say(f"{who} step {ev.step_id} {ev.name}: failed", "red")
        elif ev.kind == EventKind.TIMER_STARTED:
            info = json.loads(ev.payload or "{}")
            self.say(f"{who} step {ev.step_id} durable sleep {info.get('seconds')}s, until "
                     f"{fmt_time(info.get('wake_at'))} (the wake-up time is journaled)")
        elif ev.kind == EventKind.RUN_SUSPENDED:
            self.parked = True
            self.say(f"{who} run parked ({ev.name}): no task or memory held; the scheduler "
                     "wakes it on time")
        elif ev.kind == EventKind.RUN_COMPLETED:
            self.say(f"{who} run completed", "green")
        elif ev.kind in (EventKind.RUN_FAILED, EventKind.RUN_CANCELLED):
            self.say(f"{who} run {ev.kind}", "red")


def _tail(log: IO[bytes]) -> str:
    log.seek(0)
    lines = log.read().decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no output"


async def _until_crash_point(rt: Runtime, narrator: _Narrator, run_id: str, ledger: Path,
                             proc: asyncio.subprocess.Process,
                             log: IO[bytes]) -> LedgerEffect:
    deadline = time.monotonic() + WATCH_SECONDS
    while True:
        narrator.feed(await rt.store.load_events(run_id))
        effects = ledger_effects(str(ledger), run_id)
        if effects:
            return effects[0]
        if proc.returncode is not None:
            raise CliError(f"the demo's child process exited early ({proc.returncode}): "
                           f"{_tail(log)}", FAILURE)
        if time.monotonic() > deadline:
            raise CliError(f"the demo's child did not reach the crash point within "
                           f"{WATCH_SECONDS:.0f}s", FAILURE)
        await asyncio.sleep(0.02)


async def _resume(db: Path, narrator: _Narrator,
                  run_id: str) -> tuple[RunRecord, list[Event], dict[str, int]]:
    """Take the run over in this process; also returns this runtime's policy_counts."""
    rt = demo_runtime(str(db))
    rt.register(research_report)
    try:
        await rt.resume(run_id)
        deadline = time.monotonic() + WATCH_SECONDS
        while True:
            rec = await rt.get_run(run_id)
            events = await rt.events(run_id)
            narrator.feed(events)
            if rec.is_terminal:
                return rec, events, dict(rt.policy_counts)
            if time.monotonic() > deadline:
                raise CliError(f"run {run_id} did not finish after the resume", FAILURE)
            await asyncio.sleep(0.02)
    finally:
        await rt.close()


@dataclass(frozen=True, slots=True)
class _Outcome:
    run: RunRecord
    story: RunStory
    executions: list[LedgerExecution]
    effects: list[LedgerEffect]
    child_pid: int
    killed_during: str
    kill_seconds: float
    policies: PolicyStory
    resume_policy_counts: dict[str, int]


async def _crash_and_resume(out: Console, db: Path, ledger: Path, run_id: str,
                            log: IO[bytes]) -> _Outcome:
    # A writer's store: the demo's journal is created (or checked) here, before the child
    # that writes it starts, so that the watcher has a journal to read from the start.
    watcher = Runtime(SQLiteStore(db), worker=False)
    try:
        try:
            await watcher.open()  # an unusable store fails here, before any process starts
        except StoreError as exc:
            hint = (_NOT_OURS if isinstance(exc, NotAStalwartStoreError)
                    else "`stalwart demo --fresh` deletes it and starts over")
            raise CliError(f"{exc}; {hint}", exit_code_for(exc)) from None
        out.print(Text(f"stalwart demo: run {run_id} of research_report (plan -> 3 researcher "
                       "agents in parallel -> a writer agent with a tool -> durable sleep "
                       f"-> publish), journal {db}", style="bold"), soft_wrap=True)
        out.print(Text("  the models are offline simulations with injected faults: the "
                       "researchers' models return 500s and 429 bursts (Retry-After "
                       f"{RETRY_AFTER:g}s); the writer's primary {WRITER_PRIMARY} is down, "
                       f"{WRITER_BACKUP} is its fallback", style="dim"), soft_wrap=True)
        out.print()
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "stalwart.cli._demo_child", str(db), run_id, str(ledger),
            TOPIC, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
        narrator = _Narrator(out, proc.pid)
        out.print(Text(f"1. a child process (pid {proc.pid}) starts the workflow", "bold"))
        try:
            effect = await _until_crash_point(watcher, narrator, run_id, ledger, proc, log)
        finally:
            if proc.returncode is None:
                proc.kill()  # SIGKILL: no cleanup, no goodbye, like a power cut to a process
            await proc.wait()
        kill_seconds = time.monotonic() - started
        narrator.feed(await watcher.store.load_events(run_id))
        at_crash = await watcher.get_run(run_id)
        crash_story = read_story(at_crash, await watcher.store.load_events(run_id))
    finally:
        await watcher.close()
    in_flight = effect.key.rpartition(":")[2]
    out.print()
    out.print(Text(f"2. SIGKILL -> pid {proc.pid}, {kill_seconds:.1f}s in, while step "
                   f"{in_flight} publish_report was in flight: its effect reached the "
                   "ledger, its result never reached the journal", "bold red"), soft_wrap=True)
    holder = (f", held by pid {at_crash.owner_pid}, which no longer exists"
              if at_crash.status == RunStatus.RUNNING else "")
    recorded = [s.step_id for s in crash_story.steps]
    narrator.recorded_at_crash = recorded
    narrator.say(f"the journal says: status '{at_crash.status}'{holder}; recorded steps: "
                 f"{', '.join(recorded)}")
    out.print()
    out.print(Text(f"3. this process (pid {os.getpid()}) resumes the run", "bold"))
    rec, events, resume_counts = await _resume(db, narrator, run_id)
    return _Outcome(run=rec, story=read_story(rec, events),
                    executions=ledger_executions(str(ledger), run_id),
                    effects=ledger_effects(str(ledger), run_id), child_pid=proc.pid,
                    killed_during=in_flight, kill_seconds=kill_seconds,
                    policies=read_policies(events, ledger_policy_notes(str(ledger),
                                                                       proc.pid)),
                    resume_policy_counts=resume_counts)


def _report(out: Console, result: _Outcome, db_arg: str) -> None:
    story, run_id = result.story, result.run.run_id
    crashed = [e.number for e in story.executions if e.ended == "interrupted"]
    crash_exec = max(crashed) if crashed else 0
    here = os.getpid()

    def proc_name(pid: int) -> str:
        return "child" if pid == result.child_pid else "this process" if pid == here else "?"

    out.print()
    out.print(Text("timeline", style="bold"))
    table = Table(box=None, pad_edge=False)
    for col in ("step", "name", "took", "ran in pid"):
        table.add_column(col, no_wrap=True)
    table.add_column("what happened", overflow="fold")
    replayed = 0
    for st in story.steps:
        runs = [x for x in result.executions if x.step_id == st.step_id]
        where = " + ".join(f"{x.pid} ({proc_name(x.pid)})" for x in runs)
        number = st.execution or 0
        if not runs and 0 < number <= len(story.executions):
            pid = story.executions[number - 1].pid or 0  # a model turn or a tool
            where = f"{pid} ({proc_name(pid)})"
        before = number <= crash_exec
        if st.kind == "sleep":
            what = "durable timer, journaled before the crash" if before else "durable timer"
        elif len(runs) > 1:
            what = ("in flight at the crash; ran again with the same idempotency key, "
                    "so the ledger ignored the repeat")
        elif before:
            what = "ran before the crash; replayed, not run again"
            replayed += 1
        else:
            what = "ran after the resume"
        table.add_row(st.step_id, Text(st.name), fmt_duration(st.duration), where, what)
    out.print(table)

    out.print()
    out.print(Text("executions of the run (from its journal)", style="bold"))
    table = Table(box=None, pad_edge=False)
    for col in ("#", "pid", "process", "claimed at", "ended"):
        table.add_column(col)
    for ex in story.executions:
        ended = (f"interrupted: killed; #{ex.number + 1} took over"
                 if ex.ended == "interrupted" else ex.ended)
        table.add_row(str(ex.number), str(ex.pid), proc_name(ex.pid or 0), fmt_time(ex.at),
                      ended)
    out.print(table)

    out.print()
    render_policies(out, result.policies, f"child pid {result.child_pid}")
    after = ", ".join(f"{k}={v}" for k, v in sorted(result.resume_policy_counts.items()))
    out.print(f"  after resume:  {after or 'no policy actions'} in pid {here}: the model "
              "turns were replayed from the journal, no model was called again",
              soft_wrap=True)

    publish_runs = [x for x in result.executions if x.name.endswith("publish_report")]
    keys = sorted({e.key for e in result.effects})
    pol = result.policies
    out.print()
    out.print(Text("what this shows", style="bold"))
    out.print(f"  crash:        SIGKILL of pid {result.child_pid} after "
              f"{result.kill_seconds:.1f}s, during step {result.killed_during} "
              f"(publish_report); resumed by pid {here}", soft_wrap=True)
    out.print(f"  replay:       {replayed} completed steps returned their journaled results "
              "without running again", soft_wrap=True)
    out.print(f"  side effect:  {len(result.effects)} ledger entry for key "
              f"{', '.join(keys) or '-'} although publish_report ran {len(publish_runs)} "
              f"times -> applied exactly once", soft_wrap=True)
    out.print(f"  policies:     {pol.retries} retries, "
              f"{sum(1 for a in pol.attempts if a.breaker_rejected)} calls refused by an "
              f"open breaker, {len(pol.fallbacks)} turns answered by a fallback model; "
              f"the run still completed", soft_wrap=True)
    out.print(Text("  result:       " + (result.run.result or "null")), soft_wrap=True)
    out.print()
    out.print(Text("inspect it:", style="bold"))
    for cmd in (f"stalwart runs show {run_id} --store {db_arg}",
                f"stalwart runs events {run_id} --store {db_arg}",
                f"stalwart runs list --store {db_arg}"):
        out.print(Text("  " + cmd), soft_wrap=True)


def demo(
    store: Annotated[str | None, typer.Option(
        "--store", metavar="PATH",
        help="The demo's journal (its ledger goes beside it).  [default: .stalwart/demo.db]",
        show_default=False)] = None,
    fresh: Annotated[bool, typer.Option(
        "--fresh", help="Delete the demo journal and ledger first.")] = False,
) -> None:
    """Crash a durable agent workflow with SIGKILL and resume it (offline, a few seconds)."""
    db, ledger = _paths(store)
    ledger = ledger.absolute()  # the workflow input names it; resumable from anywhere
    db_arg = str(db)
    _refuse_foreign(db)  # before the ledger is made beside a file that is not ours
    if fresh:
        _delete(db, ledger)
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        ensure_ledger(str(ledger))
    except (OSError, sqlite3.OperationalError) as exc:  # no folder, or none it can write
        raise journal_error(db, exc) from None
    except sqlite3.DatabaseError as exc:
        raise CliError(f"{ledger} is not a demo ledger ({exc}); run with --fresh") from None
    out = console()
    run_id = f"demo-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as log:
        outcome = asyncio.run(_crash_and_resume(out, db, ledger, run_id, log))
    _report(out, outcome, db_arg)
    if outcome.run.status != RunStatus.COMPLETED:
        raise CliError(f"demo run {run_id} ended {outcome.run.status}", FAILURE)
    if len(outcome.effects) != 1:
        raise CliError(f"demo check failed: the effect was applied {len(outcome.effects)} "
                       "times", FAILURE)
    out.print()
    out.print(Text(f"done in {time.monotonic() - t0:.1f}s", style="dim"))
