"""The hooks the runtime calls while it executes a run (Temporal's interceptor idea).

Each hook takes one ``*Input`` dataclass, so a hook can gain a field without breaking
an interceptor written against an older runtime. Read its fields by name. Every call gets
an input of its own, and nothing reads it after the hook returns. The inputs are not
frozen: a frozen dataclass costs ~0.35 us more to build, and the step hooks run for
every step (the tracing overhead benchmark counts it). :class:`Interceptor` itself does
nothing: it is the default, and tracing that is off costs a method call per hook.

Where the runtime calls them:

=====================  ==============================================================
``run_started``        an execution begins (a new run, or a resume that replays first)
``run_ended``          the execution ends: with the run's new status, or ``None`` when
                       it ended without one (its lease was lost)
``step_started``       a step *really* executes (never for steps replayed from the
                       journal; not for timers and signal waits, which have no outcome)
``step_ended``         that step's outcome is written to the journal
``agent_started/...``  around ``Agent.run``; ``live`` says whether the run was
                       replaying when the agent began
``model_call_*``       around one attempt of one model (``chat {model}``)
``tool_call_*``        around one attempt of one tool (``execute_tool {name}``)
``policy_noted``       a policy acted: ``retried``, ``fallback``, ``fallback_answered``,
                       ``breaker_rejected``, ``check_failed``...
``activated``          around user code: a step's function, a tool, a model adapter's
                       call; what the interceptor makes current there (OpenTelemetry:
                       the step's, tool call's or model call's span, so spans the code
                       makes itself nest under it)
=====================  ==============================================================

The ``*_started`` hooks of agents, model calls and tool calls return a handle that the
runtime hands back in the matching ``*_ended`` input. Hooks run on the event loop and
must not block; an exception from a hook propagates (interceptors must not raise).

A runtime gets its interceptor from an :class:`Instrumentation` (``Runtime(tracing=...)``,
e.g. :class:`stalwart.telemetry.Tracing`), which it calls once with a
:class:`BindInput`: the runtime's clock and its breaker and bulkhead registries (for
timestamps and gauges). That and the hooks' inputs are all an interceptor sees of the
engine; the engine knows interceptors only through this module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, final

from .._clock import Clock
from ..policies import BreakerRegistry, BulkheadRegistry, ClusterBulkheadRegistry
from ..store._base import TERMINAL_STATUSES

if TYPE_CHECKING:
    from ..models import ModelRequest, ModelResponse
    from ..store._base import RunRecord, RunStatus

__all__ = [
    "NOOP", "AgentEndInput", "AgentStartInput", "BindInput", "CaptureContent", "Instrumentation",
    "Interceptor",
    "ModelCallEndInput", "ModelCallStartInput", "PolicyInput", "RunEndInput", "RunStartInput",
    "StepEndInput", "StepStartInput", "ToolCallEndInput", "ToolCallStartInput",
]

CaptureContent = bool | Literal["hash"]
"""Whether spans carry prompts, completions and tool arguments/results: ``False`` (the
default) never, ``True`` as text, ``"hash"`` only their SHA-256 digests."""


@final
@dataclass(slots=True)
class RunStartInput:
    run: RunRecord
    resumed: bool
    """The journal already held events for the run (this execution replays first)."""
    redrives: int = 0
    """How many times the run was sent through again after it was dead-lettered
    (``stalwart dlq retry``); 0 for a run that never was."""
    redriven_at: float | None = None
    """When it was last sent through again (``None``: never)."""


@final
@dataclass(slots=True)
class RunEndInput:
    run: RunRecord
    status: RunStatus | None
    """The status the run reached; ``None``: the execution ended without an outcome."""
    error: str | None = None
    """The run's error (``ErrorInfo`` JSON) when it failed."""

    @property
    def terminal(self) -> bool:
        """The run ended for good (completed, failed, cancelled or dead-lettered); else
        it parked, or this execution ended without an outcome."""
        return self.status in TERMINAL_STATUSES


@final
@dataclass(slots=True)
class StepStartInput:
    run_id: str
    step_id: str
    name: str
    since: float | None = None
    """When the journal first saw this step (a step resumed after a crash), else None."""


@final
@dataclass(slots=True)
class StepEndInput:
    run_id: str
    step_id: str
    name: str
    error: str | None = None
    """``ErrorInfo`` JSON when the step failed; ``None`` when it completed."""


@final
@dataclass(slots=True)
class AgentStartInput:
    run_id: str
    agent: str
    first_step_id: str
    """The id of the agent's first step: it names this run of the agent."""
    provider: str
    model: str
    live: bool
    """False while the run replays: the agent may finish without running anything."""
    capture_content: CaptureContent | None = None
    """The agent's own choice; ``None`` inherits the runtime's."""
    since: float | None = None
    """When the agent began, from the journal, if its first step is recorded (a resumed
    run): the start of its first model call. ``None``: it begins now."""


@final
@dataclass(slots=True)
class AgentEndInput:
    handle: Any
    iterations: int = 0
    tool_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    error: BaseException | None = None


@final
@dataclass(slots=True)
class ModelCallStartInput:
    run_id: str
    step_id: str
    attempt: int
    key: str
    """The dependency key (``provider:model``) its breaker and rate limiter use."""
    provider: str
    model: str
    request: ModelRequest
    agent: str | None = None


@final
@dataclass(slots=True)
class ModelCallEndInput:
    handle: Any
    response: ModelResponse | None = None
    error: BaseException | None = None


@final
@dataclass(slots=True)
class ToolCallStartInput:
    run_id: str
    step_id: str
    attempt: int
    tool: str
    call_id: str | None
    """The model's id for the call (``None`` when workflow code called the tool)."""
    arguments: Mapping[str, Any]


@final
@dataclass(slots=True)
class ToolCallEndInput:
    handle: Any
    result: Any = None
    error: BaseException | None = None


@final
@dataclass(slots=True)
class PolicyInput:
    run_id: str
    step_id: str | None
    action: str
    key: str


class Interceptor:
    """Hooks called by the runtime; every one does nothing here (override some).

    ``active`` is False only for this no-op base, so the runtime can skip preparing
    inputs that nobody reads.
    """

    active: bool = True

    def run_started(self, input: RunStartInput) -> None:
        """An execution of a run begins."""

    def run_ended(self, input: RunEndInput) -> None:
        """The execution ends (see :class:`RunEndInput`)."""

    def step_started(self, input: StepStartInput) -> None:
        """A step executes for real."""

    def step_ended(self, input: StepEndInput) -> None:
        """A step's outcome was journaled."""

    def agent_started(self, input: AgentStartInput) -> Any:
        """An agent's loop begins; returns a handle for :meth:`agent_ended`."""
        return None

    def agent_ended(self, input: AgentEndInput) -> None:
        """An agent's loop ends."""

    def model_call_started(self, input: ModelCallStartInput) -> Any:
        """One attempt of a model call begins; returns a handle."""
        return None

    def model_call_ended(self, input: ModelCallEndInput) -> None:
        """The attempt returned a response or raised."""

    def tool_call_started(self, input: ToolCallStartInput) -> Any:
        """One attempt of a tool call begins; returns a handle."""
        return None

    def tool_call_ended(self, input: ToolCallEndInput) -> None:
        """The attempt returned or raised."""

    def policy_noted(self, input: PolicyInput) -> None:
        """A resilience policy acted."""

    def activated(self, run_id: str, step_id: str,
                  handle: Any = None) -> contextlib.AbstractContextManager[object]:
        """A context manager entered around user code that runs for step ``step_id``:
        the step's function, or the tool or model call whose ``*_started`` hook
        returned ``handle``."""
        return _NO_SCOPE

    def close(self) -> None:
        """The runtime closes."""


_NO_SCOPE: contextlib.AbstractContextManager[object] = contextlib.nullcontext()


class _NoOp(Interceptor):
    active = False


NOOP: Interceptor = _NoOp()
"""The interceptor of a runtime without tracing."""


@final
@dataclass(frozen=True, slots=True)
class BindInput:
    """What a runtime hands an :class:`Instrumentation` once, when it is made."""

    clock: Clock
    """The runtime's clock (virtual under a ``FakeClock``): span times come from it."""
    breakers: BreakerRegistry
    """The runtime's circuit breakers (their state, for attributes and gauges)."""
    bulkheads: BulkheadRegistry | ClusterBulkheadRegistry
    """The runtime's bulkheads (queued and active calls, for gauges)."""


class Instrumentation(Protocol):
    """What ``Runtime(tracing=...)`` takes: something that makes the runtime's
    interceptor (:class:`stalwart.telemetry.Tracing` is one)."""

    def bind(self, input: BindInput, /) -> Interceptor:
        """The interceptor for the runtime that ``input`` describes (called once)."""
        ...
