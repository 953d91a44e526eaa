"""The workflow context: the only door to non-determinism.

Every call on :class:`Context` is a *step* with a deterministic, hierarchical step id.
Top-level steps are numbered ``1, 2, 3, ...``; branch ``i`` of a ``gather`` at step ``5``
numbers its own steps ``5/i/1, 5/i/2, ...``, so ids never depend on which branch finishes
first. A branch's scope travels in a ``ContextVar`` set inside the branch task, so a
coroutine created with the parent context (``agent.run(ctx, ...)``) still numbers its
steps inside the branch that awaits it.

Replay: when a step id already has an outcome in the journal, the call returns the
recorded result (or re-raises the recorded error) without running anything — and without
yielding to the event loop, so a branch replays its whole recorded prefix at once. Code
that no longer fits the journal (a step recorded under another name at the same id, a
step where the journal shows nothing was, a recorded step left out) raises
:class:`NonDeterminismError` before the step runs (:mod:`stalwart.engine._determinism`).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import json
import math
import uuid as uuid_mod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, final, overload

from ._serde import (
    ErrorInfo,
    decode,
    encode,
    encode_and_read,
    encode_error,
    raised_as_replayed,
    rebuild_error,
    return_type,
)
from .engine._determinism import is_provisional
from .errors import (
    Cancelled,
    ContextMisuseError,
    LeaseLostError,
    OutcomeCheckError,
    RunCancelledError,
    RunFailedError,
    SerializationError,
    SignalTimeoutError,
    StoreError,
)
from .store._base import (
    STEP_TIMED_AFTER,
    TERMINAL_STATUSES,
    Event,
    EventKind,
    NewEvent,
    RunStatus,
)

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from .engine._cancel import CleanupScope
    from .engine._children import ChildOutcome, ChildRun
    from .engine._execution import Execution
    from .engine._policy import Policy
    from .engine._tools import Tool
    from .engine._workflow import Workflow
    from .models import Message, Model, ModelOptions
    from .patterns._saga import Saga
    from .patterns._supervisor import ChildSpec, Strategy

    Prompt = str | Message | Sequence[Message | str]

__all__ = ["Context", "StepInfo", "current_step"]

T = TypeVar("T")

_OUTCOMES = (EventKind.STEP_COMPLETED, EventKind.STEP_FAILED)


class Suspend(BaseException):
    """Parks the run: its task ends, the run waits in the store until ``wake_at``."""

    def __init__(self, status: RunStatus, wake_at: float | None) -> None:
        super().__init__(status, wake_at)
        self.status = status
        self.wake_at = wake_at


@dataclass(slots=True)
class _Scope:
    prefix: str
    counter: int = 0

    def next_id(self) -> str:
        self.counter += 1
        return f"{self.prefix}/{self.counter}" if self.prefix else str(self.counter)


@final
@dataclass(frozen=True, slots=True)
class StepInfo:
    """What the code running inside a step knows about it.

    ``idempotency_key`` is ``"{run_id}:{step_id}"``: identical on every retry of the step
    and after a crash and resume, so an external service can deduplicate the effect.

    ``fencing_token`` is the number of the run's lease under which this execution runs
    the step. Every claim of the run (a resume, a takeover) makes a larger one, and the
    engine stops an execution whose lease was taken over before its next step. Code
    already *inside* a step when its process paused cannot be stopped that way: send the
    token with the effect, and a service that keeps the largest token it has seen per
    idempotency key can refuse a smaller one (a fencing token, as in Kleppmann's
    argument about distributed locks). See "Fencing" in docs/design.md.

    .. versionadded:: 0.1.0 ``fencing_token``
    """

    run_id: str
    step_id: str
    name: str
    attempt: int
    fencing_token: int

    @property
    def idempotency_key(self) -> str:
        return f"{self.run_id}:{self.step_id}"


_scope_var: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar(
    "stalwart_scope", default=None)
_step_var: contextvars.ContextVar[StepInfo | None] = contextvars.ContextVar(
    "stalwart_step", default=None)


def current_step() -> StepInfo:
    """The step the calling code runs in (inside ``ctx.step`` functions and tools).

    Raises:
        ContextMisuseError: called outside a step.
    """
    info = _step_var.get()
    if info is None:
        raise ContextMisuseError("current_step() is only available inside a step")
    return info


def outcome_problem(check: Callable[[Any], object], value: Any) -> str | None:
    """Run an outcome check: ``None`` when ``value`` passes, else what was wrong.

    The check fails by returning ``False`` or a non-empty string (the reason), or by
    raising; ``True`` and ``None`` pass."""
    try:
        verdict = check(value)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    if verdict is False:
        return f"{_callable_name(check)} returned False"
    if isinstance(verdict, str) and verdict:
        return verdict
    return None


def _callable_name(fn: Any) -> str:
    target = fn.func if isinstance(fn, functools.partial) else fn
    return str(getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
               or type(target).__name__)


def _is_async(fn: Any) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - async callable objects
    return call is not None and inspect.iscoroutinefunction(call)


@final
class Context:
    """Handed to every workflow function; all of its effects go through here."""

    __slots__ = ("_ex",)

    def __init__(self, execution: Execution) -> None:
        self._ex = execution

    # -- facts -----------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        return self._ex.run_id

    @property
    def workflow_name(self) -> str:
        return self._ex.workflow.name

    @property
    def is_replaying(self) -> bool:
        """True while the run is re-reading recorded steps rather than running new ones."""
        return self._ex.replaying

    # -- the step machinery ----------------------------------------------------------

    def _begin(self, name: str) -> tuple[str, list[Event] | None]:
        ex = self._ex
        if _step_var.get() is not None:
            raise ContextMisuseError(
                f"run {ex.run_id}: the workflow context cannot be used inside a step "
                f"(step {_step_var.get().step_id}); steps are leaves"  # type: ignore[union-attr]
            )
        if ex.finished:
            raise ContextMisuseError(f"run {ex.run_id} has ended; its context is closed")
        # A cancel is raised where a step would go live (Execution.go_live), not here: a
        # replay walks the recorded steps to the same place as the first execution.
        scope = _scope_var.get() or ex.root_scope
        step_id = scope.next_id()
        recorded = ex.recorded.get(step_id)
        if recorded is not None:
            history = ex.history
            assert history is not None  # a journal with records has a history
            history.visit(step_id)
            err = history.check_name(step_id, name)
            if err is not None:
                raise ex.diverged(err)
        return step_id, recorded

    @staticmethod
    def _outcome(recorded: Sequence[Event] | None) -> Event | None:
        if recorded:
            for ev in reversed(recorded):
                if ev.kind in _OUTCOMES:
                    return ev
        return None

    def _replay_outcome(self, step_id: str, outcome: Event, tp: Any) -> Any:
        if outcome.kind == EventKind.STEP_COMPLETED:
            return decode(outcome.payload or "null", tp, what=f"step {step_id} result")
        info = ErrorInfo.from_json(outcome.payload or "{}")
        raise rebuild_error(info, run_id=self._ex.run_id, step_id=step_id)

    async def _record_value(self, step_id: str, name: str, value: Any, tp: Any,
                            timed: list[NewEvent] | None = None) -> Any:
        try:
            text, read = encode_and_read(value, tp, what=f"result of step {name!r} ({step_id})")
        except SerializationError as exc:
            exc.run_id, exc.step_id = self._ex.run_id, step_id
            await self._record_failure(step_id, name, exc, timed)
            raise
        await self._ex.record(
            [*(timed or ()), NewEvent(EventKind.STEP_COMPLETED, step_id, name, text)])
        return read  # as a replay reads it back

    async def _record_failure(self, step_id: str, name: str, exc: BaseException,
                              timed: list[NewEvent] | None = None) -> BaseException:
        """Journal the step's failure; returns what to raise: what a replay will raise."""
        info = encode_error(exc)
        await self._ex.record([*(timed or ()), NewEvent(
            EventKind.STEP_FAILED, step_id, name, info.to_json())])
        return raised_as_replayed(exc, info, run_id=self._ex.run_id, step_id=step_id)

    def _timed(self, step_id: str, name: str, started_at: float,
               since: float) -> list[NewEvent]:
        """The ``step_timed`` event of a plain step that began at ``started_at`` (wall)
        and ``since`` (monotonic), if it took long enough to be worth a row: a step's
        start is otherwise only inferred (after the step before it), and trivial steps,
        the many, cost nothing more."""
        took = self._ex.clock.monotonic() - since
        if took < STEP_TIMED_AFTER:
            return []
        return [NewEvent(EventKind.STEP_TIMED, step_id, name, json.dumps(
            {"started_at": started_at, "duration": took}))]

    # -- steps -----------------------------------------------------------------------

    @overload
    async def step(self, fn: Callable[..., Awaitable[T]], /, *args: Any, name: str | None = None,
                   check: Callable[[T], object] | None = None, **kwargs: Any) -> T: ...

    @overload
    async def step(self, fn: Callable[..., T], /, *args: Any, name: str | None = None,
                   check: Callable[[T], object] | None = None, **kwargs: Any) -> T: ...

    async def step(self, fn: Callable[..., Any], /, *args: Any, name: str | None = None,
                   check: Callable[[Any], object] | None = None, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once, durably; a recorded step returns its record.

        Sync functions run in the runtime's thread pool. The result must be JSON-compatible
        or a pydantic model; the function's return annotation, when present, is used to
        rebuild it with its type (without one, the result is plain JSON: a model comes
        back as its data). An exception is recorded and re-raised (also on replay).
        Code inside the step can read its idempotency key with :func:`current_step`.

        ``check`` is an outcome check on the result (see :func:`outcome_problem`): a
        result that fails it fails the step with :class:`~stalwart.OutcomeCheckError`,
        journaled like any other failure (a semantic failure: "it returned, but wrong").
        """
        step_name = name or _callable_name(fn)
        step_id, recorded = self._begin(step_name)
        tp = return_type(fn)
        outcome = self._outcome(recorded)
        if outcome is not None:
            return self._replay_outcome(step_id, outcome, tp)
        self._ex.go_live(step_id, step_name)
        info = StepInfo(self._ex.run_id, step_id, step_name, attempt=1,
                        fencing_token=self._ex.lease.token)
        clock = self._ex.clock
        started_at, since = clock.now(), clock.monotonic()
        try:
            result = await self._ex.invoke(info, fn, args, kwargs, is_async=_is_async(fn))
        except (LeaseLostError, StoreError):
            raise
        except Exception as exc:
            raise await self._record_failure(  # noqa: B904 (what a replay raises)
                step_id, step_name, exc, self._timed(step_id, step_name, started_at, since))
        timed = self._timed(step_id, step_name, started_at, since)
        if check is not None:
            problem = outcome_problem(check, result)
            if problem is not None:
                key = f"step:{step_name}"
                err = OutcomeCheckError(
                    f"step {step_name!r} ({step_id}): its result failed the check: {problem}",
                    key=key, reason=problem, run_id=self._ex.run_id, step_id=step_id)
                self._ex.runtime.note_policy(self._ex.run_id, step_id, "check_failed", key)
                await self._record_failure(step_id, step_name, err, timed)
                raise err
        return await self._record_value(step_id, step_name, result, tp, timed)

    async def _recorded_value(self, name: str, make: Callable[[], T]) -> T:
        step_id, recorded = self._begin(name)
        outcome = self._outcome(recorded)
        if outcome is not None:
            return self._replay_outcome(step_id, outcome, Any)  # type: ignore[no-any-return]
        self._ex.go_live(step_id, name)
        return await self._record_value(step_id, name, make(), Any)  # type: ignore[no-any-return]

    async def now(self) -> float:
        """Wall-clock time (epoch seconds), recorded: replay sees the same value."""
        return float(await self._recorded_value("stalwart.now", self._ex.clock.now))

    async def random(self) -> float:
        """A random float in [0, 1), recorded."""
        return float(await self._recorded_value("stalwart.random", self._ex.rng.random))

    async def uuid(self) -> uuid_mod.UUID:
        """A random UUID (version 4), recorded."""
        text = await self._recorded_value(
            "stalwart.uuid", lambda: str(uuid_mod.UUID(int=self._ex.rng.getrandbits(128),
                                                       version=4)))
        return uuid_mod.UUID(text)

    # -- durable timers ----------------------------------------------------------------

    async def sleep(self, seconds: float) -> None:
        """Sleep durably: the wake-up time is journaled, and a long sleep parks the run
        (its task ends, nothing is held in memory) until a worker wakes it on time — also
        after a restart."""
        if not 0 <= seconds < math.inf:  # NaN too: it compares false with everything
            raise ValueError(f"sleep() needs a finite, non-negative number of seconds, "
                             f"not {seconds!r}")
        step_id, recorded = self._begin("stalwart.sleep")
        if recorded:
            wake_at = float(json.loads(recorded[0].payload or "{}")["wake_at"])
        else:
            self._ex.go_live(step_id, "stalwart.sleep")
            wake_at = self._ex.clock.now() + seconds
            await self._ex.record([NewEvent(EventKind.TIMER_STARTED, step_id, "stalwart.sleep",
                                            json.dumps({"wake_at": wake_at,
                                                        "seconds": seconds}))])
        await self._ex.wait_until(wake_at, RunStatus.SLEEPING)

    # -- signals ---------------------------------------------------------------------

    async def wait_for_signal(self, name: str, *, timeout: float | None = None) -> Any:
        """Wait for the next signal ``name`` sent with ``app.signal``, durably.

        A signal sent before the wait starts is kept and delivered here. Each signal is
        delivered to exactly one wait. Returns its payload.

        Raises:
            SignalTimeoutError: ``timeout`` seconds passed first.
        """
        if timeout is not None and not 0 <= timeout < math.inf:
            raise ValueError(f"wait_for_signal() needs a finite, non-negative timeout in "
                             f"seconds or None, not {timeout!r}")
        step_name = f"signal:{name}"
        step_id, recorded = self._begin(step_name)
        ex = self._ex
        for ev in recorded or ():
            if ev.kind == EventKind.SIGNAL_RECEIVED:
                return decode(ev.payload or "null")
            if ev.kind == EventKind.SIGNAL_TIMED_OUT:
                raise SignalTimeoutError(
                    f"run {ex.run_id}: no signal {name!r} within {timeout}s",
                    signal=name, run_id=ex.run_id, step_id=step_id)
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
                raise SignalTimeoutError(
                    f"run {ex.run_id}: no signal {name!r} within {timeout}s",
                    signal=name, run_id=ex.run_id, step_id=step_id)
            await ex.wait_for_wakeup(deadline, since)

    # -- child runs ------------------------------------------------------------------

    async def child(self, workflow: Workflow[Any, T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``workflow`` as a child run (its own journal, linked to this run) and
        return its result; a failed child raises :class:`RunFailedError`."""
        step_name = f"child:{workflow.name}"
        step_id, recorded = self._begin(step_name)
        ex = self._ex
        tp = return_type(workflow.fn)
        outcome = self._outcome(recorded)
        if outcome is not None:
            return self._replay_outcome(step_id, outcome, tp)  # type: ignore[no-any-return]
        ex.go_live(step_id, step_name)
        child_id = f"{ex.run_id}/{step_id}"
        if not recorded:
            await ex.create_child(child_id, step_id, step_name, workflow, args, kwargs)
        since = ex.clock.monotonic()
        while True:
            child = await ex.child_settled(child_id)
            if child.status in TERMINAL_STATUSES:
                break
            await ex.wait_for_wakeup(None, since)
        if child.status == RunStatus.COMPLETED:
            await ex.record([NewEvent(EventKind.STEP_COMPLETED, step_id, step_name,
                                      child.result or "null")])
            return decode(child.result or "null", tp)  # type: ignore[no-any-return]
        if child.status == RunStatus.CANCELLED and await ex.cancel_was_requested():
            raise Cancelled()  # cancelled with this run (a cancel cascades): not a failure
        err: BaseException
        if child.status == RunStatus.CANCELLED:
            err = RunCancelledError(f"child run {child_id} was cancelled",
                                    run_id=ex.run_id, step_id=step_id)
        else:
            info = ErrorInfo.from_json(child.error or '{"type": "?", "message": "?"}')
            err = RunFailedError(f"child run {child_id} failed: {info.type}: {info.message}",
                                 error_type=info.type, run_id=ex.run_id, step_id=step_id)
        await self._record_failure(step_id, step_name, err)
        raise err

    async def start_child(self, workflow: Workflow[Any, Any], /, *args: Any,
                          **kwargs: Any) -> ChildRun:
        """Start ``workflow`` as a child run and return its handle without waiting for
        it (one journaled step). Wait with :meth:`wait_any`, stop it with
        :meth:`cancel_child`."""
        from .engine._children import start_child

        return await start_child(self, workflow, args, kwargs)

    async def wait_any(self, children: Sequence[ChildRun], /) -> ChildOutcome:
        """Wait until one of ``children`` has ended and return how (the first ended one
        in list order; a replay returns the recorded one)."""
        from .engine._children import wait_any

        return await wait_any(self, children)

    async def cancel_child(self, child: ChildRun, /) -> ChildOutcome:
        """Cancel a child run (and its own children), wait until it has ended, and
        return how it ended (it may have finished before the cancel reached it)."""
        from .engine._children import cancel_child

        return await cancel_child(self, child)

    def saga(self, *, policy: Policy | None = None) -> Saga:
        """A saga: ``async with ctx.saga() as saga: await saga.step(book, x,
        compensate=cancel)``; on failure or cancel, the completed steps' compensations
        run in reverse (see :class:`~stalwart.Saga`)."""
        from .patterns._saga import Saga

        return Saga(self, policy=policy)

    def shield(self) -> AbstractContextManager[None]:
        """``with ctx.shield():`` steps inside run although the run was cancelled (to
        clean up, as a saga compensates); waits inside stay in memory. See
        :mod:`stalwart.engine._cancel`."""
        from .engine._cancel import shield

        return shield()

    def cleanup_on_cancel(self) -> CleanupScope:
        """``async with ctx.cleanup_on_cancel():`` a cancel of the run inside the block
        is raised in its code as :class:`~stalwart.Cancelled`, also while the run is
        parked (the store wakes it instead of ending it), so the code can clean up under
        :meth:`shield`. Each end of the block is a journaled step."""
        from .engine._cancel import CleanupScope

        return CleanupScope(self)

    def next_step_id(self) -> str:
        """The id the next step begun here (this branch) will get: patterns order what
        they keep by journal position with it (a saga's compensations)."""
        return self._next_step_id()

    async def supervise(self, children: Sequence[ChildSpec | Workflow[Any, Any]], /, *,
                        strategy: Strategy = "one_for_one", max_restarts: int = 3,
                        within: float = 60.0) -> dict[str, ChildOutcome]:
        """Run ``children`` as child runs under an OTP-style supervisor: restart them as
        their restart types and ``strategy`` say, fail with
        :class:`~stalwart.RestartIntensityError` after more than ``max_restarts``
        restarts within ``within`` seconds. See :mod:`stalwart.patterns`."""
        from .patterns._supervisor import supervise

        return await supervise(self, children, strategy=strategy,
                               max_restarts=max_restarts, within=within)

    # -- tools and models --------------------------------------------------------------

    async def tool(self, tool: Tool[Any, T], /, *, policy: Policy | None = None,
                   check: Callable[[T], object] | None = None,
                   _tool_call_id: str | None = None, **arguments: Any) -> T:
        """Call a tool as one journaled step behind the policy stack.

        Arguments are validated against the tool's signature first
        (:class:`~stalwart.ToolArgumentsError`). The tool receives a
        :class:`~stalwart.ToolCall` whose ``idempotency_key`` is stable across retries
        and resumes. Policies: the tool's own, over the runtime's; ``policy`` over both.
        ``check`` is an outcome check on the result: a result that fails it is a failed
        attempt (:class:`~stalwart.OutcomeCheckError`, retryable) — it counts against the
        tool's circuit breaker and is retried like an error.
        """
        from .engine._calls import Candidate, guarded_call
        from .engine._interceptor import ToolCallEndInput, ToolCallStartInput
        from .engine._tools import ToolCall

        ex = self._ex
        args = tool.validate(arguments)
        effective = ex.runtime.effective_policy(tool.policy, policy)
        tp = tool.return_type

        async def call(step_id: str, attempt: int) -> Any:
            kwargs = dict(args)
            if tool.call_param is not None:
                kwargs[tool.call_param] = ToolCall(ex.run_id, step_id, tool.name, attempt,
                                                   _tool_call_id, ex.lease.token)
            info = StepInfo(ex.run_id, step_id, f"tool:{tool.name}", attempt,
                            ex.lease.token)
            ic = ex.interceptor
            if not ic.active:
                return await ex.invoke(info, tool.fn, (), kwargs, is_async=tool.is_async)
            handle = ic.tool_call_started(ToolCallStartInput(
                ex.run_id, step_id, attempt, tool.name, _tool_call_id, args))
            try:
                result = await ex.invoke(info, tool.fn, (), kwargs, is_async=tool.is_async,
                                         handle=handle)
            except BaseException as exc:
                ic.tool_call_ended(ToolCallEndInput(handle, error=exc))
                raise
            ic.tool_call_ended(ToolCallEndInput(handle, result=result))
            return result

        return await guarded_call(  # type: ignore[no-any-return]
            self, name=f"tool:{tool.name}",
            candidates=[Candidate(key=f"tool:{tool.name}", call=call)],
            # Its bulkhead (when its policy has one) is the tool's own: calls of one tool
            # share its slots, another tool's do not take them.
            policy=effective, pool=f"tool:{tool.name}",
            encode_result=lambda v: encode(v, tp, what=f"result of tool {tool.name!r}"),
            decode_result=lambda text: decode(text, tp), check=check, reject_failed_check=True)

    @overload
    async def llm(self, model: str | Model, prompt: Prompt, /, *,
                  output_type: None = None, instructions: str = "",
                  policy: Policy | None = None, options: ModelOptions | None = None,
                  name: str = "llm", pool: str | None = None,
                  check: Callable[[str], object] | None = None) -> str: ...

    @overload
    async def llm(self, model: str | Model, prompt: Prompt, /, *, output_type: type[T],
                  instructions: str = "", policy: Policy | None = None,
                  options: ModelOptions | None = None, name: str = "llm",
                  pool: str | None = None,
                  check: Callable[[T], object] | None = None) -> T: ...

    async def llm(self, model: str | Model, prompt: Prompt, /, *,
                  output_type: Any = None, instructions: str = "",
                  policy: Policy | None = None, options: ModelOptions | None = None,
                  name: str = "llm", pool: str | None = None,
                  check: Callable[[Any], object] | None = None) -> Any:
        """One model call, without an agent, as a journaled step behind the policy stack.

        ``prompt`` is a user message (``str``), a :class:`~stalwart.Message`, or a
        conversation (a list of them). ``model`` is a spec (``"openai:gpt-4.1-mini"``,
        ``"sim:x"``) or a :class:`~stalwart.Model`; the policy's fallback chain applies.
        With ``output_type`` the answer is read as that type (JSON; the schema goes into
        the system message), else it is the text. A resumed run returns the recorded
        answer without calling the model again.

        The step is recorded as the model turn ``chat:{name}``: costs, ``stats``,
        ``runs trace`` and ``runs fork --model`` treat it like an agent's turn. An answer
        that does not fit ``output_type`` or fails ``check`` is a failed attempt
        (:class:`~stalwart.OutcomeCheckError`): it counts against the model's breaker
        and is retried by the policy, like an error.
        """
        from .engine._llm import llm

        return await llm(self, model, prompt, output_type=output_type,
                         instructions=instructions, policy=policy, options=options,
                         name=name, pool=pool, check=check)

    def _next_step_id(self) -> str:
        """The id the next step begun in the calling scope will get."""
        scope = _scope_var.get() or self._ex.root_scope
        n = scope.counter + 1
        return f"{scope.prefix}/{n}" if scope.prefix else str(n)

    # -- fan-out ---------------------------------------------------------------------

    async def gather(
        self,
        *aws: Awaitable[Any],
        on_error: Literal["cancel", "collect"] = "cancel",
    ) -> list[Any]:
        """Run the awaitables as concurrent branches; join when all are done.

        Results come back in branch order, whatever order the branches finish in. With
        ``on_error="cancel"`` the first failure cancels the other branches and the failure
        of the lowest-numbered failed branch is raised; with ``"collect"`` every branch
        runs to its end and exceptions are returned in place of results.
        """
        if on_error not in ("cancel", "collect"):
            _close(aws)
            raise ValueError("on_error must be 'cancel' or 'collect'")
        ex = self._ex
        try:
            gather_id, _ = self._begin("stalwart.gather")
            if ex.history is not None:
                err = ex.history.check_gather(gather_id, len(aws))
                if err is not None:
                    raise ex.diverged(err)
        except BaseException:
            _close(aws)
            raise

        async def branch(i: int, aw: Awaitable[Any]) -> Any:
            _scope_var.set(_Scope(f"{gather_id}/{i}"))
            return await aw

        def cancelled(i: int) -> None:
            if ex.history is not None:
                ex.history.excuse(f"{gather_id}/{i}")

        tasks = [asyncio.ensure_future(branch(i, aw)) for i, aw in enumerate(aws)]
        return await _join(tasks, on_error, cancelled)


def _close(aws: Sequence[Awaitable[Any]]) -> None:
    """Close coroutines that will never run (no "never awaited" warning)."""
    for aw in aws:
        if inspect.iscoroutine(aw):
            aw.close()


async def _join(tasks: Sequence[asyncio.Future[Any]], on_error: str,
                cancelled: Callable[[int], None]) -> list[Any]:
    """Wait for the branches; see :meth:`Context.gather`. ``cancelled(i)`` is told of
    each branch cancelled by a sibling's failure.

    A branch that diverged from the journal provisionally (see
    :func:`~stalwart.engine._determinism.is_provisional`) does not cancel the others: if one of
    them fails as the journal recorded, that failure is what cancelled this branch the
    first time, and it is raised; if none does, the divergence is."""
    results: list[Any] = [None] * len(tasks)
    failures: dict[int, BaseException] = {}
    held: dict[int, BaseException] = {}
    control: list[BaseException] = []
    parks: list[Suspend] = []

    def classify(i: int, t: asyncio.Future[Any]) -> None:
        if t.cancelled():
            return
        exc = t.exception()
        if exc is None:
            results[i] = t.result()
        elif isinstance(exc, Suspend):
            parks.append(exc)
        elif is_provisional(exc):
            held[i] = exc
        elif isinstance(exc, Exception) and not isinstance(exc, LeaseLostError | StoreError):
            failures[i] = exc
            results[i] = exc
        else:
            control.append(exc)

    index = {t: i for i, t in enumerate(tasks)}
    pending = set(tasks)
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                classify(index[t], t)
            if control or (failures and on_error == "cancel"):
                for t in pending:
                    t.cancel()
                if pending:
                    await asyncio.wait(pending)
                for t in pending:
                    classify(index[t], t)
                    if t.cancelled():
                        cancelled(index[t])
                pending = set()
    except BaseException:
        for t in tasks:
            t.cancel()
        raise
    if control:
        raise control[0]
    if failures and on_error == "cancel":
        for i in held:  # cancelled by that failure in the recorded run
            cancelled(i)
        raise failures[min(failures)]
    if held:
        raise held[min(held)]
    if parks:
        waiting = any(p.status == RunStatus.WAITING for p in parks)
        wakes = [p.wake_at for p in parks if p.wake_at is not None]
        raise Suspend(RunStatus.WAITING if waiting else RunStatus.SLEEPING,
                      min(wakes) if wakes else None)
    return results


def bind_step_context(info: StepInfo) -> contextvars.Token[StepInfo | None]:
    return _step_var.set(info)


def unbind_step_context(token: contextvars.Token[StepInfo | None]) -> None:
    _step_var.reset(token)


def set_root_scope(scope: _Scope) -> None:
    _scope_var.set(scope)


def new_root_scope() -> _Scope:
    return _Scope("")
