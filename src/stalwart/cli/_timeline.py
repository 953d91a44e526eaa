"""A run's journal read as a story: executions (claims) and steps with durations.

A step's start is read from the journal where it is there: timers, signal waits and
child runs journal their start; a model or tool call journals its start with its
outcome (``call_timed``), a failed one each attempt's time and duration; a plain step
that took ``STEP_TIMED_AFTER`` (2 ms) or more journals its start with its outcome
(``step_timed``), so a plain step with an outcome and no ``step_timed`` took less than
that. Only a step without an outcome (running, or cut short) has its start inferred: it
began once the step before it in the same scope had ended (for the first step of a
``gather`` branch, once the ``gather`` began) and not before the execution that
recorded it claimed the run.

Each ``run_claimed`` event opens an *execution*. One that ends in a
``run_suspended``/``run_completed``/``run_failed``/``run_cancelled``/
``run_dead_lettered`` event ended; one that ends in ``run_released`` handed the run
back (a shutdown, Ctrl-C); one that ends in neither before the next claim was cut short:
its process died (or lost its lease) and the next claim took the run over — a crash and
resume, as the journal sees it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

from ..store._base import STEP_TIMED_AFTER, Event, EventKind, RunRecord, RunStatus

__all__ = ["Execution", "RunStory", "Step", "read_story"]

_END_KINDS = {
    EventKind.RUN_SUSPENDED: "parked",
    EventKind.RUN_COMPLETED: "completed",
    EventKind.RUN_FAILED: "failed",
    EventKind.RUN_CANCELLED: "cancelled",
    EventKind.RUN_DEAD_LETTERED: "dead_lettered",
}
_RUN_KINDS = frozenset(kind for kind in EventKind if kind.value.startswith("run_"))
_NOTES = frozenset({EventKind.TOOL_CALL_REPAIRED, EventKind.TOOL_CALL_REFUSED,
                    EventKind.TOOL_CALL_APPROVAL, EventKind.CONTEXT_ORIGINS,
                    EventKind.CONTEXT_WINDOW})
"""Events about a step written after its outcome: kept beside it, not among its own."""
_TIMED = (EventKind.CALL_TIMED, EventKind.STEP_TIMED)
"""Events about the run as a whole. The one that ends a run names the step that ended it
(its ``step_id``), but it is not one of that step's events: the step's own outcome is."""


@dataclass(frozen=True, slots=True)
class Execution:
    """One claim of the run by a worker, and how it ended."""

    number: int
    seq: int
    at: float
    owner: str
    host: str | None
    pid: int | None
    ended: str
    """``completed``, ``failed``, ``dead_lettered``, ``cancelled``, ``parked
    (sleeping)``, ``handed back (shutdown)`` (or ``(journal_failed)``), ``interrupted``
    (cut short: its process died or lost its lease) or ``running``."""
    ended_at: float | None
    followed: bool = False
    """Whether a later execution continued the run."""

    def as_json(self) -> dict[str, Any]:
        return {"number": self.number, "seq": self.seq, "at": self.at, "owner": self.owner,
                "host": self.host, "pid": self.pid, "ended": self.ended,
                "ended_at": self.ended_at, "followed": self.followed}


@dataclass(frozen=True, slots=True)
class Step:
    """One step id of the journal."""

    step_id: str
    name: str
    kind: str
    """``step``, ``sleep``, ``signal`` or ``child``."""
    outcome: str
    """``completed``, ``failed``, ``slept``, ``sleeping``, ``received``, ``timed out``,
    ``waiting``, ``running`` or ``interrupted`` (attempts recorded, no outcome, and the
    run is not running)."""
    started_at: float | None
    ended_at: float | None
    execution: int | None
    """The number of the execution that recorded the step's outcome (its last event, for
    a step without one); ``None`` for a step a fork reused from the run it forked."""
    detail: str
    """The result (JSON), the error, the child run id or the wake-up time."""
    seq: int
    wake_at: float | None = None
    """For a sleep: when it is (or was) due."""
    under: float | None = None
    """Set when the journal says only that the step took less than this many seconds
    (a plain step below ``STEP_TIMED_AFTER``); ``started_at`` is then its end."""
    repairs: tuple[str, ...] = ()
    """Malformed tool calls of this model turn sent back to the model, one line each."""
    refusals: tuple[str, ...] = ()
    """Tool calls of this model turn refused by least privilege (audited), or held for
    approval and decided, one line each."""
    origins: tuple[str, ...] = ()
    """Where the messages this model turn saw first came from (``user``,
    ``tool:search (untrusted)``...)."""
    window: tuple[str, ...] = ()
    """What the agent's context window did before this call, one line per action."""

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return max(0.0, self.ended_at - self.started_at)

    @property
    def reused(self) -> bool:
        return self.execution is None

    def as_json(self) -> dict[str, Any]:
        return {"step_id": self.step_id, "name": self.name, "kind": self.kind,
                "outcome": self.outcome, "started_at": self.started_at,
                "ended_at": self.ended_at, "duration": self.duration,
                "duration_under": self.under, "execution": self.execution,
                "reused": self.reused, "detail": self.detail, "seq": self.seq,
                "wake_at": self.wake_at, "repairs": list(self.repairs),
                "refusals": list(self.refusals), "origins": list(self.origins),
                "window": list(self.window)}


@dataclass(frozen=True, slots=True)
class RunStory:
    run: RunRecord
    executions: list[Execution]
    steps: list[Step]

    @property
    def crashes(self) -> int:
        """Executions cut short and taken over by a later one."""
        return sum(1 for e in self.executions if e.ended == "interrupted")


def _split(step_id: str) -> tuple[str, int]:
    prefix, _, last = step_id.rpartition("/")
    try:
        return prefix, int(last)
    except ValueError:
        return prefix, 0


def _sort_key(step_id: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else -1 for p in step_id.split("/"))


def _error_text(payload: str | None) -> str:
    try:
        info = json.loads(payload or "{}")
        return f"{info.get('type', '?')}: {info.get('message', '')}"
    except (ValueError, AttributeError):
        return payload or ""


def _attempt_error(payload: str | None) -> str:
    """The error of an ``attempt_failed`` event (it is nested in the attempt's record)."""
    try:
        error = json.loads(payload or "{}").get("error")
    except (ValueError, AttributeError):
        return ""
    return _error_text(json.dumps(error)) if isinstance(error, dict) else ""


def _executions(run: RunRecord, events: list[Event]) -> list[Execution]:
    claims = [e for e in events if e.kind == EventKind.RUN_CLAIMED]
    out = []
    for i, claim in enumerate(claims):
        nxt = claims[i + 1].seq if i + 1 < len(claims) else None
        span = [e for e in events if e.seq > claim.seq and (nxt is None or e.seq < nxt)]
        ended, ended_at = "interrupted", None
        for e in span:
            if e.kind in _END_KINDS:
                ended, ended_at = _END_KINDS[e.kind], e.created_at
                if e.kind == EventKind.RUN_SUSPENDED and e.name:
                    ended = f"parked ({e.name})"
            elif e.kind == EventKind.RUN_RELEASED:
                ended, ended_at = f"handed back ({e.name or 'shutdown'})", e.created_at
        if ended == "interrupted" and nxt is None:
            ended = "running" if run.status == RunStatus.RUNNING else "interrupted"
        try:
            where = json.loads(claim.payload or "{}")
        except ValueError:
            where = {}
        out.append(Execution(number=i + 1, seq=claim.seq, at=claim.created_at,
                             owner=claim.name or "?", host=where.get("host"),
                             pid=where.get("pid"), ended=ended, ended_at=ended_at,
                             followed=nxt is not None))
    return out


def read_story(run: RunRecord, events: list[Event], *, now: float | None = None) -> RunStory:
    """Executions and steps of ``run`` from its journal ``events`` (in ``seq`` order);
    ``now`` (default: the wall clock) tells a finished sleep from a pending one."""
    executions = _executions(run, events)
    by_step: dict[str, list[Event]] = {}
    notes: dict[str, list[Event]] = {}
    redriven: dict[str, int] = {}
    for e in events:
        if e.step_id is not None and e.kind not in _RUN_KINDS:
            (notes if e.kind in _NOTES else by_step).setdefault(e.step_id, []).append(e)
        elif e.kind == EventKind.RUN_REDRIVEN and e.step_id is not None:
            redriven[e.step_id] = e.seq

    def latest(sid: str) -> list[Event]:
        """The step's events of its last go (after a ``dlq retry`` sent it again)."""
        after = redriven.get(sid, 0)
        return [e for e in by_step.get(sid, ()) if e.seq > after]

    def execution_of(seq: int) -> int:
        number = 0
        for ex in executions:
            if ex.seq < seq:
                number = ex.number
        return number

    def claim_time(seq: int) -> float | None:
        n = execution_of(seq)
        return executions[n - 1].at if n else None

    @cache
    def start_of(sid: str) -> float | None:
        exact = _own_start(latest(sid))
        if exact is not None:
            return exact
        prefix, k = _split(sid)
        base: float | None = None
        if k > 1:
            base = end_of(f"{prefix}/{k - 1}" if prefix else str(k - 1))
        elif prefix:  # the first step of a gather branch: the gather's own start
            gather_id, _, _ = prefix.rpartition("/")
            base = start_of(gather_id) if gather_id else None
        evs = by_step.get(sid)
        # Not before the execution that recorded its outcome claimed the run (a step
        # that ran again after a crash or a redrive took its time in that one).
        floor = claim_time(evs[-1].seq) if evs else None
        known = [t for t in (base, floor) if t is not None]
        return max(known) if known else None

    @cache
    def end_of(sid: str) -> float | None:
        evs = by_step.get(sid)
        if evs:
            if evs[0].kind == EventKind.TIMER_STARTED:
                return _wake_at(evs[0])
            return evs[-1].created_at
        inside = [end_of(s) for s in by_step if s.startswith(sid + "/")]
        ends = [t for t in inside if t is not None]
        if ends:  # a gather: it ended when its last branch step did
            return max(ends)
        return start_of(sid)

    def in_run(t: float | None) -> float | None:
        # A fork's journal holds its origin's events for the steps it reused, with the
        # origin's times: in the fork they took no time, at its start.
        return None if t is None else max(t, run.created_at)

    steps = []
    for sid in sorted(by_step, key=_sort_key):
        evs = by_step[sid]
        ended = in_run(end_of(sid))
        under = None
        last_go = latest(sid)
        if last_go and _own_start(last_go) is None and _untimed_plain_step(last_go):
            started, under = ended, STEP_TIMED_AFTER  # it took less than that
        else:
            started = in_run(start_of(sid))
        if started is None:  # a fork's reused step: recorded before any claim
            started = ended
        number = execution_of(_outcome_or_last(evs).seq)
        st = _step(sid, evs, run, started, ended, number or None,
                   time.time() if now is None else now)
        noted = notes.get(sid, ())
        repairs = tuple(_repair_line(e) for e in noted
                        if e.kind == EventKind.TOOL_CALL_REPAIRED)
        refusals = tuple(_refusal_line(e) for e in noted
                         if e.kind in (EventKind.TOOL_CALL_REFUSED,
                                       EventKind.TOOL_CALL_APPROVAL))
        origins = tuple(line for e in noted if e.kind == EventKind.CONTEXT_ORIGINS
                        for line in _origin_lines(e))
        window = tuple(window_line(e.payload) for e in noted
                       if e.kind == EventKind.CONTEXT_WINDOW)
        if under is not None or repairs or refusals or origins or window:
            st = replace(st, under=under if st.outcome in ("completed", "failed") else None,
                         repairs=repairs, refusals=refusals, origins=origins,
                         window=window)
        steps.append(st)
    return RunStory(run=run, executions=executions, steps=steps)


def _own_start(evs: list[Event]) -> float | None:
    """A step's start as its own events record it (``None``: not recorded)."""
    if not evs:
        return None
    if evs[0].kind in (EventKind.TIMER_STARTED, EventKind.SIGNAL_WAIT_STARTED,
                       EventKind.CHILD_STARTED):
        return evs[0].created_at
    for ev in reversed(evs):
        if ev.kind in _TIMED:
            started = _number(ev.payload, "started_at")
            if started is not None:
                return started
    for ev in evs:  # a call that failed: its first attempt's start
        if ev.kind == EventKind.ATTEMPT_FAILED:
            at, took = _number(ev.payload, "at"), _number(ev.payload, "duration")
            if at is not None:
                return at - (took or 0.0)
    return None


def _untimed_plain_step(evs: list[Event]) -> bool:
    """A step with an outcome and nothing else: a plain step (or ``ctx.now`` and its
    kin) that took less than ``STEP_TIMED_AFTER``, since a longer one journals
    ``step_timed``."""
    return all(e.kind in (EventKind.STEP_COMPLETED, EventKind.STEP_FAILED) for e in evs)


def _outcome_or_last(evs: list[Event]) -> Event:
    for ev in reversed(evs):
        if ev.kind in (EventKind.STEP_COMPLETED, EventKind.STEP_FAILED,
                       EventKind.SIGNAL_RECEIVED, EventKind.SIGNAL_TIMED_OUT):
            return ev
    return evs[-1]


def _number(payload: str | None, key: str) -> float | None:
    try:
        value = json.loads(payload or "{}").get(key)
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def window_line(payload: str | None) -> str:
    """``evict 3 messages (9,412 tokens): why; 12,000 -> 7,900 of 8,000`` of a
    ``context_window`` event."""
    try:
        info = json.loads(payload or "{}")
    except ValueError:
        info = {}
    moved = info.get("moved") or []
    tokens = sum(int(m.get("tokens", 0)) for m in moved if isinstance(m, dict))
    what = f"{len(moved)} message{'s' if len(moved) != 1 else ''} ({tokens:,} tokens)"
    keys = info.get("keys")
    if isinstance(keys, list):
        what += f" to memory {info.get('memory')} ({len(keys)} entries)"
    return (f"{info.get('action', '?')} {what}: {info.get('reason', '')}; "
            f"{info.get('before', '?'):,} -> {info.get('after', '?'):,} of "
            f"{info.get('limit', '?'):,}")


def _repair_line(ev: Event) -> str:
    """``tool NAME: KIND: message`` of a ``tool_call_repaired`` event."""
    try:
        info = json.loads(ev.payload or "{}")
    except ValueError:
        info = {}
    return (f"tool {info.get('tool', ev.name)!s}: {info.get('error', '?')}: "
            f"{info.get('message', '')}")


def _refusal_line(ev: Event) -> str:
    """``tool NAME: REASON: message`` of a ``tool_call_refused`` event, ``tool NAME:
    approved|not approved: message`` of a ``tool_call_approval`` one."""
    try:
        info = json.loads(ev.payload or "{}")
    except ValueError:
        info = {}
    reason = info.get("reason", "?")
    if ev.kind == EventKind.TOOL_CALL_APPROVAL:
        reason = "approved" if info.get("approved") else "not approved"
    return f"tool {info.get('tool', ev.name)!s}: {reason}: {info.get('message', '')}"


def _origin_lines(ev: Event) -> list[str]:
    """The origins of a ``context_origins`` event, once each: ``user``,
    ``tool:search (untrusted)``."""
    try:
        messages = json.loads(ev.payload or "{}").get("messages") or []
    except (ValueError, AttributeError):
        return []
    lines = (f"{m.get('origin', '?')}" + (" (untrusted)" if m.get("trusted") is False else "")
             for m in messages if isinstance(m, dict))
    return list(dict.fromkeys(lines))


def _wake_at(ev: Event) -> float | None:
    try:
        return float(json.loads(ev.payload or "{}")["wake_at"])
    except (ValueError, KeyError, TypeError):
        return None


def _step(sid: str, evs: list[Event], run: RunRecord, started: float | None,
          ended: float | None, execution: int | None, now: float) -> Step:
    first, last = evs[0], evs[-1]
    name = first.name or "?"
    kinds = {e.kind for e in evs}
    if first.kind == EventKind.TIMER_STARTED:
        wake = _wake_at(first)
        done = run.is_terminal or wake is None or wake <= now
        return Step(sid, name, "sleep", "slept" if done else "sleeping", started,
                    ended if done else None, execution, first.payload or "", first.seq,
                    wake_at=wake)
    if first.kind == EventKind.SIGNAL_WAIT_STARTED:
        if EventKind.SIGNAL_RECEIVED in kinds:
            got = next(e for e in evs if e.kind == EventKind.SIGNAL_RECEIVED)
            return Step(sid, name, "signal", "received", started, got.created_at, execution,
                        got.payload or "null", first.seq)
        if EventKind.SIGNAL_TIMED_OUT in kinds:
            return Step(sid, name, "signal", "timed out", started, last.created_at, execution,
                        "", first.seq)
        return Step(sid, name, "signal", "waiting", started, None, execution, "", first.seq)
    if first.kind == EventKind.CHILD_STARTED:
        child = first.payload or ""
        if EventKind.STEP_COMPLETED in kinds:
            return Step(sid, name, "child", "completed", started, last.created_at, execution,
                        child, first.seq)
        if EventKind.STEP_FAILED in kinds:
            return Step(sid, name, "child", "failed", started, last.created_at, execution,
                        f"{child}: {_error_text(last.payload)}", first.seq)
        return Step(sid, name, "child", "running", started, None, execution, child, first.seq)
    if last.kind == EventKind.STEP_FAILED:
        return Step(sid, name, "step", "failed", started, ended, execution,
                    _error_text(last.payload), first.seq)
    if last.kind == EventKind.SIGNAL_RECEIVED:  # a signal taken without a recorded wait
        return Step(sid, name, "signal", "received", started, ended, execution,
                    last.payload or "null", first.seq)
    if last.kind == EventKind.STEP_COMPLETED:
        return Step(sid, name, "step", "completed", started, ended, execution,
                    last.payload or "null", first.seq)
    # Attempts or calls were recorded, but no outcome: it is still running, or its
    # execution was cut short (the step runs again when the run is resumed).
    failed = [e for e in evs if e.kind == EventKind.ATTEMPT_FAILED]
    return Step(sid, name, "step", "running" if run.status == RunStatus.RUNNING
                else "interrupted", started, None, execution,
                _attempt_error(failed[-1].payload) if failed else "", first.seq)
