"""The step machinery: begin a step, replay its record or run it, journal its outcome.

Every kind of step goes the same way. :func:`begin` gives it the next id of the calling
scope and asks the journal: a step with a recorded outcome returns it (:func:`replayed`:
its result, or its error raised again) without running anything — and without yielding
to the event loop, so a branch replays its whole recorded prefix at once. A step the
journal does not have (or a recorded wait that goes on) goes live
(:meth:`Execution.go_live`, where the non-determinism detector is asked first), runs,
and journals its outcome (:func:`record_value`, :func:`record_failure`). The value a
step returns is the one a replay will read back, so both executions see the same.

Here are the plain steps (``ctx.step``, ``now``/``random``/``uuid``, ``sleep``,
``wait_for_signal``, the ``patched`` markers); calls behind the policy stack
(:mod:`._calls`, :mod:`._llm`), child runs (:mod:`._children`) and gathers
(:mod:`._gather`) are built on the same functions. They take the run's
:class:`~stalwart.engine._execution.Execution`: this is the engine's step API, which
:class:`stalwart.Context` puts a typed face on and which :mod:`stalwart.patterns` and
:class:`stalwart.Agent` use.
"""

from __future__ import annotations

import json
import math
import uuid as uuid_mod
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .._serde import (
    ErrorInfo,
    decode,
    encode_and_read,
    encode_error,
    raised_as_replayed,
    rebuild_error,
    return_type,
)
from ..errors import (
    ConfigurationError,
    ContextMisuseError,
    LeaseLostError,
    OutcomeCheckError,
    SerializationError,
    SignalTimeoutError,
    StalwartError,
    StoreError,
)
from ..store._base import STEP_TIMED_AFTER, Event, EventKind, NewEvent, RunStatus
from ._execution import Execution
from ._scope import StepInfo, callable_name, current_scope, is_async, outcome_problem, running_step

__all__ = ["PATCH_PREFIX", "begin", "deprecate_patch", "now", "patched", "random",
           "record_failure", "record_value", "recorded_outcome",
           "recorded_value", "replayed", "run_step", "sleep", "timed", "uuid",
           "wait_for_signal"]

T = TypeVar("T")

_OUTCOMES = (EventKind.STEP_COMPLETED, EventKind.STEP_FAILED)


def begin(ex: Execution, name: str) -> tuple[str, list[Event] | None]:
    """The next step of the calling scope, named ``name``: its id and what the journal
    holds of it (``None``: nothing). A recorded step under another name is a
    divergence (:class:`~stalwart.NonDeterminismError`)."""
    _check_usable(ex)
    # A cancel is raised where a step would go live (Execution.go_live), not here: a
    # replay walks the recorded steps to the same place as the first execution.
    step_id = current_scope(ex.root_scope).next_id()
    recorded = ex.recorded.get(step_id)
    if recorded is not None:
        history = ex.history
        assert history is not None  # a journal with records has a history
        history.visit(step_id)
        err = history.check_name(step_id, name)
        if err is not None:
            raise ex.diverged(err)
    return step_id, recorded


def _check_usable(ex: Execution) -> None:
    """The workflow context may be used here: not inside a step, not after the end."""
    inside = running_step()
    if inside is not None:
        raise ContextMisuseError(
            f"run {ex.run_id}: the workflow context cannot be used inside a step "
            f"(step {inside.step_id}); steps are leaves")
    if ex.finished:
        raise ContextMisuseError(f"run {ex.run_id} has ended; its context is closed")


def recorded_outcome(recorded: Sequence[Event] | None) -> Event | None:
    """The recorded outcome (completed or failed) among a step's events, if any."""
    if recorded:
        for ev in reversed(recorded):
            if ev.kind in _OUTCOMES:
                return ev
    return None


def replayed(ex: Execution, step_id: str, outcome: Event, tp: Any) -> Any:
    """A recorded outcome: its result read back as ``tp``, or its error raised again."""
    if outcome.kind == EventKind.STEP_COMPLETED:
        return decode(outcome.payload or "null", tp, what=f"step {step_id} result")
    info = ErrorInfo.from_json(outcome.payload or "{}")
    raise rebuild_error(info, run_id=ex.run_id, step_id=step_id)


async def record_value(ex: Execution, step_id: str, name: str, value: Any, tp: Any,
                       timed: list[NewEvent] | None = None) -> Any:
    """Journal a step's result (as ``tp``); returns it as a replay will read it back."""
    try:
        text, read = encode_and_read(value, tp, what=f"result of step {name!r} ({step_id})")
    except SerializationError as exc:
        raise await record_failure(ex, step_id, name, exc, timed) from exc.__cause__
    await ex.record(
        [*(timed or ()), NewEvent(EventKind.STEP_COMPLETED, step_id, name, text)])
    return read


async def record_failure(ex: Execution, step_id: str, name: str, exc: BaseException,
                         timed: list[NewEvent] | None = None) -> BaseException:
    """Journal a step's failure; returns what to raise: what a replay will raise (a
    stalwart error that named no step is located at this one first)."""
    if isinstance(exc, StalwartError):
        exc = exc.located(run_id=ex.run_id, step_id=step_id)
    info = encode_error(exc)
    await ex.record([*(timed or ()), NewEvent(
        EventKind.STEP_FAILED, step_id, name, info.to_json())])
    return raised_as_replayed(exc, info, run_id=ex.run_id, step_id=step_id)


def timed(ex: Execution, step_id: str, name: str, started_at: float,
          since: float) -> list[NewEvent]:
    """The ``step_timed`` event of a plain step that began at ``started_at`` (wall)
    and ``since`` (monotonic), if it took long enough to be worth a row: a step's
    start is otherwise only inferred (after the step before it), and trivial steps,
    the many, cost nothing more."""
    took = ex.clock.monotonic() - since
    if took < STEP_TIMED_AFTER:
        return []
    return [NewEvent(EventKind.STEP_TIMED, step_id, name, json.dumps(
        {"started_at": started_at, "duration": took}))]


async def run_step(ex: Execution, fn: Callable[..., Any], args: tuple[Any, ...],
                   kwargs: dict[str, Any], *, name: str | None = None,
                   check: Callable[[Any], object] | None = None) -> Any:
    """``ctx.step(fn, *args, name=, check=, **kwargs)``: see :meth:`stalwart.Context.step`."""
    step_name = name or callable_name(fn)
    step_id, recorded = begin(ex, step_name)
    tp = return_type(fn)
    outcome = recorded_outcome(recorded)
    if outcome is not None:
        return replayed(ex, step_id, outcome, tp)
    ex.go_live(step_id, step_name)
    info = StepInfo(ex.run_id, step_id, step_name, attempt=1, fencing_token=ex.lease.token)
    started_at, since = ex.clock.now(), ex.clock.monotonic()
    try:
        result = await ex.invoke(info, fn, args, kwargs, is_async=is_async(fn))
    except (LeaseLostError, StoreError):
        raise
    except Exception as exc:
        raise await record_failure(  # noqa: B904 (what a replay raises)
            ex, step_id, step_name, exc, timed(ex, step_id, step_name, started_at, since))
    took = timed(ex, step_id, step_name, started_at, since)
    if check is not None:
        problem = outcome_problem(check, result)
        if problem is not None:
            key = f"step:{step_name}"
            err = OutcomeCheckError(
                f"step {step_name!r} ({step_id}): its result failed the check: {problem}",
                key=key, reason=problem, run_id=ex.run_id, step_id=step_id)
            ex.engine.note_policy(ex.run_id, step_id, "check_failed", key)
            await record_failure(ex, step_id, step_name, err, took)
            raise err
    return await record_value(ex, step_id, step_name, result, tp, took)


async def recorded_value(ex: Execution, name: str, make: Callable[[], T]) -> T:
    """A step named ``name`` whose value is ``make()`` the first time, journaled: a
    replay returns the recorded one (``now``, ``random``, ``uuid``, cleanup marks)."""
    step_id, recorded = begin(ex, name)
    outcome = recorded_outcome(recorded)
    if outcome is not None:
        return replayed(ex, step_id, outcome, Any)  # type: ignore[no-any-return]
    ex.go_live(step_id, name)
    return await record_value(ex, step_id, name, make(), Any)  # type: ignore[no-any-return]


async def now(ex: Execution) -> float:
    return float(await recorded_value(ex, "stalwart.now", ex.clock.now))


async def random(ex: Execution) -> float:
    return float(await recorded_value(ex, "stalwart.random", ex.rng.random))


async def uuid(ex: Execution) -> uuid_mod.UUID:
    text = await recorded_value(
        ex, "stalwart.uuid",
        lambda: str(uuid_mod.UUID(int=ex.rng.getrandbits(128), version=4)))
    return uuid_mod.UUID(text)


PATCH_PREFIX = "stalwart.patch:"
"""A change's marker step is named ``stalwart.patch:{change_id}``."""


def _patch_marker(ex: Execution, change_id: object) -> tuple[str, bool]:
    """The marker's step name, and whether the journal holds it at the next step of the
    calling scope (read without taking the step)."""
    if not isinstance(change_id, str) or not change_id or not change_id.isprintable() or (
            len(change_id) > 200):
        raise ConfigurationError(f"a change id is printable text of 1 to 200 characters, "
                                 f"not {change_id!r}")
    _check_usable(ex)
    name = PATCH_PREFIX + change_id
    step_id = current_scope(ex.root_scope).peek()
    return name, (step_id in ex.recorded and ex.history is not None
                  and ex.history.names.get(step_id) == name)


async def patched(ex: Execution, change_id: str) -> bool:
    """``ctx.patched``: see :meth:`stalwart.Context.patched`. Where the run's journal
    already holds a step here, the run went that way before: the marker (the changed
    code, ``True``) or anything else (the code before the change, ``False``, taking no
    step). At the end of the journal the change applies: the marker is journaled (one
    step) so that a replay takes the same way."""
    name, marked = _patch_marker(ex, change_id)
    step_id = current_scope(ex.root_scope).peek()
    if marked:
        begin(ex, name)
        return True
    if step_id in ex.recorded:
        return False
    await recorded_value(ex, name, lambda: True)
    return True


def deprecate_patch(ex: Execution, change_id: str) -> None:
    """``ctx.deprecate_patch``: take the change's marker if the journal holds it here
    (a run made while ``patched`` was in the code), else nothing; journals nothing."""
    name, marked = _patch_marker(ex, change_id)
    if marked:
        begin(ex, name)


async def sleep(ex: Execution, seconds: float) -> None:
    """``ctx.sleep``: the wake-up time is journaled; a long sleep parks the run."""
    if not 0 <= seconds < math.inf:  # NaN too: it compares false with everything
        raise ValueError(f"sleep() needs a finite, non-negative number of seconds, "
                         f"not {seconds!r}")
    step_id, recorded = begin(ex, "stalwart.sleep")
    if recorded:
        wake_at = float(json.loads(recorded[0].payload or "{}")["wake_at"])
    else:
        ex.go_live(step_id, "stalwart.sleep")
        wake_at = ex.clock.now() + seconds
        await ex.record([NewEvent(EventKind.TIMER_STARTED, step_id, "stalwart.sleep",
                                  json.dumps({"wake_at": wake_at, "seconds": seconds}))])
    await ex.wait_until(wake_at, RunStatus.SLEEPING)


async def wait_for_signal(ex: Execution, name: str, timeout: float | None) -> Any:
    """``ctx.wait_for_signal``: see :meth:`stalwart.Context.wait_for_signal`."""
    if timeout is not None and not 0 <= timeout < math.inf:
        raise ValueError(f"wait_for_signal() needs a finite, non-negative timeout in "
                         f"seconds or None, not {timeout!r}")
    step_name = f"signal:{name}"
    step_id, recorded = begin(ex, step_name)

    def timed_out() -> SignalTimeoutError:
        return SignalTimeoutError(f"run {ex.run_id}: no signal {name!r} within {timeout}s",
                                  signal=name, run_id=ex.run_id, step_id=step_id)

    for ev in recorded or ():
        if ev.kind == EventKind.SIGNAL_RECEIVED:
            return decode(ev.payload or "null")
        if ev.kind == EventKind.SIGNAL_TIMED_OUT:
            raise timed_out()
    ex.go_live(step_id, step_name)  # a new wait, or a recorded one going on
    if recorded:
        deadline = json.loads(recorded[0].payload or "{}").get("deadline")
    else:
        deadline = None if timeout is None else ex.clock.now() + timeout
        await ex.record([NewEvent(EventKind.SIGNAL_WAIT_STARTED, step_id, step_name,
                                  json.dumps({"deadline": deadline}))])
    since = ex.clock.monotonic()
    while True:
        payload = await ex.take_signal(name, step_id)
        if payload is not None:
            return decode(payload)
        if deadline is not None and ex.clock.now() >= deadline:
            await ex.record([NewEvent(EventKind.SIGNAL_TIMED_OUT, step_id, step_name)])
            raise timed_out()
        await ex.wait_for_wakeup(deadline, since)
