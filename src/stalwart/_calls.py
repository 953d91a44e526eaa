"""Journaled calls behind the policy stack.

A model or tool call is one step. Inside it, the policies run in this order (docs/design.md),
outermost first::

    Fallback(chain of candidates) → Retry → CircuitBreaker → RateLimit → Bulkhead
        → Timeout → call

Every failed attempt is journaled (``attempt_failed``, with the error and the time the
next attempt may start), so a crash in the middle of a backoff neither resets the
attempt count nor calls the provider before its ``Retry-After`` has passed: on resume
the step waits out the recorded backoff (parking the run if it is long) and continues
with the next attempt number. The decision what to do after a failure comes from the
pure core :func:`stalwart.policies.decide`; this module only carries it out.

Outermost of all sits the run's :class:`~stalwart.Budget`: checked before every attempt,
fed with each settled call's usage. A call's timing (wall-clock start, duration of the
last attempt, attempts) is journaled as ``call_timed`` in the same append as its outcome,
and each failed attempt's payload carries its ``duration``: latency statistics read
them, at no extra commit. An outcome ``check`` that fails is a semantic failure: it
counts against the dependency's breaker like an error.

Why not :func:`stalwart.policies.call_with_retry`: its loop keeps its state in memory,
and here each decision must be journaled before it is acted on.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ._context import StepInfo, bind_step_context, outcome_problem, unbind_step_context
from ._policy import Policy
from ._serde import ErrorInfo, encode_error, rebuild_error
from .errors import (
    BudgetExceededError,
    CircuitOpenError,
    ConfigurationError,
    FallbackExhaustedError,
    LeaseLostError,
    OutcomeCheckError,
    ResilienceError,
    RetryExhaustedError,
    SerializationError,
    StalwartError,
    StoreError,
)
from .policies import Attempt, GiveUp, RetryState, Sleep, decide, remaining, with_timeout
from .store._base import EventKind, NewEvent, RunStatus

if TYPE_CHECKING:
    from ._context import Context

__all__ = ["Candidate", "guarded_call"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Candidate:
    """One way to make the call: a dependency key and a function of (step id, attempt)."""

    key: str
    call: Callable[[str, int], Awaitable[Any]]
    estimate_tokens: int = 0
    actual_tokens: Callable[[Any], int] | None = None


@dataclass(frozen=True, slots=True)
class _Prior:
    candidate: int
    attempt: int
    at: float
    retry_at: float | None
    next: str
    error: ErrorInfo


def _priors(events: Sequence[Any], after_seq: int) -> list[_Prior]:
    out = []
    for ev in events:
        if ev.kind != EventKind.ATTEMPT_FAILED or ev.seq <= after_seq:
            continue
        d = json.loads(ev.payload or "{}")
        out.append(_Prior(candidate=int(d["candidate"]), attempt=int(d["attempt"]),
                          at=float(d["at"]), retry_at=d.get("retry_at"), next=str(d["next"]),
                          error=ErrorInfo.from_json(json.dumps(d["error"]))))
    return out


def _is_local_limit(exc: BaseException) -> bool:
    """Our own limits (bulkhead full, throttled) say nothing about the dependency, nor
    does our journal (a lost lease: the call's fence refused it before it was made)."""
    return isinstance(exc, StoreError) or (
        isinstance(exc, ResilienceError) and not isinstance(exc, RetryExhaustedError))


async def guarded_call(
    ctx: Context,
    *,
    name: str,
    candidates: Sequence[Candidate],
    policy: Policy,
    pool: str | None,
    encode_result: Callable[[Any], str],
    decode_result: Callable[[str], Any],
    check: Callable[[Any], object] | None = None,
    reject_failed_check: bool = False,
) -> Any:
    """Make the call as one journaled step under ``policy``; see the module docstring.

    ``check`` is an outcome check on a successful result. A result that fails it counts
    as a failure for the candidate's breaker; with ``reject_failed_check`` the attempt
    fails (:class:`OutcomeCheckError`, retried like an error), otherwise the result is
    kept and a ``check_failed`` event is journaled with it (an agent re-asks instead).
    """
    ex = ctx._ex
    runtime = ex.runtime
    clock = ex.clock
    step_id, recorded = ctx._begin(name)
    outcome = ctx._outcome(recorded)
    if outcome is not None:
        if outcome.kind == EventKind.STEP_COMPLETED:
            value = decode_result(outcome.payload or "null")
            ex.budget.settled(value, live=False)
            return value
        ex.budget.settled(None, live=False)
        raise rebuild_error(ErrorInfo.from_json(outcome.payload or "{}"),
                            run_id=ex.run_id, step_id=step_id)
    ex.go_live(step_id, name)
    started_at = clock.now()
    priors = _priors(recorded or (), ex.redriven_after(step_id))
    retry = policy.retry_policy
    timeout = policy.timeout_policy
    per_attempt = timeout.per_attempt if timeout is not None else None
    bulkhead = (runtime.bulkheads.get(pool, policy.bulkhead_config)
                if pool is not None and policy.bulkhead_config is not None else None)

    start = 0
    if priors:
        last = priors[-1]
        start = last.candidate + (1 if last.next == "fallback" else 0)
        if last.retry_at is not None and last.next == "retry":
            await ex.wait_until(float(last.retry_at), RunStatus.SLEEPING)
    errors: list[BaseException] = [rebuild_error(p.error) for p in priors]
    state = RetryState(attempt=len(priors), first_attempt_at=clock.now())

    async def fail(err: BaseException, *, attempt: int, ci: int, nxt: str,
                   retry_at: float | None = None, duration: float | None = None,
                   at: float | None = None) -> None:
        await ex.record([NewEvent(EventKind.ATTEMPT_FAILED, step_id, name, json.dumps({
            "candidate": ci, "attempt": attempt, "at": clock.now() if at is None else at,
            "next": nxt,
            "retry_at": retry_at, "key": candidates[ci].key, "duration": duration,
            "error": json.loads(encode_error(err).to_json())}))])

    async def settle_failed(exc: BaseException) -> None:
        await _record_failure(ctx, step_id, name, exc)
        ex.budget.settled(None, live=True)

    for ci in range(start, len(candidates)):
        cand = candidates[ci]
        mine = [p for p in priors if p.candidate == ci]
        state = RetryState(attempt=len(mine),
                           first_attempt_at=mine[0].at if mine else clock.now())
        breaker = (runtime.breakers.get(cand.key, policy.breaker_config)
                   if policy.breaker_config is not None else None)
        limiter = (runtime.rate_limiters.get(cand.key, policy.rate_limit_config)
                   if policy.rate_limit_config is not None else None)
        more = ci + 1 < len(candidates)
        if retry is not None:
            decision = decide(retry, state, None, clock.now(), ex.rng)
        else:
            decision = Attempt(1) if not mine else GiveUp("no retry policy", exhausted=True)
        while isinstance(decision, Attempt):
            number = decision.number
            try:
                ex.budget.check(step_id, cand.key)
            except (BudgetExceededError, ConfigurationError) as exc:
                await _record_failure(ctx, step_id, name, exc)
                raise
            state = state.started()
            semantic: OutcomeCheckError | None = None
            t_call: float | None = None
            try:
                if breaker is not None:
                    breaker.acquire()
                t0 = clock.monotonic()
                try:
                    if limiter is not None:
                        await limiter.acquire(cand.estimate_tokens)
                    if bulkhead is not None:
                        await bulkhead.acquire()
                    token = bind_step_context(StepInfo(ex.run_id, step_id, name, number,
                                                       ex.lease.token))
                    try:
                        # The call is an effect: not after a takeover. Checked after the
                        # limiter's and bulkhead's waits, outside the call's own timeout.
                        await ex.fence()
                        t_call = clock.monotonic()
                        result = await with_timeout(cand.call(step_id, number), per_attempt,
                                                    clock=clock)
                    finally:
                        unbind_step_context(token)
                        if bulkhead is not None:
                            bulkhead.release()
                    problem = outcome_problem(check, result) if check is not None else None
                    if problem is not None:
                        semantic = OutcomeCheckError(
                            f"step {name!r} ({step_id}): the result of {cand.key} failed its "
                            f"check: {problem}", key=cand.key, reason=problem,
                            run_id=ex.run_id, step_id=step_id, attempt=number)
                        runtime.note_policy(ex.run_id, step_id, "check_failed", cand.key)
                        if reject_failed_check:
                            raise semantic
                except BaseException as exc:
                    if breaker is not None:
                        if isinstance(exc, Exception) and not _is_local_limit(exc):
                            breaker.on_error(clock.monotonic() - t0, exc)
                        else:
                            breaker.release()
                    raise
                if breaker is not None:
                    if semantic is not None:
                        breaker.on_error(clock.monotonic() - t0, semantic)
                    else:
                        breaker.on_success(clock.monotonic() - t0)
                if limiter is not None and cand.actual_tokens is not None:
                    limiter.settle(cand.estimate_tokens, cand.actual_tokens(result))
            except (LeaseLostError, StoreError):
                raise
            except CircuitOpenError as exc:
                errors.append(exc)
                await fail(exc, attempt=number, ci=ci, nxt="fallback" if more else "fail")
                runtime.note_policy(ex.run_id, step_id, "breaker_rejected", cand.key)
                break
            except Exception as exc:
                took = None if t_call is None else clock.monotonic() - t_call
                state = state.failed(exc)
                # One reading of the clock: the retry is due decision.seconds after the
                # failure the journal records (two readings put a short backoff's retry
                # before its failure).
                now = clock.now()
                if retry is not None:
                    decision = decide(retry, state, exc, now, ex.rng,
                                      deadline_remaining=remaining())
                else:
                    decision = GiveUp("no retry policy",
                                      exhausted=bool(getattr(exc, "retryable", False)))
                if isinstance(decision, Sleep):
                    retry_at = now + decision.seconds
                    await fail(exc, attempt=number, ci=ci, nxt="retry", retry_at=retry_at,
                               duration=took, at=now)
                    runtime.note_policy(ex.run_id, step_id, "retried", cand.key)
                    await ex.wait_until(retry_at, RunStatus.SLEEPING)
                    decision = Attempt(decision.next_attempt)
                    continue
                assert isinstance(decision, GiveUp)
                errors.append(exc)
                if not decision.exhausted:
                    await fail(exc, attempt=number, ci=ci, nxt="fail", duration=took)
                    await settle_failed(exc)
                    raise
                await fail(exc, attempt=number, ci=ci, nxt="fallback" if more else "fail",
                           duration=took)
                break
            else:
                try:
                    text = encode_result(result)
                except SerializationError as exc:
                    await settle_failed(exc)
                    raise
                if ci > 0:
                    runtime.note_policy(ex.run_id, step_id, "fallback_answered", cand.key)
                took = clock.monotonic() - (t_call if t_call is not None else t0)
                events = [NewEvent(EventKind.CALL_TIMED, step_id, name, json.dumps({
                    "started_at": started_at, "duration": took, "attempts": number,
                    "key": cand.key})),
                    NewEvent(EventKind.STEP_COMPLETED, step_id, name, text)]
                if semantic is not None:
                    events.insert(0, NewEvent(EventKind.CHECK_FAILED, step_id, name, json.dumps({
                        "key": cand.key, "attempt": number, "error": "OutcomeCheckError",
                        "reason": semantic.reason})))
                await ex.record(events)
                ex.budget.settled(result, live=True)
                return decode_result(text)
        if more:
            runtime.note_policy(ex.run_id, step_id, "fallback", candidates[ci + 1].key)

    final = errors[-1] if errors else None
    err: StalwartError
    if len(candidates) > 1:
        err = FallbackExhaustedError(
            f"step {name!r} ({step_id}): every candidate failed: "
            + "; ".join(f"{type(e).__name__}: {e}" for e in errors[-len(candidates):]),
            keys=tuple(c.key for c in candidates), run_id=ex.run_id, step_id=step_id)
    else:
        err = RetryExhaustedError(
            f"step {name!r} ({step_id}) gave up after {state.attempt} attempt(s): "
            f"{type(final).__name__}: {final}", attempts=state.attempt,
            errors=tuple(errors), reason="attempts exhausted", run_id=ex.run_id,
            step_id=step_id)
    await settle_failed(err)
    if final is not None:
        raise err from final
    raise err


async def _record_failure(ctx: Context, step_id: str, name: str, exc: BaseException) -> None:
    if isinstance(exc, StalwartError) and exc.step_id is None:
        exc.step_id = step_id
        exc.run_id = ctx._ex.run_id
    await ctx._record_failure(step_id, name, exc)
