"""Journaled calls behind the policy stack: one small layer per policy.

A model or tool call is one step. Inside it the policies run in the order
docs/design.md names, outermost first, each a wrapper around the next::

    Budget → Fallback → Retry → CircuitBreaker → RateLimit → Bulkhead → Timeout → call

with ``Timeout.overall`` as a deadline over everything inside Budget. From the breaker
inward the layers are pure policies run once per attempt
(:mod:`stalwart.policies._stack`), with the lease's fence between Bulkhead and Timeout
(the call is an effect: not after a takeover). The three outer ones are here, because
their decisions are journaled before they are acted on:

* **Retry** (:func:`_retry`). Every failed attempt is journaled (``attempt_failed``:
  attempt number, error, the next action, the time the next attempt may start) *before*
  the backoff, so a crash in the middle of a backoff neither resets the attempt count nor
  calls the provider before its ``Retry-After`` has passed: on resume the step waits out
  the recorded backoff (parking the run if it is long) and goes on with the next attempt
  number. The decision comes from the pure core :func:`stalwart.policies.decide`.
  An open breaker is waited out (its open time plus jitter) when no fallback can
  answer now and attempts and deadline are left.
* **Fallback** (:func:`_fallback`). The next candidate once one gives up (its breaker
  open, its retries exhausted); a resumed call starts at the candidate the journal says.
* **Budget** (:func:`_budget`). Checked before every attempt, where a refusal ends the
  call (no retry, no fallback); fed with the settled call's usage.

A call's timing (wall-clock start, duration of the last attempt, attempts) is journaled
as ``call_timed`` in the same append as its outcome, and each failed attempt's payload
carries its ``duration``: latency statistics read them, at no extra commit. An outcome
``check`` that fails is a semantic failure: it counts against the dependency's breaker
like an error.

Why not :func:`stalwart.policies.call_with_retry`: its loop keeps its state in memory,
and here each decision must be journaled before it is acted on.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NoReturn

from .._serde import ErrorInfo, decode, encode, encode_error, error_type_name, rebuild_error
from ..errors import (
    BudgetExceededError,
    CircuitOpenError,
    ConfigurationError,
    FallbackExhaustedError,
    LeaseLostError,
    OutcomeCheckError,
    RetryExhaustedError,
    SerializationError,
    StalwartError,
    StoreError,
)
from ..policies import Attempt, Decision, GiveUp, RetryState, Sleep, decide, remaining
from ..policies._common import to_seconds
from ..policies._stack import (
    BreakerLayer,
    BulkheadLayer,
    CallAttempt,
    CheckLayer,
    Layer,
    Next,
    RateLimitLayer,
    TimeoutLayer,
    compose,
)
from ..policies._timeout import call_deadline
from ..store._base import Event, EventKind, NewEvent, RunStatus
from ._engine import Engine
from ._execution import Execution
from ._interceptor import ToolCallEndInput, ToolCallStartInput
from ._policy import Policy
from ._scope import StepInfo, bind_step, outcome_problem, unbind_step
from ._steps import begin, record_failure, recorded_outcome
from ._tools import Tool, ToolCall

__all__ = ["Candidate", "guarded_call", "tool_call"]


@dataclass(frozen=True, slots=True)
class Candidate:
    """One way to make the call: a dependency key and a function of (step id, attempt)."""

    key: str
    call: Callable[[str, int], Awaitable[Any]]
    estimate_tokens: int = 0
    actual_tokens: Callable[[Any], int] | None = None


@dataclass(frozen=True, slots=True)
class _Prior:
    """A journaled failed attempt."""

    candidate: int
    attempt: int
    at: float
    retry_at: float | None
    next: str
    error: ErrorInfo
    call_started: float | None


def _priors(events: Sequence[Event], after_seq: int) -> list[_Prior]:
    out = []
    for ev in events:
        if ev.kind != EventKind.ATTEMPT_FAILED or ev.seq <= after_seq:
            continue
        d = json.loads(ev.payload or "{}")
        out.append(_Prior(candidate=int(d["candidate"]), attempt=int(d["attempt"]),
                          at=float(d["at"]), retry_at=d.get("retry_at"), next=str(d["next"]),
                          error=ErrorInfo.from_json(json.dumps(d["error"])),
                          call_started=d.get("call_started")))
    return out


class _GaveUp(Exception):
    """Retry gave up on a candidate (journaled already): Fallback moves on."""


@dataclass(frozen=True, slots=True)
class _Answer:
    """A successful attempt: its result, the candidate that gave it, the attempt."""

    result: Any
    candidate: int
    attempt: CallAttempt


@dataclass(slots=True)
class _Call:
    """One guarded call: its step, what the journal holds of it, its policies."""

    ex: Execution
    step_id: str
    name: str
    candidates: Sequence[Candidate]
    policy: Policy
    pool: str | None
    check: Callable[[Any], object] | None
    reject_failed_check: bool
    priors: list[_Prior]
    started_at: float
    """When this execution went live with the call (``call_timed``'s start)."""
    origin: float
    """When the call first started, across crashes (``Timeout.overall`` runs from it)."""
    errors: list[BaseException] = field(default_factory=list)
    attempts: int = 0
    reason: str = "attempts exhausted"
    before_attempt: Callable[[str], Awaitable[None]] | None = None
    also: Sequence[NewEvent] = ()
    """Events journaled in the same append as a successful outcome, before it."""

    @property
    def engine(self) -> Engine:
        return self.ex.engine

    def note(self, action: str, key: str) -> None:
        self.engine.note_policy(self.ex.run_id, self.step_id, action, key)

    async def journal_attempt(self, ci: int, number: int, err: BaseException, nxt: str, *,
                              at: float, retry_at: float | None = None,
                              duration: float | None = None) -> None:
        """Journal a failed attempt and what comes next (``retry``, ``fallback``,
        ``fail``), before it is carried out."""
        await self.ex.record([NewEvent(EventKind.ATTEMPT_FAILED, self.step_id, self.name,
                                       json.dumps({
            "candidate": ci, "attempt": number, "at": at, "next": nxt, "retry_at": retry_at,
            "key": self.candidates[ci].key, "duration": duration,
            "call_started": self.origin, "error": json.loads(encode_error(err).to_json())}))])

    async def record_failure(self, exc: BaseException) -> BaseException:
        """Journal the step's failure; returns what to raise (what a replay raises: a
        stalwart error that named no step is located at this one)."""
        return await record_failure(self.ex, self.step_id, self.name, exc)

    async def fail_step(self, exc: BaseException) -> BaseException:
        """The call ends failed: journal it and count it in the budget; returns what to
        raise (what a replay raises)."""
        raised = await self.record_failure(exc)
        self.ex.budget.settled(None, live=True)
        return raised

    def fallback_can_answer(self, ci: int) -> bool:
        """Whether a candidate after ``ci`` can take a call now (its breaker permits)."""
        config = self.policy.breaker_config
        breakers = self.engine.breakers
        return any(config is None or c.key not in breakers or breakers.get(c.key).would_permit()
                   for c in self.candidates[ci + 1:])


async def guarded_call(
    ex: Execution,
    *,
    name: str,
    candidates: Sequence[Candidate],
    policy: Policy,
    pool: str | None,
    encode_result: Callable[[Any], str],
    decode_result: Callable[[str], Any],
    check: Callable[[Any], object] | None = None,
    reject_failed_check: bool = False,
    also: Sequence[NewEvent] = (),
) -> Any:
    """Make the call as one journaled step under ``policy``; see the module docstring.

    ``also``: events about the step journaled in the same append as its result (an
    agent's turn journals where its context came from so), at no extra commit.

    ``check`` is an outcome check on a successful result. A result that fails it counts
    as a failure for the candidate's breaker; with ``reject_failed_check`` the attempt
    fails (:class:`OutcomeCheckError`, retried like an error), otherwise the result is
    kept and a ``check_failed`` event is journaled with it (an agent re-asks instead).
    """
    step_id, recorded = begin(ex, name)
    outcome = recorded_outcome(recorded)
    if outcome is not None:
        return _replayed(ex, step_id, outcome, decode_result)
    ex.go_live(step_id, name)
    now = ex.clock.now()
    priors = _priors(recorded or (), ex.redriven_after(step_id))
    origin = now if not priors else (priors[0].call_started or priors[0].at)
    call = _Call(ex, step_id, name, candidates, policy, pool, check, reject_failed_check,
                 priors, started_at=now, origin=origin,
                 errors=[rebuild_error(p.error) for p in priors], also=also)
    text = await _budget(call, encode_result)
    return decode_result(text)


def _replayed(ex: Execution, step_id: str, outcome: Event,
              decode_result: Callable[[str], Any]) -> Any:
    """A recorded call: its result, or its error raised again."""
    if outcome.kind == EventKind.STEP_COMPLETED:
        value = decode_result(outcome.payload or "null")
        ex.budget.settled(value, live=False)
        return value
    ex.budget.settled(None, live=False)
    raise rebuild_error(ErrorInfo.from_json(outcome.payload or "{}"),
                        run_id=ex.run_id, step_id=step_id)


# -- Budget ----------------------------------------------------------------------------


async def _budget(call: _Call, encode_result: Callable[[Any], str]) -> str:
    """Budget, outermost: refuses an attempt the budget has no room for, before anything
    else decides (the step fails at once: neither retried nor sent to a fallback), and
    counts the settled call. Returns the journaled result's text."""
    budget = call.ex.budget

    async def check(key: str) -> None:
        try:
            budget.check(call.step_id, key)
        except (BudgetExceededError, ConfigurationError) as exc:
            raise await call.record_failure(exc) from exc.__cause__

    call.before_attempt = check
    answer = await _overall(call)
    text = await _record_answer(call, answer, encode_result)
    budget.settled(answer.result, live=True)
    return text


async def _record_answer(call: _Call, answer: _Answer,
                         encode_result: Callable[[Any], str]) -> str:
    """Journal the successful attempt's result with the call's timing (one append)."""
    try:
        text = encode_result(answer.result)
    except SerializationError as exc:
        raise await call.fail_step(exc) from exc.__cause__
    cand, attempt = call.candidates[answer.candidate], answer.attempt
    if answer.candidate > 0:
        call.note("fallback_answered", cand.key)
    events = [*call.also, NewEvent(EventKind.CALL_TIMED, call.step_id, call.name, json.dumps({
        "started_at": call.started_at, "duration": attempt.duration,
        "attempts": attempt.number, "key": cand.key})),
        NewEvent(EventKind.STEP_COMPLETED, call.step_id, call.name, text)]
    failure = attempt.check_failure
    if isinstance(failure, OutcomeCheckError):
        events.insert(0, NewEvent(EventKind.CHECK_FAILED, call.step_id, call.name, json.dumps({
            "key": cand.key, "attempt": attempt.number, "error": "OutcomeCheckError",
            "reason": failure.reason})))
    await call.ex.record(events)
    return text


# -- Timeout.overall -------------------------------------------------------------------


async def _overall(call: _Call) -> _Answer:
    """Timeout.overall: a deadline on the whole call, from its first start (journaled,
    so a resumed call keeps it). Retry neither backs off nor starts an attempt past it,
    waits in front of the call end at it, and an attempt in flight is cut at it. It
    cancels nothing itself, so no journal write is ever cut in half."""
    timeout = call.policy.timeout_policy
    overall = None if timeout is None or timeout.overall is None else to_seconds(timeout.overall)
    if overall is None:
        return await _fallback(call)
    left = overall - (call.ex.clock.now() - call.origin)
    with call_deadline(left, clock=call.ex.clock):
        return await _fallback(call)


# -- Fallback --------------------------------------------------------------------------


async def _fallback(call: _Call) -> _Answer:
    """Fallback: each candidate in turn, from where the journal left off, until one
    answers; when every one gave up, the call fails exhausted."""
    start = 0
    if call.priors:
        last = call.priors[-1]
        start = last.candidate + (1 if last.next == "fallback" else 0)
    for ci in range(start, len(call.candidates)):
        try:
            return await _retry(call, ci)
        except _GaveUp:
            if ci + 1 < len(call.candidates):
                call.note("fallback", call.candidates[ci + 1].key)
    return await _exhausted(call)


async def _exhausted(call: _Call) -> NoReturn:
    errors, candidates = call.errors, call.candidates
    final = errors[-1] if errors else None
    err: StalwartError
    if len(candidates) > 1:
        err = FallbackExhaustedError(
            f"step {call.name!r} ({call.step_id}): every candidate failed: "
            + "; ".join(f"{error_type_name(e)}: {e}" for e in errors[-len(candidates):]),
            keys=tuple(c.key for c in candidates), run_id=call.ex.run_id,
            step_id=call.step_id)
    else:
        err = RetryExhaustedError(
            f"step {call.name!r} ({call.step_id}) gave up after {call.attempts} attempt(s): "
            f"{error_type_name(final)}: {final}", attempts=call.attempts,
            errors=tuple(errors), reason=call.reason, run_id=call.ex.run_id,
            step_id=call.step_id)
    await call.fail_step(err)
    if final is not None:
        raise err from final
    raise err


# -- Retry -----------------------------------------------------------------------------


async def _retry(call: _Call, ci: int) -> _Answer:
    """Retry: the attempts of one candidate, each through the per-attempt stack; each
    failure journaled before its backoff. Raises :class:`_GaveUp` to move on."""
    cand = call.candidates[ci]
    mine = [p for p in call.priors if p.candidate == ci]
    if mine and mine[-1] is call.priors[-1] and mine[-1].next == "retry" \
            and mine[-1].retry_at is not None:
        await call.ex.wait_until(float(mine[-1].retry_at), RunStatus.SLEEPING)
    state = RetryState(attempt=len(mine),
                       first_attempt_at=mine[0].at if mine else call.ex.clock.now())
    call.attempts = state.attempt
    stack = _attempt_stack(call, ci)
    decision = _first_decision(call, state, bool(mine))
    while isinstance(decision, Attempt):
        assert call.before_attempt is not None
        await call.before_attempt(cand.key)
        state = state.started()
        call.attempts = state.attempt
        attempt = CallAttempt(cand.key, decision.number, cand.estimate_tokens)
        try:
            return _Answer(await stack(attempt), ci, attempt)
        except (LeaseLostError, StoreError):
            raise
        except Exception as exc:
            state = state.failed(exc)
            decision = await _after_failure(call, ci, attempt, exc, state)
    assert isinstance(decision, GiveUp)
    call.reason = decision.reason
    raise _GaveUp()


def _first_decision(call: _Call, state: RetryState, resumed: bool) -> Decision:
    retry = call.policy.retry_policy
    if retry is None:
        return GiveUp("no retry policy", exhausted=True) if resumed else Attempt(1)
    return decide(retry, state, None, call.ex.clock.now(), call.ex.rng,
                  deadline_remaining=remaining())


async def _after_failure(call: _Call, ci: int, attempt: CallAttempt, exc: Exception,
                         state: RetryState) -> Decision:
    """What Retry does after a failed attempt, journaled before it is done: waits and
    returns the next :class:`Attempt`, or gives up (:class:`_GaveUp`, or the error
    itself when it may not be retried)."""
    key = call.candidates[ci].key
    # One reading of the clock: the retry is due ``seconds`` after the failure the
    # journal records (two readings put a short backoff's retry before its failure).
    now = call.ex.clock.now()
    took = attempt.duration if attempt.made else None
    more = ci + 1 < len(call.candidates)
    if isinstance(exc, CircuitOpenError):
        call.note("breaker_rejected", key)
        if call.fallback_can_answer(ci):
            call.errors.append(exc)
            await call.journal_attempt(ci, attempt.number, exc, "fallback", at=now)
            raise _GaveUp()
    decision = _retry_decision(call, state, exc, now)
    if isinstance(exc, CircuitOpenError) and isinstance(decision, GiveUp):
        decision = GiveUp(decision.reason, exhausted=True)  # never raised as it is
    if isinstance(decision, Sleep):
        retry_at = now + decision.seconds
        await call.journal_attempt(ci, attempt.number, exc, "retry", at=now,
                                   retry_at=retry_at, duration=took)
        call.note("retried", key)
        await call.ex.wait_until(retry_at, RunStatus.SLEEPING)
        return Attempt(decision.next_attempt)
    assert isinstance(decision, GiveUp)
    call.errors.append(exc)
    call.reason = decision.reason
    if not decision.exhausted:
        await call.journal_attempt(ci, attempt.number, exc, "fail", at=now, duration=took)
        raise await call.fail_step(exc)  # what a replay raises: the same except branch
    await call.journal_attempt(ci, attempt.number, exc, "fallback" if more else "fail",
                               at=now, duration=took)
    raise _GaveUp()


def _retry_decision(call: _Call, state: RetryState, exc: Exception, now: float) -> Decision:
    retry = call.policy.retry_policy
    if retry is None:  # one attempt; a retryable error is then an exhausted one
        return GiveUp("no retry policy", exhausted=bool(getattr(exc, "retryable", False)))
    return decide(retry, state, exc, now, call.ex.rng, deadline_remaining=remaining())


# -- the per-attempt stack -------------------------------------------------------------


def _attempt_stack(call: _Call, ci: int) -> Next:
    """CircuitBreaker → (outcome check) → RateLimit → Bulkhead → (the lease's fence)
    → Timeout → the call."""
    runtime, policy, cand = call.engine, call.policy, call.candidates[ci]
    clock = runtime.clock
    layers: list[Layer] = []
    if policy.breaker_config is not None:
        layers.append(BreakerLayer(runtime.breakers.get(cand.key, policy.breaker_config)))
    if call.check is not None:
        layers.append(CheckLayer(partial(_check, call), reject=call.reject_failed_check))
    limit = policy.rate_limit_config
    layers.append(RateLimitLayer(
        runtime.backpressure.get(cand.key),
        None if limit is None else runtime.rate_limiters.get(cand.key, limit),
        max_wait=None if limit is None or limit.max_wait is None else to_seconds(limit.max_wait),
        actual_tokens=cand.actual_tokens))
    if call.pool is not None and policy.bulkhead_config is not None:
        bulkhead = runtime.bulkheads.get(call.pool, policy.bulkhead_config)
        layers.append(BulkheadLayer(bulkhead, clock=clock))
    layers.append(partial(_fence, call))
    timeout = policy.timeout_policy
    per_attempt = None if timeout is None or timeout.per_attempt is None else to_seconds(
        timeout.per_attempt)
    layers.append(TimeoutLayer(per_attempt, clock=clock))
    return compose(layers, partial(_invoke, call, cand))


async def _fence(call: _Call, attempt: CallAttempt, inner: Next) -> Any:
    """The call is an effect: not after a takeover. The lease is checked after the
    limiter's and bulkhead's waits, outside the call's own timeout (a store round trip
    inside it would count against the call); a lost lease is no call made."""
    await call.ex.fence()
    return await inner(attempt)


async def _invoke(call: _Call, cand: Candidate, attempt: CallAttempt) -> Any:
    """The call itself, with the step's context bound for the code it runs."""
    token = bind_step(StepInfo(call.ex.run_id, call.step_id, call.name,
                                       attempt.number, call.ex.lease.token))
    try:
        return await cand.call(call.step_id, attempt.number)
    finally:
        unbind_step(token)


def _check(call: _Call, attempt: CallAttempt, result: Any) -> OutcomeCheckError | None:
    """The call's outcome check as the check layer wants it: the failure, or ``None``."""
    assert call.check is not None
    problem = outcome_problem(call.check, result)
    if problem is None:
        return None
    call.note("check_failed", attempt.key)
    return OutcomeCheckError(
        f"step {call.name!r} ({call.step_id}): the result of {attempt.key} failed its "
        f"check: {problem}", key=attempt.key, reason=problem, run_id=call.ex.run_id,
        step_id=call.step_id, attempt=attempt.number)


# -- a tool call -----------------------------------------------------------------------


async def tool_call(ex: Execution, tool: Tool[Any, Any], arguments: dict[str, Any], *,
                    policy: Policy | None, check: Callable[[Any], object] | None,
                    tool_call_id: str | None = None) -> Any:
    """``ctx.tool``: see :meth:`stalwart.Context.tool`. ``tool_call_id`` is the model's id
    of the call, when an agent makes it."""
    args = tool.validate(arguments)
    tp = tool.return_type

    async def call(step_id: str, attempt: int) -> Any:
        kwargs: dict[str, Any] = dict(args)
        if tool.arguments_param is not None:  # a tool described by a schema (MCP)
            kwargs = {tool.arguments_param: dict(args)}
        if tool.call_param is not None:
            kwargs[tool.call_param] = ToolCall(ex.run_id, step_id, tool.name, attempt,
                                               tool_call_id, ex.lease.token)
        info = StepInfo(ex.run_id, step_id, f"tool:{tool.name}", attempt, ex.lease.token)
        ic = ex.interceptor
        if not ic.active:
            return await ex.invoke(info, tool.fn, (), kwargs, is_async=tool.is_async)
        handle = ic.tool_call_started(ToolCallStartInput(
            ex.run_id, step_id, attempt, tool.name, tool_call_id, args))
        try:
            result = await ex.invoke(info, tool.fn, (), kwargs, is_async=tool.is_async,
                                     handle=handle)
        except BaseException as exc:
            ic.tool_call_ended(ToolCallEndInput(handle, error=exc))
            raise
        ic.tool_call_ended(ToolCallEndInput(handle, result=result))
        return result

    return await guarded_call(
        ex, name=f"tool:{tool.name}",
        candidates=[Candidate(key=f"tool:{tool.name}", call=call)],
        # Its bulkhead (when its policy has one) is the tool's own: calls of one tool
        # share its slots, another tool's do not take them.
        policy=ex.engine.effective_policy(tool.policy, policy), pool=f"tool:{tool.name}",
        encode_result=lambda v: encode(v, tp, what=f"result of tool {tool.name!r}"),
        decode_result=lambda text: decode(text, tp), check=check, reject_failed_check=True)
