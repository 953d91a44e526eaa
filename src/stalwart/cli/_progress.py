"""What ``stalwart run`` and ``resume`` print while a run executes.

The run id comes first, at once; then a line for each thing the run does, read from its
journal as it is written (:meth:`stalwart.RunHandle.events`), plus the steps that start
in this process (an interceptor hook: the journal records outcomes, not starts). On a
terminal the lines are styled and a spinner under them says what the run is doing and
for how long (an hour-long signal wait does not look hung); off a terminal they are plain
lines, one per event, for logs and pipes. ``--quiet`` prints none of it. Everything goes
to stderr: stdout carries only the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any, TextIO

from rich.console import Console
from rich.status import Status
from rich.text import Text

from .._runtime import RunHandle, Runtime
from ..engine._interceptor import (
    AgentEndInput,
    AgentStartInput,
    Interceptor,
    ModelCallEndInput,
    ModelCallStartInput,
    PolicyInput,
    RunEndInput,
    RunStartInput,
    StepEndInput,
    StepStartInput,
    ToolCallEndInput,
    ToolCallStartInput,
)
from ..store._base import STEP_TIMED_AFTER, Event, EventKind
from ._common import fmt_duration, fmt_time, preview

__all__ = ["Progress", "describe", "watch_steps"]

_INSTANT = frozenset({"stalwart.now", "stalwart.random", "stalwart.uuid"})


def _payload(ev: Event) -> dict[str, Any]:
    try:
        value = json.loads(ev.payload or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _error(info: Any) -> str:
    if not isinstance(info, dict):
        return str(info or "")
    return f"{info.get('type', '?')}: {preview(str(info.get('message', '')), 200)}"


def describe(ev: Event, *, run_id: str, timing: dict[str, float]) -> tuple[str, str] | None:
    """A line for journal event ``ev`` (and its style), or ``None`` for an event that
    says nothing new here (the run's own start and end, timing records). ``timing``
    collects the durations that ``call_timed``/``step_timed`` report, by step id."""
    k, sid, name = ev.kind, ev.step_id or "", ev.name or "?"
    step = f"step {sid} {name}"
    if k in (EventKind.CALL_TIMED, EventKind.STEP_TIMED):
        took = _payload(ev).get("duration")
        if isinstance(took, int | float):
            timing[sid] = float(took)
        return None
    if k == EventKind.STEP_COMPLETED:
        took = timing.pop(sid, None)
        when = (f" in {fmt_duration(took)}" if took is not None
                else "" if name.startswith(("chat:", "tool:", "child:"))
                else f" in <{fmt_duration(STEP_TIMED_AFTER)}")
        return f"{step} completed{when}", "green"
    if k == EventKind.STEP_FAILED:
        timing.pop(sid, None)
        return f"{step} failed: {_error(_payload(ev))}", "red"
    if k == EventKind.ATTEMPT_FAILED:
        info = _payload(ev)
        nxt = info.get("next")
        then = {"retry": f"retry at {fmt_time(info.get('retry_at'))}",
                "fallback": "falling back to the next model",
                "fail": "giving up"}.get(str(nxt), str(nxt))
        return (f"{step} attempt {info.get('attempt', '?')} failed "
                f"({_error(info.get('error'))}); {then}", "yellow")
    if k == EventKind.TIMER_STARTED:
        return f"step {sid} sleeping until {fmt_time(_payload(ev).get('wake_at'))}", "blue"
    if k == EventKind.SIGNAL_WAIT_STARTED:
        signal = name.removeprefix("signal:")
        return (f"step {sid} waiting for signal {signal!r} (send it: stalwart signal "
                f"{run_id} {signal} --payload JSON)", "blue")
    if k == EventKind.SIGNAL_RECEIVED:
        return f"step {sid} signal {name.removeprefix('signal:')!r} received", "green"
    if k == EventKind.SIGNAL_TIMED_OUT:
        return f"step {sid} {name}: timed out waiting", "yellow"
    if k == EventKind.CHILD_STARTED:
        return f"{step} started child run {ev.payload}", ""
    if k == EventKind.CHECK_FAILED:
        return f"{step} answer failed its check ({_payload(ev).get('reason', '')}); re-asking", \
            "yellow"
    if k == EventKind.TOOL_CALL_REPAIRED:
        info = _payload(ev)
        return (f"step {sid} asked for tool {info.get('tool', name)!r} with a malformed call "
                f"({info.get('error')}: {preview(str(info.get('message', '')), 120)}); sent "
                "back to the model", "yellow")
    if k == EventKind.TOOL_CALL_APPROVAL:
        info = _payload(ev)
        verdict = "approved" if info.get("approved") else "not approved"
        return (f"step {sid} held tool {info.get('tool', name)!r} for approval: {verdict} "
                f"(untrusted context from {', '.join(info.get('untrusted') or [])})",
                "green" if info.get("approved") else "red")
    if k == EventKind.CONTEXT_ORIGINS:
        messages = _payload(ev).get("messages") or []
        untrusted = list(dict.fromkeys(str(m.get("origin")) for m in messages
                                       if isinstance(m, dict) and m.get("trusted") is False))
        if not untrusted:
            return None
        return f"{step} saw untrusted content from {', '.join(untrusted)}", "yellow"
    if k == EventKind.TOOL_CALL_REFUSED:
        info = _payload(ev)
        return (f"step {sid} asked for tool {info.get('tool', name)!r}: refused, not "
                f"executed ({info.get('reason')}: "
                f"{preview(str(info.get('message', '')), 120)})", "red")
    if k == EventKind.RUN_SUSPENDED:
        if ev.name == "sleeping" and ev.payload:
            try:
                return f"run parked until {fmt_time(float(ev.payload))}", "blue"
            except ValueError:
                pass
        return "run parked (waiting for a signal or a child run)", "blue"
    if k == EventKind.RUN_RELEASED:
        return f"run handed back ({ev.name or 'shutdown'})", "yellow"
    if k == EventKind.RUN_REDRIVEN:
        return f"run sent through again from step {sid} (dlq retry)", "yellow"
    if k == EventKind.RUN_CLAIMED:
        where = _payload(ev)
        return f"run claimed by pid {where.get('pid', '?')} on {where.get('host', '?')}", "dim"
    return None


class Progress:
    """Prints a run's progress on ``stream`` (stderr): styled lines and a spinner on a
    terminal, plain lines elsewhere, nothing when ``quiet``."""

    def __init__(self, stream: TextIO, *, quiet: bool = False, tty: bool | None = None,
                 prefix_runs: bool = False) -> None:
        self.quiet = quiet
        self.tty = stream.isatty() if tty is None else tty
        self.prefix_runs = prefix_runs
        self.stream = stream
        self.console = Console(file=stream, force_terminal=self.tty, highlight=False,
                               soft_wrap=True, no_color=not self.tty)
        self._status: Status | None = None
        self._doing = ""
        self._since = time.monotonic()
        self._timing: dict[str, float] = {}
        self._claims: dict[str, int] = {}
        self._local: dict[tuple[str, str], float] = {}
        """Steps started in this process, when (monotonic)."""
        self._told: set[tuple[str, str]] = set()
        """Steps whose outcome was said from this process's hook (not again from the
        journal)."""

    # -- output ----------------------------------------------------------------------

    def line(self, text: str, style: str = "", *, run_id: str | None = None) -> None:
        if self.quiet:
            return
        if self.prefix_runs and run_id is not None:
            text = f"{run_id}: {text}"
        if self.tty:
            self.console.print(Text(text, style=style))
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    @contextlib.asynccontextmanager
    async def spinning(self) -> AsyncIterator[None]:
        """A spinner (terminal only) under the lines saying what runs and for how long,
        its clock refreshed every second (an hour-long wait shows it grow)."""
        if self.quiet or not self.tty:
            yield
            return
        self._status = self.console.status(self._status_text(), spinner="dots")
        self._status.start()
        ticker = asyncio.ensure_future(self._tick())
        try:
            yield
        finally:
            ticker.cancel()
            self._status.stop()
            self._status = None

    def _status_text(self) -> str:
        took = fmt_duration(time.monotonic() - self._since)
        return f"{self._doing or 'running'} ({took})"

    def _doing_now(self, what: str) -> None:
        self._doing, self._since = what, time.monotonic()
        if self._status is not None:
            self._status.update(self._status_text())

    async def _tick(self) -> None:
        while self._status is not None:
            self._status.update(self._status_text())
            await asyncio.sleep(1.0)

    # -- what is reported ------------------------------------------------------------

    def step_started(self, run_id: str, step_id: str, name: str) -> None:
        self._local[(run_id, step_id)] = time.monotonic()
        if name in _INSTANT:
            return
        self._doing_now(f"step {step_id} {name}")
        self.line(f"step {step_id} {name} started", "dim", run_id=run_id)

    def step_ended(self, run_id: str, step_id: str, name: str, error: str | None) -> None:
        """A step that started here has its outcome journaled: said at once, in order
        with the starts (the journal's stream would say it a moment later)."""
        began = self._local.pop((run_id, step_id), None)
        if began is None:
            return
        self._told.add((run_id, step_id))
        if error is not None:
            try:
                info = json.loads(error)
            except ValueError:
                info = error
            self.line(f"step {step_id} {name} failed: {_error(info)}", "red", run_id=run_id)
            return
        took = fmt_duration(time.monotonic() - began)
        self.line(f"step {step_id} {name} completed in {took}", "green", run_id=run_id)

    def event(self, ev: Event) -> None:
        if ev.kind in (EventKind.STEP_COMPLETED, EventKind.STEP_FAILED) and (
                (ev.run_id, ev.step_id or "") in self._told):
            self._told.discard((ev.run_id, ev.step_id or ""))
            self._timing.pop(ev.step_id or "", None)
            return
        if ev.kind == EventKind.RUN_CLAIMED:
            n = self._claims[ev.run_id] = self._claims.get(ev.run_id, 0) + 1
            if n == 1:
                return  # the first claim: the run starting, announced already
        described = describe(ev, run_id=ev.run_id, timing=self._timing)
        if described is None:
            return
        text, style = described
        self.line(text, style, run_id=ev.run_id)
        if ev.kind in (EventKind.TIMER_STARTED, EventKind.SIGNAL_WAIT_STARTED,
                       EventKind.RUN_SUSPENDED):
            self._doing_now(text)

    async def follow(self, handle: RunHandle[Any], *, after: int = 0) -> None:
        """Print ``handle``'s events from ``after`` on until the run ends (or the task
        is cancelled)."""
        async for ev in handle.events(after=after):
            self.event(ev)


class _StepStarts(Interceptor):
    """Forwards every hook to the runtime's own interceptor (tracing, or none) and
    tells ``progress`` when a step starts executing here."""

    def __init__(self, inner: Interceptor, progress: Progress) -> None:
        self.inner = inner
        self.progress = progress

    def run_started(self, input: RunStartInput) -> None:
        self.inner.run_started(input)

    def run_ended(self, input: RunEndInput) -> None:
        self.inner.run_ended(input)

    def step_started(self, input: StepStartInput) -> None:
        self.inner.step_started(input)
        self.progress.step_started(input.run_id, input.step_id, input.name)

    def step_ended(self, input: StepEndInput) -> None:
        self.inner.step_ended(input)
        self.progress.step_ended(input.run_id, input.step_id, input.name, input.error)

    def agent_started(self, input: AgentStartInput) -> Any:
        return self.inner.agent_started(input)

    def agent_ended(self, input: AgentEndInput) -> None:
        self.inner.agent_ended(input)

    def model_call_started(self, input: ModelCallStartInput) -> Any:
        return self.inner.model_call_started(input)

    def model_call_ended(self, input: ModelCallEndInput) -> None:
        self.inner.model_call_ended(input)

    def tool_call_started(self, input: ToolCallStartInput) -> Any:
        return self.inner.tool_call_started(input)

    def tool_call_ended(self, input: ToolCallEndInput) -> None:
        self.inner.tool_call_ended(input)

    def policy_noted(self, input: PolicyInput) -> None:
        self.inner.policy_noted(input)

    def activated(self, run_id: str, step_id: str,
                  handle: Any = None) -> contextlib.AbstractContextManager[object]:
        return self.inner.activated(run_id, step_id, handle)

    def close(self) -> None:
        self.inner.close()


def watch_steps(rt: Runtime, progress: Progress) -> None:
    """Make ``rt`` tell ``progress`` when a step starts (before it executes runs)."""
    if not progress.quiet:
        rt.interceptor = _StepStarts(rt.interceptor, progress)
