"""Journaled calls behind the policy stack.

A model or tool call is one step. Inside it, the policies run in the order DESIGN.md
gives, outermost first::

    Fallback(chain of candidates) → Retry → CircuitBreaker → RateLimit → Bulkhead
        → Timeout → call

Every failed attempt is journaled (``attempt_failed``, with the error and the time the
next attempt may start), so a crash in the middle of a backoff neither resets the
attempt count nor calls the provider before its ``Retry-After`` has passed: on resume
the step waits out the recorded backoff (parking the run if it is long) and continues
with the next attempt number. The decision what to do after a failure comes from the
pure core :func:`stalwart.policies.decide`; this module only carries it out.

Why not :func:`stalwart.policies.call_with_retry`: its loop keeps its state in memory,
and here each decision must be journaled before it is acted on.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ._context import StepInfo, bind_step_context, unbind_step_context
from ._policy import Policy
from ._serde import ErrorInfo, encode_error, rebuild_error
from .errors import (
    CircuitOpenError,
    FallbackExhaustedError,
    LeaseLostError,
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
    """Our own limits (bulkhead full, throttled) say nothing about the dependency."""
    return isinstance(exc, ResilienceError) and not isinstance(exc, RetryExhaustedError)


async def guarded_call(
    ctx: Context,
    *,
    name: str,
    candidates: Sequence[Candidate],
    policy: Policy,
    pool: str | None,
    encode_result: Callable[[Any], str],
    decode_result: Callable[[str], Any],
) -> Any:
    """Make the call as one journaled step under ``policy``; see the module docstring."""
    ex = ctx._ex
    runtime = ex.runtime
    clock = ex.clock
    step_id, recorded = ctx._begin(name)
    outcome = ctx._outcome(recorded)
    if outcome is not None:
        if outcome.kind == EventKind.STEP_COMPLETED:
            return decode_result(outcome.payload or "null")
        raise rebuild_error(ErrorInfo.from_json(outcome.payload or "{}"),
                            run_id=ex.run_id, step_id=step_id)
    ex.replaying = False
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
                   retry_at: float | None = None) -> None:
        await ex.record([NewEvent(EventKind.ATTEMPT_FAILED, step_id, name, json.dumps({
            "candidate": ci, "attempt": attempt, "at": clock.now(), "next": nxt,
            "retry_at": retry_at, "key": candidates[ci].key,
            "error": json.loads(encode_error(err).to_json())}))])

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
            state = state.started()
            try:
                if breaker is not None:
                    breaker.acquire()
                t0 = clock.monotonic()
                try:
                    if limiter is not None:
                        await limiter.acquire(cand.estimate_tokens)
                    if bulkhead is not None:
                        await bulkhead.acquire()
                    token = bind_step_context(StepInfo(ex.run_id, step_id, name, number))
                    try:
                        result = await with_timeout(cand.call(step_id, number), per_attempt,
                                                    clock=clock)
                    finally:
                        unbind_step_context(token)
                        if bulkhead is not None:
                            bulkhead.release()
                except BaseException as exc:
                    if breaker is not None:
                        if isinstance(exc, Exception) and not _is_local_limit(exc):
                            breaker.on_error(clock.monotonic() - t0, exc)
                        else:
                            breaker.release()
                    raise
                if breaker is not None:
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
                state = state.failed(exc)
                if retry is not None:
                    decision = decide(retry, state, exc, clock.now(), ex.rng,
                                      deadline_remaining=remaining())
                else:
                    decision = GiveUp("no retry policy",
                                      exhausted=bool(getattr(exc, "retryable", False)))
                if isinstance(decision, Sleep):
                    retry_at = clock.now() + decision.seconds
                    await fail(exc, attempt=number, ci=ci, nxt="retry", retry_at=retry_at)
                    runtime.note_policy(ex.run_id, step_id, "retried", cand.key)
                    await ex.wait_until(retry_at, RunStatus.SLEEPING)
                    decision = Attempt(decision.next_attempt)
                    continue
                assert isinstance(decision, GiveUp)
                errors.append(exc)
                if not decision.exhausted:
                    await fail(exc, attempt=number, ci=ci, nxt="fail")
                    await _record_failure(ctx, step_id, name, exc)
                    raise
                await fail(exc, attempt=number, ci=ci, nxt="fallback" if more else "fail")
                break
            else:
                try:
                    text = encode_result(result)
                except SerializationError as exc:
                    await _record_failure(ctx, step_id, name, exc)
                    raise
                if ci > 0:
                    runtime.note_policy(ex.run_id, step_id, "fallback_answered", cand.key)
                await ex.record([NewEvent(EventKind.STEP_COMPLETED, step_id, name, text)])
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
    await _record_failure(ctx, step_id, name, err)
    if final is not None:
        raise err from final
    raise err


async def _record_failure(ctx: Context, step_id: str, name: str, exc: BaseException) -> None:
    if isinstance(exc, StalwartError) and exc.step_id is None:
        exc.step_id = step_id
        exc.run_id = ctx._ex.run_id
    await ctx._record_failure(step_id, name, exc)
