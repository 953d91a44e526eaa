"""Human approval bound to what was approved: ``ctx.approval``.

An approval is a durable wait (the run parks, nothing is held in memory) for a decision
on one exact payload. The request is journaled with the payload and a *token*: the
SHA-256 of the run id, the step id and the payload as canonical JSON
(:func:`stalwart._serde.input_hash`, the one definition of "the same value"). A decision
is a signal named for the approval's step (:func:`decision_signal`) carrying who
decided, when, the comment and the token the approver was shown; the run takes the first
one and journals it at the approval's step, so the decision is an event of the run's own
journal (the audit record) and a replay returns it without waiting.

The rules that decide whether a decision is accepted live in :func:`judge`, used by
``Runtime.approve`` / ``Runtime.deny`` (and so by the CLI) before they send anything:

* the approval must exist in the run's journal (by step id, or by name when one pending
  approval has it);
* a token, when given, must match the request's: a payload that changed since it was
  shown (another request under the same name, a fork) is refused;
* the same decision again is idempotent (the recorded or queued decision is returned);
* the other decision after one was made or queued is refused: deny is final, and so is
  approve.

Two deciders at the same instant may both pass :func:`judge` before either decision is
stored; the run takes the first stored. So ``Runtime._decide`` judges again after
sending, against what is stored then: the one stored second is told the first decision
(refused if it went the other way; its signal stays unread, never taken by the run).
A timeout's default decision is journaled with the timeout, so the audit shows it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal, final

from .._serde import decode, encode, input_hash
from ..errors import (
    ApprovalConflictError,
    ApprovalNotFoundError,
    ApprovalTimeoutError,
    NonDeterminismError,
)
from ..store import Event, EventKind, NewEvent
from ..store._approvals import APPROVAL_STEP_PREFIX, DECISION_SIGNAL_PREFIX, is_approval_event
from ._execution import Execution
from ._steps import begin

__all__ = [
    "ApprovalRequest",
    "Decision",
    "approval",
    "approval_token",
    "decision_signal",
    "find_requests",
    "judge",
    "waiting",
]


@final
@dataclass(frozen=True, slots=True)
class Decision:
    """What was decided on an approval, as journaled."""

    approved: bool
    """True for approve, False for deny (and for a timeout whose default is deny)."""
    by: str
    """Who decided (``--as`` / ``as_``); ``"timeout"`` when the default applied."""
    at: float
    """When (the decider's clock, seconds since the epoch)."""
    comment: str | None
    token: str
    """The token of the payload that was decided on."""
    timed_out: bool = False

    @property
    def denied(self) -> bool:
        return not self.approved

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Decision:
        return cls(approved=bool(data["approved"]), by=str(data["by"]), at=float(data["at"]),
                   comment=data.get("comment"), token=str(data["token"]),
                   timed_out=bool(data.get("timed_out", False)))


@final
@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """An approval as the run's journal holds it: what was asked, and its decision if
    one was journaled."""

    run_id: str
    step_id: str
    name: str
    payload: Any
    token: str
    requested_at: float
    deadline: float | None
    decision: Decision | None

    @property
    def pending(self) -> bool:
        return self.decision is None

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["decision"] = None if self.decision is None else self.decision.as_json()
        return out


def approval_token(run_id: str, step_id: str, payload_json: str) -> str:
    """The token binding a decision to one run, one step and one payload."""
    return input_hash(json.dumps({"run_id": run_id, "step_id": step_id,
                                  "payload": json.loads(payload_json)}))


def decision_signal(step_id: str) -> str:
    """The name of the signal that carries a decision on the approval at ``step_id``."""
    return f"{DECISION_SIGNAL_PREFIX}{step_id}"


async def approval(ex: Execution, name: str, payload: Any, *, timeout: float | None,
                   default: Literal["approve", "deny"] | None) -> Decision:
    """``ctx.approval``: see :meth:`stalwart.Context.approval`."""
    if not name or not isinstance(name, str):
        raise ValueError(f"approval() needs a non-empty name, not {name!r}")
    if timeout is not None and not 0 <= timeout < math.inf:
        raise ValueError(f"approval() needs a finite, non-negative timeout in seconds "
                         f"or None, not {timeout!r}")
    if default not in (None, "approve", "deny"):
        raise ValueError(f"approval() default must be 'approve', 'deny' or None, "
                         f"not {default!r}")
    step_name = APPROVAL_STEP_PREFIX + name
    step_id, recorded = begin(ex, step_name)
    payload_json = encode(payload, what=f"payload of approval {name!r}")
    token = approval_token(ex.run_id, step_id, payload_json)
    if recorded:
        asked = json.loads(recorded[0].payload or "{}")
        if asked.get("token") != token:
            raise NonDeterminismError(
                f"run {ex.run_id}: approval {name!r} at step {step_id} now asks about "
                "another payload than the journal recorded (the code computes it "
                "differently)", run_id=ex.run_id, step_id=step_id,
                recorded=step_name, current=step_name)
        for ev in recorded[1:]:
            if ev.kind == EventKind.SIGNAL_RECEIVED:
                return Decision.from_json(decode(ev.payload or "{}"))
            if ev.kind == EventKind.SIGNAL_TIMED_OUT:
                if ev.payload:  # the default decision, as journaled
                    return Decision.from_json(decode(ev.payload))
                if default is None:
                    raise _timeout_error(ex, name, step_id)
                # A journal from before defaults were journaled: the code's default.
                return Decision(approved=default == "approve", by="timeout",
                                at=ev.created_at, comment=None, token=token,
                                timed_out=True)
        deadline = asked.get("deadline")
    ex.go_live(step_id, step_name)
    if not recorded:
        deadline = None if timeout is None else ex.clock.now() + timeout
        await ex.record([NewEvent(EventKind.SIGNAL_WAIT_STARTED, step_id, step_name,
                                  json.dumps({"deadline": deadline, "approval": name,
                                              "token": token,
                                              "payload": json.loads(payload_json)}))])
    return await _wait(ex, name, step_id, step_name, token, deadline, default)


async def _wait(ex: Execution, name: str, step_id: str, step_name: str, token: str,
                deadline: float | None,
                default: Literal["approve", "deny"] | None) -> Decision:
    since = ex.clock.monotonic()
    while True:
        text = await ex.take_signal(decision_signal(step_id), step_id)
        if text is not None:
            return Decision.from_json(decode(text))
        if deadline is not None and ex.clock.now() >= deadline:
            # The default decision is journaled with the timeout (the audit shows what
            # the timeout decided); without a default the run fails on this event.
            decision = (None if default is None else Decision(
                approved=default == "approve", by="timeout", at=ex.clock.now(),
                comment=None, token=token, timed_out=True))
            await ex.record([NewEvent(
                EventKind.SIGNAL_TIMED_OUT, step_id, step_name,
                None if decision is None else encode(decision.as_json()))])
            if decision is None:
                raise _timeout_error(ex, name, step_id)
            return decision
        await ex.wait_for_wakeup(deadline, since)


def _timeout_error(ex: Execution, name: str, step_id: str) -> ApprovalTimeoutError:
    return ApprovalTimeoutError(
        f"run {ex.run_id}: approval {name!r} was not decided in time",
        approval=name, run_id=ex.run_id, step_id=step_id)


def find_requests(run_id: str, events: Iterable[Event]) -> list[ApprovalRequest]:
    """Every approval a run's journal holds, oldest first, with its decision (a timeout
    shows as a decision by ``"timeout"``: its default, or a deny when it had none and
    the run failed). Only the approval events count (``store._approvals``), so the
    whole journal and the store's selection of them give the same answer."""
    asked: dict[str, ApprovalRequest] = {}
    for ev in events:
        if ev.step_id is None or not is_approval_event(ev.kind, ev.name):
            continue
        if ev.kind == EventKind.SIGNAL_WAIT_STARTED:
            data = json.loads(ev.payload or "{}")
            asked[ev.step_id] = ApprovalRequest(
                run_id=run_id, step_id=ev.step_id, name=str(data.get("approval", "")),
                payload=data.get("payload"), token=str(data.get("token", "")),
                requested_at=ev.created_at, deadline=data.get("deadline"), decision=None)
        elif ev.step_id in asked and ev.kind in (EventKind.SIGNAL_RECEIVED,
                                                 EventKind.SIGNAL_TIMED_OUT):
            req = asked[ev.step_id]
            decision = (Decision.from_json(decode(ev.payload)) if ev.payload else
                        Decision(approved=False, by="timeout", at=ev.created_at,
                                 comment=None, token=req.token, timed_out=True))
            asked[ev.step_id] = _with(req, decision)
    return list(asked.values())


def waiting(run_id: str, events: Iterable[Event], queued: Iterable[str]
            ) -> list[ApprovalRequest]:
    """The approvals of a run that wait for a decision: those of its journal's
    ``events`` (whole, or only its approval events) that have none, less those whose
    decision is among ``queued`` (the names of its signals sent and not yet taken)."""
    sent = set(queued)
    return [r for r in find_requests(run_id, events)
            if r.pending and decision_signal(r.step_id) not in sent]


def _with(req: ApprovalRequest, decision: Decision) -> ApprovalRequest:
    return ApprovalRequest(req.run_id, req.step_id, req.name, req.payload, req.token,
                           req.requested_at, req.deadline, decision)


def judge(requests: list[ApprovalRequest], queued: list[tuple[str, str]], *, run_id: str,
          which: str, approved: bool, token: str | None) -> tuple[ApprovalRequest,
                                                                  Decision | None]:
    """Whether a decision on ``which`` (a step id, or the name of one approval) may be
    sent: the request it is for, and the decision already made or queued that answers
    it the same way (``None``: send it). ``queued`` is the run's pending signals.

    Raises:
        ApprovalNotFoundError: no such approval (or a name that several pending share).
        ApprovalConflictError: the token does not match, or the other decision was made.
    """
    req = _pick(requests, run_id=run_id, which=which)
    if token is not None and token != req.token:
        raise ApprovalConflictError(
            f"run {run_id}: approval {req.name!r} (step {req.step_id}) is for another "
            f"payload than the one shown (token {token[:12]}..., the journal's "
            f"{req.token[:12]}...); look again with `stalwart approvals`",
            approval=req.name, run_id=run_id, step_id=req.step_id)
    earlier = req.decision
    if earlier is None:
        for sig_name, text in queued:
            if sig_name == decision_signal(req.step_id):
                earlier = Decision.from_json(decode(text))
                break
    if earlier is None:
        return req, None
    if earlier.approved == approved and not earlier.timed_out:
        return req, earlier
    how = ("timed out" if earlier.timed_out else
           f"was {'approved' if earlier.approved else 'denied'} by {earlier.by}")
    raise ApprovalConflictError(
        f"run {run_id}: approval {req.name!r} (step {req.step_id}) {how}; a decision is "
        "final", approval=req.name, run_id=run_id, step_id=req.step_id)


def _pick(requests: list[ApprovalRequest], *, run_id: str, which: str) -> ApprovalRequest:
    by_step = [r for r in requests if r.step_id == which]
    if by_step:
        return by_step[0]
    named = [r for r in requests if r.name == which]
    pending = [r for r in named if r.pending]
    if len(pending) == 1:
        return pending[0]
    if len(pending) > 1:
        steps = ", ".join(r.step_id for r in pending)
        raise ApprovalNotFoundError(
            f"run {run_id}: {len(pending)} approvals named {which!r} are pending (steps "
            f"{steps}); name one by its step", approval=which, run_id=run_id)
    if named:
        return named[-1]
    known = ", ".join(f"{r.name} (step {r.step_id})" for r in requests) or "none"
    raise ApprovalNotFoundError(
        f"run {run_id} has no approval {which!r} (its approvals: {known})",
        approval=which, run_id=run_id)
