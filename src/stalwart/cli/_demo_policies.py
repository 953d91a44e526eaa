"""What the resilience policies did in a run, read back for ``stalwart demo``.

Two sources, both durable: the run's journal, where every failed attempt of a model or
tool call is an ``attempt_failed`` event (the error, the attempt number, the dependency
key and what the policy did next) and every answered model turn records which model
answered; and the policy notes the worker process copied from its runtime's
``policy_log`` (breaker transitions are not part of any run's journal).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .._demo import LedgerPolicyNote
from .._serde import ErrorInfo
from ..errors import CircuitOpenError
from ..store._base import Event, EventKind
from ._common import fmt_duration

__all__ = ["Attempt", "PolicyStory", "StepPolicies", "read_attempt", "read_policies",
           "render_policies"]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One failed attempt, from an ``attempt_failed`` event."""

    step_id: str
    name: str
    attempt: int
    key: str
    next: str
    """``retry``, ``fallback`` or ``fail``."""
    wait: float | None
    """Seconds until the next attempt (``retry_at - at``) for a retry."""
    error_type: str
    status: int | None
    retry_after: float | None

    @property
    def breaker_rejected(self) -> bool:
        """The breaker refused the call: it never reached the model."""
        return self.error_type == CircuitOpenError.__name__

    @property
    def label(self) -> str:
        """``429``, ``503``, ``breaker open`` or the error's type."""
        if self.breaker_rejected:
            return "breaker open"
        return str(self.status) if self.status is not None else self.error_type

    def describe(self) -> str:
        """One line: what failed and what the policy did about it."""
        what = f"attempt {self.attempt} on {self.key} failed: {self.label}"
        if self.breaker_rejected:
            what = f"attempt {self.attempt}: the breaker of {self.key} is open, no call made"
        elif self.retry_after is not None:
            what += f" (Retry-After {self.retry_after:g}s)"
        if self.next == "retry" and self.wait is not None:
            return f"{what}; retry in {fmt_duration(self.wait)}"
        if self.next == "fallback":
            return f"{what}; fall back to the next model"
        return f"{what}; give up"


def read_attempt(ev: Event) -> Attempt:
    """The failed attempt an ``attempt_failed`` event records."""
    d = json.loads(ev.payload or "{}")
    err = d.get("error")
    info = ErrorInfo.from_dict(err if isinstance(err, dict) else {})
    retry_at = d.get("retry_at")
    return Attempt(
        step_id=ev.step_id or "?", name=ev.name or "?", attempt=int(d.get("attempt", 0)),
        key=str(d.get("key", "?")), next=str(d.get("next", "?")),
        wait=None if retry_at is None else float(retry_at) - float(d.get("at", retry_at)),
        error_type=info.type.rpartition(".")[2], status=_number(info, "status_code", int),
        retry_after=_number(info, "retry_after", float))


def _number(info: ErrorInfo, name: str, kind: type[int] | type[float]) -> Any:
    """A numeric attribute of a journaled error, or ``None`` (absent or not a number)."""
    value = info.attributes.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return kind(value)


@dataclass
class StepPolicies:
    """The failed attempts of one step and who finally answered."""

    step_id: str
    name: str
    attempts: list[Attempt] = field(default_factory=list)
    answered_by: str | None = None

    @property
    def retries(self) -> int:
        return sum(1 for a in self.attempts if a.next == "retry")


@dataclass(frozen=True, slots=True)
class PolicyStory:
    steps: list[StepPolicies]
    worker_counts: dict[str, int]
    """``policy_counts`` of the process that ran the calls (from its copied notes)."""
    breaker_transitions: list[LedgerPolicyNote]

    @property
    def attempts(self) -> list[Attempt]:
        return [a for s in self.steps for a in s.attempts]

    @property
    def retries(self) -> int:
        return sum(s.retries for s in self.steps)

    @property
    def fallbacks(self) -> list[StepPolicies]:
        """Steps a fallback model answered."""
        return [s for s in self.steps if any(a.next == "fallback" for a in s.attempts)]

    def calls_reaching(self, key: str) -> int:
        """Failed calls that reached ``key`` (breaker rejections never did)."""
        return sum(1 for a in self.attempts if a.key == key and not a.breaker_rejected)

    def rejected(self, key: str) -> int:
        return sum(1 for a in self.attempts if a.key == key and a.breaker_rejected)


def _answered_by(payload: str | None) -> str | None:
    try:
        data: Any = json.loads(payload or "null")
    except ValueError:
        return None
    if isinstance(data, dict) and data.get("provider") and data.get("model"):
        return f"{data['provider']}:{data['model']}"
    return None


def read_policies(events: list[Event], notes: list[LedgerPolicyNote]) -> PolicyStory:
    """The policy story of a run: its journal's guarded steps, and the worker's notes."""
    steps: dict[str, StepPolicies] = {}
    for ev in events:
        if ev.step_id is None or not (ev.name or "").startswith(("chat:", "tool:")):
            continue
        st = steps.setdefault(ev.step_id, StepPolicies(ev.step_id, ev.name or "?"))
        if ev.kind == EventKind.ATTEMPT_FAILED:
            st.attempts.append(read_attempt(ev))
        elif ev.kind == EventKind.STEP_COMPLETED and st.name.startswith("chat:"):
            st.answered_by = _answered_by(ev.payload)
    return PolicyStory(
        steps=list(steps.values()),
        worker_counts=dict(Counter(n.action for n in notes)),
        breaker_transitions=[n for n in notes if n.action.startswith("breaker_")
                             and n.action != "breaker_rejected"])


def _failures(st: StepPolicies) -> str:
    labels = Counter(a.label for a in st.attempts)
    if not labels:
        return "-"
    parts = [f"{label} x{n}" for label, n in labels.items()]
    after = {a.retry_after for a in st.attempts
             if a.retry_after is not None and not a.breaker_rejected}
    if after:
        parts.append(f"Retry-After {', '.join(f'{r:g}s' for r in sorted(after))}")
    return ", ".join(parts)


def _actions(st: StepPolicies) -> str:
    out = []
    if st.retries:
        out.append(f"retried {st.retries}x")
    if any(a.breaker_rejected for a in st.attempts):
        out.append("breaker refused")
    if any(a.next == "fallback" for a in st.attempts):
        out.append("fell back")
    return ", ".join(out) or "-"


def render_policies(out: Console, story: PolicyStory, worker: str) -> None:
    """A table of the guarded steps, then the totals and the worker's policy_counts."""
    out.print(Text("what the policies did (from the journal's attempt_failed events)",
                   style="bold"))
    table = Table(box=None, pad_edge=False)
    for col in ("step", "call", "failed attempts", "policy action", "answered by"):
        table.add_column(col, no_wrap=True)
    for st in story.steps:
        table.add_row(st.step_id, Text(st.name), Text(_failures(st)), Text(_actions(st)),
                      Text(st.answered_by or "-"))
    out.print(table)
    limited = [a for a in story.attempts if a.label == "429" and a.next == "retry"]
    after = sorted({a.retry_after for a in limited if a.retry_after is not None})
    out.print()
    out.print(f"  retries:       {story.retries}, with full-jitter backoff; "
              + (f"{len(limited)} after a 429, each scheduled no sooner than its Retry-After "
                 f"({', '.join(f'{r:g}s' for r in after)})" if limited else "no 429s"),
              soft_wrap=True)
    for key in sorted({a.key for a in story.attempts if a.breaker_rejected}):
        opened = [n for n in story.breaker_transitions if n.key == key]
        how = " -> ".join(n.action.removeprefix("breaker_") for n in opened) or "open"
        out.print(f"  breaker:       {key}: {story.calls_reaching(key)} failed calls, then "
                  f"closed -> {how}; {story.rejected(key)} later call(s) rejected at once, "
                  "without reaching the model", soft_wrap=True)
    for st in story.fallbacks:
        out.print(f"  fallback:      {st.name} ({st.step_id}) answered by "
                  f"{st.answered_by or '?'}", soft_wrap=True)
    counts = ", ".join(f"{k}={v}" for k, v in sorted(story.worker_counts.items())) or "none"
    out.print(f"  policy_counts: {counts}  ({worker}, Runtime.policy_counts)", soft_wrap=True)
