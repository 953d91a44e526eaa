"""The OpenTelemetry interceptor: spans and metrics for the runs of one runtime.

Span tree of a run (every id derived from the journal's names, see ``_ids``)::

    workflow {name}                     the run: from its creation to its end
      step {name}                       a step that executed (``ctx.step``, a child...)
      invoke_agent {agent}              an agent's loop
        step chat:{agent}               the model turn (a journaled step)
          chat {model}                  each attempt, each fallback model
        step tool:{name}
          execute_tool {name}           each attempt

Replay safety. Nothing is emitted for a step replayed from the journal; an agent whose
steps all replay emits nothing either (its span is created when its first step runs).
A run span is emitted once, by the execution that ends the run; an execution that parks
the run or dies leaves it (and any step it had not finished) unexported, and the next
execution re-creates it with the same ids. Span timestamps come from the runtime's
clock, so under a :class:`~stalwart.FakeClock` they are virtual, like the journal's.

A run sent through again after it was dead-lettered (``dlq retry``) already emitted its
run span (with the error); each redrive gets a ``workflow`` span of its own, a child of
the run's, and what it executes gets ids of its own (``RunIds(run, redrive=n)``).

User code (a step's function, a tool, a model adapter) runs with the step's or call's span
as OpenTelemetry's current span, so spans it or an instrumented library starts nest there.

Stalwart's own spans are parented explicitly (by id), not through OpenTelemetry's
ambient context, because a run's steps span several tasks and several processes. When the
provider samples everything and no processor looks at spans as they start (the usual
setup), spans skip the SDK's ``Span`` and reach the processors as the ``ReadableSpan`` it
would have built (see ``_spans``); otherwise they go through ``Tracer.start_span``.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import hashlib
import json
import logging
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import metrics as metrics_api
from opentelemetry import trace as trace_api
from opentelemetry.context import Context as OtelContext
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from .._clock import SystemClock
from .._context import _step_var
from ..errors import ConfigurationError
from ..store._base import TERMINAL_STATUSES, RunStatus
from ._ids import RunIds, span_id_for, trace_id_for
from ._interceptor import (
    AgentEndInput,
    AgentStartInput,
    CaptureContent,
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
from ._spans import DirectSpan, LazySpan, SpanLike, SpanSink, lazy_step
from ._steps import STEP_ATTRIBUTES_MAX, error_of, run_span, step_span

if TYPE_CHECKING:
    from .._runtime import Runtime
    from ._config import Tracing
    from ._otlp import PlainSpans

__all__ = ["OTelInterceptor"]

log = logging.getLogger("stalwart.telemetry")

_SCOPE = "stalwart"
_TRACES_KEPT = 10_000
"""Trace ids of recent runs kept in memory, so their child runs join their trace."""
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                  16777216, 67108864)
_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24,
                     20.48, 40.96, 81.92)
_BREAKER_LEVEL = {"closed": 0, "half_open": 1, "open": 2}


class _ChosenIds(IdGenerator):
    """Hands out the ids stalwart chose for the span being started (else the SDK's)."""

    def __init__(self, base: IdGenerator) -> None:
        self.base = base
        self.trace_id: int | None = None
        self.span_id: int | None = None

    def generate_span_id(self) -> int:
        if self.span_id is not None:
            return self.span_id
        return self.base.generate_span_id()

    def generate_trace_id(self) -> int:
        if self.trace_id is not None:
            return self.trace_id
        return self.base.generate_trace_id()

    def is_trace_id_random(self) -> bool:
        return False  # run trace ids are hashes of run ids


_Step = SpanLike | tuple[str, int, SpanContext | None]
"""A step executing: its span, or, while nothing needed one (the usual step), only its
name, start time and parent (``None``: the run); its span is then made when it ends (a
``LazySpan``)."""


class _Run:
    """A run executing here: its steps executing, and its ids, each computed when first
    needed (for most runs only where their spans are read, off the event loop)."""

    __slots__ = ("_context", "_ids", "_plain", "_trace_id", "attributes", "direct",
                 "parent", "redrive", "retries", "run_id", "sink", "span", "start", "steps",
                 "workflow")

    def __init__(self, run_id: str, workflow: str, sink: SpanSink, *, direct: bool,
                 redrive: int, trace_id: int | None, parent: SpanContext | None,
                 attributes: dict[str, Any], start: float) -> None:
        self.run_id = run_id
        self.workflow = workflow
        self.sink = sink
        self.direct = direct
        """Its spans skip the SDK's ``Span`` (see ``_spans``); else the sampler sees each."""
        self.redrive = redrive
        self._trace_id = trace_id  # None: the run's own (a hash of its id)
        self._ids: RunIds | None = None
        self._context: SpanContext | None = None
        self._plain: PlainSpans | None = None
        self.parent = parent
        self.attributes = attributes
        self.start = start
        self.span: SpanLike | None = None
        """Its span, when made as it started (the SDK's path); else a ``LazySpan``
        is made as it ends."""
        self.steps: dict[str, _Step] = {}
        self.retries: dict[str, int] | None = None  # made by the first retry

    @property
    def trace_id(self) -> int:
        if self._trace_id is None:
            self._trace_id = trace_id_for(self.run_id)
        return self._trace_id

    @property
    def ids(self) -> RunIds:
        if self._ids is None:
            self._ids = RunIds(self.run_id, redrive=self.redrive)
        return self._ids

    @property
    def context(self) -> SpanContext:
        """The run span's context: its trace id, flags and the parent of its steps."""
        if self._context is None:
            self._context = (self.span.get_span_context() if self.span is not None else
                             SpanContext(self.trace_id, self.ids.span("run"), False, _SAMPLED))
        return self._context

    def step_context(self, step_id: str) -> SpanContext:
        """The context of step ``step_id``'s span."""
        return SpanContext(self.trace_id, self.ids.step(step_id), False, _SAMPLED)

    def span_context(self, what: tuple[Any, ...]) -> SpanContext:
        """A ``LazySpan``'s context: ``("run", ...)`` or ``("step", step_id, ...)``."""
        return self.context if what[0] == "run" else self.step_context(what[1])

    def span_fields(self, what: tuple[Any, ...]) -> tuple[Any, ...]:
        """``ReadableSpan``'s arguments for a ``LazySpan``: the run's, ``("run", status,
        error JSON, end)``, or a plain step's, ``("step", step_id, name, parent span id
        or None: the run's, start, end, error JSON)``."""
        name, span_id, parent, start, end, attributes, error = self._span_of(what)
        return self.sink.fields(
            name, SpanContext(self.trace_id, span_id, False, _SAMPLED), parent,
            SpanKind.INTERNAL, attributes, None,
            _UNSET if error is None else Status(StatusCode.ERROR, error), start, end)

    def span_parts(self, what: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """A ``LazySpan`` as plain values (see ``LazySpan.parts``)."""
        name, span_id, parent, start, end, attributes, error = self._span_of(what)
        sink = self.sink
        if len(attributes) > sink.plain_max:
            return None
        return (name, self.trace_id, span_id, None if parent is None else parent[1], start,
                end, attributes, (0, None) if error is None else (_ERROR, error),
                sink.resource, sink.scope)

    def span_encoded(self, what: tuple[Any, ...]) -> tuple[Any, Any, bytes] | None:
        """A plain step's ``LazySpan`` as OTLP bytes (see ``LazySpan.encoded``): a step
        that completed, when no span limit could cut its attributes."""
        if what[0] != "step" or what[6] is not None:
            return None
        sink = self.sink
        if sink.plain_max < STEP_ATTRIBUTES_MAX:
            return None
        plain = self._plain
        if plain is None:
            from ._otlp import PlainSpans  # only the OTLP encoder asks (it is imported)

            plain = self._plain = PlainSpans(self.run_id, self.ids, self.trace_id,
                                             self.context.span_id)
        encoded = plain.step(what[1], what[2], what[3], what[4], what[5])
        return None if encoded is None else (sink.resource, sink.scope, encoded)

    def _span_of(self, what: tuple[Any, ...]) -> tuple[Any, ...]:
        """``(name, span id, parent context, start, end, attributes, error message or
        None)`` of a ``LazySpan``'s ``what``."""
        if what[0] == "step":
            _, step_id, name, parent_id, start, end, error = what
            span_name, attributes, message = step_span(self.run_id, step_id, name, error)
            return (span_name, self.ids.step(step_id), self.context if parent_id is None
                    else SpanContext(self.trace_id, parent_id, False, _SAMPLED), start, end,
                    attributes, message)
        _, status, error, end = what
        name, attributes, message = run_span(self.attributes, status, error)
        return (name, self.context[1], self.parent, _ns(self.start), end, attributes,
                message)

    def span_packed(self, what: tuple[Any, ...]) -> tuple[Any, ...]:
        """What the span export process builds a ``LazySpan`` from, with this run's
        :meth:`packable`: a step's ``what`` as it is; the run's, ``("run", status, error
        JSON, end, start, parent span id or None, attributes at its start)``."""
        if what[0] == "step":
            return what
        parent = self.parent
        return (*what, _ns(self.start), None if parent is None else parent[1],
                self.attributes)

    def packable(self) -> tuple[Any, ...] | None:
        """What the span export process needs to build this run's plain step spans
        itself (``_sidecar``): ``(run id, redrive, trace id or None: the run's own,
        resource, scope)``; ``None`` when span limits could cut a step's attributes."""
        sink = self.sink
        if sink.plain_max < STEP_ATTRIBUTES_MAX:
            return None
        return (self.run_id, self.redrive, self._trace_id, sink.resource, sink.scope)

    def current(self, step_id: str) -> SpanContext | None:
        """The context of step ``step_id``'s span if it is executing, else ``None``."""
        step = self.steps.get(step_id)
        if step is None:
            return None
        if type(step) is tuple:
            return self.step_context(step_id)
        return step.get_span_context()  # type: ignore[union-attr]

    def promote(self, step_id: str) -> SpanLike | None:
        """Step ``step_id``'s span, made now if it was not yet (something is about to
        add to it); ``None`` if the step is not executing."""
        step = self.steps.get(step_id)
        if type(step) is not tuple:
            return step  # type: ignore[return-value]
        name, start, parent = step
        span_name, attributes, _ = step_span(self.run_id, step_id, name, None)
        span = DirectSpan(self.sink, span_name, self.step_context(step_id),
                          parent or self.context, SpanKind.INTERNAL, attributes, start)
        self.steps[step_id] = span
        return span


@dataclass(slots=True)
class _Agent:
    run_id: str
    span_id: int
    name: str
    attributes: dict[str, Any]
    started: float
    capture: CaptureContent | None
    span: SpanLike | None = None
    token: contextvars.Token[tuple[_Agent, ...]] | None = None


@dataclass(slots=True)
class _Call:
    span: SpanLike
    started: float
    attributes: dict[str, Any]
    capture: CaptureContent


_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)
_ERROR = StatusCode.ERROR.value
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_NOTHING: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
_NO_STEPS: dict[str, Any] = {}
"""The steps of every run that ended (never written: a run that ended has no execution)."""


class _RunSpan(NonRecordingSpan):
    """OpenTelemetry's current span while a run executes (set once per execution): the
    span of the step the calling code runs in, as the runtime's step context says, else
    the run's. Per-step activation would cost a context attach and detach per step.
    ``state`` ``None``: a run the sampler dropped, of (unsampled) ``context``."""

    def __init__(self, context: SpanContext | None, run_id: str, state: _Run | None) -> None:
        super().__init__(context)  # type: ignore[arg-type]  # see get_span_context
        self._run_id = run_id
        self._state = state

    def get_span_context(self) -> SpanContext:
        state = self._state
        if state is None:
            return super().get_span_context()
        info = _step_var.get()
        if info is not None and info.run_id == self._run_id:
            current = state.current(info.step_id)
            if current is not None:
                return current
        return state.context


class _Current:
    """Makes a span OpenTelemetry's current span (in this task or thread) while entered."""

    __slots__ = ("_parent", "_token")

    def __init__(self, parent: SpanContext) -> None:
        self._parent = parent
        self._token: object = None

    def __enter__(self) -> object:
        self._token = otel_context.attach(
            trace_api.set_span_in_context(NonRecordingSpan(self._parent)))
        return None

    def __exit__(self, *exc: object) -> None:
        otel_context.detach(self._token)  # type: ignore[arg-type]


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _json(value: Any) -> str:
    try:
        from pydantic import TypeAdapter

        return TypeAdapter(Any).dump_json(value).decode()
    except Exception:
        return json.dumps(str(value))


class OTelInterceptor(Interceptor):
    """Spans and metrics for one runtime's runs (built by :meth:`Tracing.bind`)."""

    def __init__(self, config: Tracing, runtime: Runtime) -> None:
        provider = config.tracer_provider
        if provider is None:
            provider = trace_api.get_tracer_provider()
            if not isinstance(provider, SdkTracerProvider):
                from ._setup import configure

                configure()
                provider = trace_api.get_tracer_provider()
        base = provider.get_tracer(_SCOPE)
        if not isinstance(base, SdkTracer):
            raise ConfigurationError(
                "Tracing needs an OpenTelemetry SDK TracerProvider (its spans get ids "
                "derived from the run, so a resumed run continues its trace); got "
                f"{type(provider).__name__}")
        # A private copy of the SDK's tracer for this scope, differing only in where its
        # ids come from: other tracers of the provider are untouched.
        tracer = copy.copy(base)
        self._ids = _ChosenIds(base.id_generator)
        tracer.id_generator = self._ids
        self._tracer = tracer
        self._sink = SpanSink(base)
        self._config = config
        self._clock = runtime.clock
        # Now in nanoseconds, for span times: the real clock's without a float between.
        self._now_ns: Callable[[], int] = (
            time.time_ns if type(runtime.clock) is SystemClock
            else lambda: _ns(runtime.clock.now()))
        self._runtime = weakref.ref(runtime)
        self._runs: dict[str, _Run] = {}
        self._dropped: dict[str, SpanContext] = {}
        self._current: dict[str, contextvars.Token[OtelContext]] = {}
        """The OpenTelemetry context tokens of the executions running here, by run."""
        """Runs executing here that the sampler dropped: their (unsampled) context."""
        self._traces: dict[str, int] = {}
        self._agents: contextvars.ContextVar[tuple[_Agent, ...]] = contextvars.ContextVar(
            "stalwart_otel_agents", default=())
        self._metrics = config.metrics
        if config.metrics:
            self._setup_metrics(config.meter_provider or metrics_api.get_meter_provider())

    # -- spans -----------------------------------------------------------------------

    def _start(self, name: str, *, trace_id: int, span_id: int, parent: SpanContext | None,
               direct: bool, kind: SpanKind = SpanKind.INTERNAL,
               attributes: dict[str, Any] | None = None, at: float | None = None) -> SpanLike:
        start = _ns(self._clock.now() if at is None else at)
        if direct and self._sink.direct():
            return DirectSpan(self._sink, name, SpanContext(trace_id, span_id, False, _SAMPLED),
                              parent, kind, attributes, start)
        ctx = OtelContext() if parent is None else trace_api.set_span_in_context(
            NonRecordingSpan(parent), OtelContext())
        self._ids.trace_id, self._ids.span_id = trace_id, span_id
        try:
            span = self._tracer.start_span(name, context=ctx, kind=kind, attributes=attributes,
                                           start_time=start)
        finally:
            self._ids.trace_id = self._ids.span_id = None
        return span

    def _end(self, span: SpanLike) -> None:
        span.end(end_time=_ns(self._clock.now()))

    def _trace_of(self, run_id: str) -> int:
        """The trace id of run ``run_id``: a child run's is its parent's."""
        known = self._traces.get(run_id)
        return known if known is not None else trace_id_for(run_id)

    def run_started(self, input: RunStartInput) -> None:
        run = input.run
        trace_id = None  # the run's own, computed when needed
        parent = None
        attributes: dict[str, Any] = {"stalwart.run_id": run.run_id,
                                      "stalwart.workflow": run.workflow}
        if run.parent_run_id is not None:
            trace_id = self._trace_of(run.parent_run_id)
            self._traces[run.run_id] = trace_id
            if len(self._traces) > _TRACES_KEPT:
                del self._traces[next(iter(self._traces))]
            attributes["stalwart.parent_run_id"] = run.parent_run_id
            if run.parent_step_id is not None:
                # The parent's ids, from its execution if it runs here (it may be a
                # redrive, whose ids are its own), else as a first execution names them.
                executing = self._runs.get(run.parent_run_id)
                parent = SpanContext(
                    trace_id, executing.ids.step(run.parent_step_id) if executing is not None
                    else span_id_for(run.parent_run_id, "step", run.parent_step_id),
                    False, _SAMPLED)
        if input.resumed:
            attributes["stalwart.resumed"] = True
        at = run.created_at
        if input.redrives:
            # The run's span ended when it was dead-lettered, and its steps' spans with
            # it: what a redrive executes gets ids of its own, under a span of its own
            # that is a child of the run's (a span is emitted once).
            parent = SpanContext(trace_id or trace_id_for(run.run_id),
                                 span_id_for(run.run_id, "run"), False, _SAMPLED)
            attributes["stalwart.redrive"] = input.redrives
            at = input.redriven_at if input.redriven_at is not None else self._clock.now()
        sink = self._sink
        state = _Run(run.run_id, run.workflow, sink, direct=True, redrive=input.redrives,
                     trace_id=trace_id, parent=parent, attributes=attributes, start=at)
        sampled = True if sink.samples_all else sink.sampled(state.trace_id)
        if sampled is False:
            # Dropped by the sampler, as each of its spans would be: none is made. Code
            # inside still sees the run's (unsampled) context, so its spans drop too.
            dropped = SpanContext(state.trace_id, state.ids.span("run"), False, _NOT_SAMPLED)
            self._dropped[run.run_id] = dropped
            self._make_current(run.run_id, _RunSpan(dropped, run.run_id, None))
            return
        state.direct = sampled is True
        if not (state.direct and sink.direct()):  # the SDK's path: its span now
            state.span = self._start(f"workflow {run.workflow}", trace_id=state.trace_id,
                                     span_id=state.ids.span("run"), parent=parent,
                                     attributes=attributes, at=at, direct=False)
        self._runs[run.run_id] = state
        self._make_current(run.run_id, _RunSpan(None, run.run_id, state))

    def _make_current(self, run_id: str, span: _RunSpan) -> None:
        """For the rest of this execution (its task), ``span`` is the current span."""
        self._current[run_id] = otel_context.attach(trace_api.set_span_in_context(span))

    def run_ended(self, input: RunEndInput) -> None:
        token = self._current.pop(input.run.run_id, None)
        if token is not None:
            otel_context.detach(token)
        self._dropped.pop(input.run.run_id, None)
        state = self._runs.pop(input.run.run_id, None)
        if state is None:
            return
        # Its spans keep the state alive as long as an exporter keeps them (an in-memory
        # one, for good); the steps dict has nothing more to do.
        state.steps = _NO_STEPS
        if input.status not in TERMINAL_STATUSES:
            return  # parked or interrupted: the execution that ends the run emits it
        span = state.span
        if span is None:  # a LazySpan, read (and filled in) by the exporter
            self._sink.emit(LazySpan(state, ("run", str(input.status), input.error,
                                             _ns(self._clock.now()))))
            return
        span.set_attribute("stalwart.run.status", str(input.status))
        if input.status in (RunStatus.FAILED, RunStatus.DEAD_LETTERED):
            kind, message = error_of(input.error or "{}")
            span.set_attribute("error.type", kind)
            span.set_status(Status(StatusCode.ERROR, message))
        self._end(span)

    def _materialize(self, frames: Sequence[_Agent], state: _Run) -> SpanContext:
        """Start the spans of the agents in ``frames`` not started yet; the innermost's
        context."""
        parent = state.context
        for frame in frames:
            if frame.span is None:
                frame.span = self._start(
                    f"invoke_agent {frame.name}", trace_id=parent.trace_id,
                    span_id=frame.span_id, parent=parent, attributes=dict(frame.attributes),
                    at=frame.started, direct=state.direct)
            parent = frame.span.get_span_context()
        return parent

    def step_started(self, input: StepStartInput) -> None:
        # The hot path of tracing (every step that runs): kept free of extra calls. A
        # direct run's step only notes its start; its span is made when it ends.
        run_id = input.run_id
        state = self._runs.get(run_id)
        if state is None:
            return
        step_id, steps = input.step_id, state.steps
        if step_id in steps:
            return
        frames = self._agents.get()
        parent = (self._materialize(frames, state)
                  if frames and frames[-1].run_id == run_id else None)
        if state.direct and self._sink.direct():
            since = input.since
            steps[step_id] = (input.name, self._now_ns() if since is None
                              else _ns(since), parent)
            return
        span_name, attributes, _ = step_span(run_id, step_id, input.name, None)
        steps[step_id] = self._start(
            span_name, trace_id=state.trace_id, span_id=state.ids.step(step_id),
            parent=parent or state.context, at=input.since, direct=state.direct,
            attributes=attributes)

    def step_ended(self, input: StepEndInput) -> None:
        state = self._runs.get(input.run_id)
        if state is None:
            return
        step = state.steps.pop(input.step_id, None)
        if type(step) is tuple:  # nothing was added to it: a LazySpan
            name, start, parent = step
            self._sink.emit(lazy_step(state, input.step_id, name,
                                      None if parent is None else parent[1], start,
                                      self._now_ns(), input.error))
            return
        if step is None:
            return
        span: SpanLike = step  # type: ignore[assignment]
        retries = state.retries.pop(input.step_id, 0) if state.retries else 0
        if retries:
            span.set_attribute("stalwart.retries", retries)
        if input.error is not None:
            kind, message = error_of(input.error)
            span.set_attribute("error.type", kind)
            span.set_status(Status(StatusCode.ERROR, message))
        span.end(_ns(self._clock.now()))

    # -- agents ----------------------------------------------------------------------

    def agent_started(self, input: AgentStartInput) -> Any:
        state = self._runs.get(input.run_id)
        if state is None:
            return None
        frame = _Agent(
            run_id=input.run_id, name=input.agent,
            span_id=state.ids.span("agent", input.first_step_id),
            attributes={"gen_ai.operation.name": "invoke_agent",
                        "gen_ai.agent.name": input.agent,
                        "gen_ai.provider.name": input.provider,
                        "gen_ai.request.model": input.model,
                        "stalwart.run_id": input.run_id,
                        "stalwart.step_id": input.first_step_id},
            started=self._clock.now() if input.since is None else input.since,
            capture=input.capture_content)
        frames = (*self._agents.get(), frame)
        frame.token = self._agents.set(frames)
        if input.live:
            self._materialize(frames, state)
        return frame

    def agent_ended(self, input: AgentEndInput) -> None:
        frame = input.handle
        if not isinstance(frame, _Agent):
            return
        if frame.token is not None:
            self._agents.reset(frame.token)
        span = frame.span
        if span is None:
            return  # replayed whole: emitted by the execution that ran it
        span.set_attributes({"gen_ai.usage.input_tokens": input.input_tokens,
                             "gen_ai.usage.output_tokens": input.output_tokens,
                             "stalwart.agent.iterations": input.iterations,
                             "stalwart.agent.tool_calls": input.tool_calls})
        if input.error is not None:
            span.set_attribute("error.type", type(input.error).__name__)
            span.set_status(Status(StatusCode.ERROR, str(input.error)))
        self._end(span)

    def _capture(self) -> CaptureContent:
        frames = self._agents.get()
        if frames and frames[-1].capture is not None:
            return frames[-1].capture
        return self._config.capture_content

    def _content(self, span: SpanLike, capture: CaptureContent, key: str, text: str,
                 digest_key: str) -> None:
        if capture == "hash":
            span.set_attribute(digest_key, _digest(text))
        elif capture:
            span.set_attribute(key, text)

    # -- model and tool calls --------------------------------------------------------

    def _call_span(self, run_id: str, step_id: str, name: str, what: tuple[str, ...],
                   kind: SpanKind, attributes: dict[str, Any]) -> _Call | None:
        state = self._runs.get(run_id)
        parent = state.current(step_id) if state is not None else None
        if state is None or parent is None:
            dropped = self._dropped.get(run_id)
            if dropped is None:
                return None
            # A run its sampler dropped: no span, but the call's metrics all the same.
            return _Call(NonRecordingSpan(dropped), self._clock.now(), attributes, False)
        at = self._clock.now()
        span = self._start(name, trace_id=parent.trace_id,
                           span_id=state.ids.span("call", step_id, *what), parent=parent,
                           kind=kind, attributes=dict(attributes), at=at,
                           direct=state.direct)
        return _Call(span, at, attributes, self._capture())

    def model_call_started(self, input: ModelCallStartInput) -> Any:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": input.provider,
            "gen_ai.request.model": input.model, "stalwart.run_id": input.run_id,
            "stalwart.step_id": input.step_id, "stalwart.attempt": input.attempt}
        if input.agent is not None:
            attributes["gen_ai.agent.name"] = input.agent
        options = input.request.options
        for attr, value in (("gen_ai.request.temperature", options.temperature),
                            ("gen_ai.request.max_tokens", options.max_tokens),
                            ("gen_ai.request.top_p", options.top_p),
                            ("gen_ai.request.seed", options.seed)):
            if value is not None:
                attributes[attr] = value
        runtime = self._runtime()
        if runtime is not None and input.key in runtime.breakers:
            attributes["stalwart.breaker.state"] = str(runtime.breakers.get(input.key).state)
        call = self._call_span(input.run_id, input.step_id, f"chat {input.model}",
                               (input.key, str(input.attempt)), SpanKind.CLIENT, attributes)
        if call is not None and call.capture:
            messages = [m.model_dump(mode="json", exclude_none=True)
                        for m in input.request.messages]
            self._content(call.span, call.capture, "gen_ai.input.messages",
                          json.dumps(messages), "stalwart.input.sha256")
        return call

    def model_call_ended(self, input: ModelCallEndInput) -> None:
        call = input.handle
        if not isinstance(call, _Call):
            return
        span, response = call.span, input.response
        metric_attrs = {k: call.attributes[k] for k in (
            "gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model")}
        if response is not None:
            span.set_attributes({
                "gen_ai.response.model": response.model,
                "gen_ai.response.finish_reasons": (response.finish_reason,),
                "gen_ai.usage.input_tokens": response.usage.input_tokens,
                "gen_ai.usage.output_tokens": response.usage.output_tokens})
            if response.raw_id:
                span.set_attribute("gen_ai.response.id", response.raw_id)
            if call.capture:
                out = [response.to_message().model_dump(mode="json", exclude_none=True)]
                self._content(span, call.capture, "gen_ai.output.messages", json.dumps(out),
                              "stalwart.output.sha256")
            metric_attrs["gen_ai.response.model"] = response.model
            if self._metrics:
                for token_type, count in (("input", response.usage.input_tokens),
                                          ("output", response.usage.output_tokens)):
                    self._token_usage.record(count, {**metric_attrs,
                                                     "gen_ai.token.type": token_type})
        self._finish_call(call, input.error, metric_attrs)

    def _finish_call(self, call: _Call, error: BaseException | None,
                     metric_attrs: dict[str, Any]) -> None:
        if error is not None:
            kind = type(error).__name__
            call.span.set_attribute("error.type", kind)
            call.span.set_status(Status(StatusCode.ERROR, str(error)))
            metric_attrs["error.type"] = kind
        end = self._clock.now()
        call.span.end(end_time=_ns(end))
        if self._metrics:
            self._duration.record(max(0.0, end - call.started), metric_attrs)

    def tool_call_started(self, input: ToolCallStartInput) -> Any:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": input.tool,
            "stalwart.run_id": input.run_id, "stalwart.step_id": input.step_id,
            "stalwart.attempt": input.attempt}
        if input.call_id is not None:
            attributes["gen_ai.tool.call.id"] = input.call_id
        call = self._call_span(input.run_id, input.step_id, f"execute_tool {input.tool}",
                               (str(input.attempt),), SpanKind.INTERNAL, attributes)
        if call is not None and call.capture:
            self._content(call.span, call.capture, "gen_ai.tool.call.arguments",
                          _json(dict(input.arguments)), "stalwart.input.sha256")
        return call

    def tool_call_ended(self, input: ToolCallEndInput) -> None:
        call = input.handle
        if not isinstance(call, _Call):
            return
        if input.error is None and call.capture:
            self._content(call.span, call.capture, "gen_ai.tool.call.result",
                          _json(input.result), "stalwart.output.sha256")
        self._finish_call(call, input.error, {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": call.attributes["gen_ai.tool.name"]})

    # -- user code -------------------------------------------------------------------

    def activated(self, run_id: str, step_id: str,
                  handle: Any = None) -> contextlib.AbstractContextManager[object]:
        """Make a tool or model call's span OpenTelemetry's current span, so spans the
        code it runs starts (its own, or an instrumented library's) are its children.
        A step's function needs nothing here: the run's current span (``_RunSpan``)
        resolves to the step's span through the runtime's step context."""
        if isinstance(handle, _Call):
            return _Current(handle.span.get_span_context())
        return _NOTHING

    # -- policies --------------------------------------------------------------------

    def policy_noted(self, input: PolicyInput) -> None:
        if input.action == "retried" and self._metrics:
            self._retries.add(1, {"stalwart.policy.key": input.key})
        state = self._runs.get(input.run_id)
        span = (state.promote(input.step_id) if state is not None
                and input.step_id is not None else None)
        if span is None or state is None or input.step_id is None:
            return
        span.add_event(f"stalwart.{input.action}", {"stalwart.policy.key": input.key},
                       timestamp=_ns(self._clock.now()))
        if input.action == "retried":
            retries = state.retries
            if retries is None:
                retries = state.retries = {}
            retries[input.step_id] = retries.get(input.step_id, 0) + 1
            span.set_attribute("stalwart.retried", True)
        elif input.action == "fallback_answered":
            span.set_attribute("stalwart.fallback.model", input.key)
        elif input.action == "breaker_rejected":
            span.set_attribute("stalwart.breaker.rejected", True)

    # -- metrics ---------------------------------------------------------------------

    def _setup_metrics(self, provider: metrics_api.MeterProvider) -> None:
        meter = provider.get_meter(_SCOPE)
        self._token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS)
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS)
        self._retries = meter.create_counter(
            "stalwart.retries", unit="{retry}",
            description="Attempts retried by the retry policy")
        runtime = self._runtime
        meter.create_observable_gauge(
            "stalwart.breaker.state", callbacks=[lambda o: _breaker_states(runtime(), o)],
            description="Circuit breaker state: 0 closed, 1 half-open, 2 open")
        meter.create_observable_gauge(
            "stalwart.bulkhead.queued", unit="{call}",
            callbacks=[lambda o: _bulkheads(runtime(), "queued")],
            description="Calls waiting for a bulkhead slot")
        meter.create_observable_gauge(
            "stalwart.bulkhead.active", unit="{call}",
            callbacks=[lambda o: _bulkheads(runtime(), "active")],
            description="Calls holding a bulkhead slot")


def _breaker_states(runtime: Runtime | None, options: CallbackOptions) -> Iterable[Observation]:
    if runtime is None:
        return []
    return [Observation(_BREAKER_LEVEL.get(str(s.state), 0),
                        {"stalwart.breaker.key": key, "stalwart.breaker.state": str(s.state)})
            for key, s in runtime.breakers.statistics().items()]


def _bulkheads(runtime: Runtime | None, which: str) -> Iterable[Observation]:
    if runtime is None:
        return []
    return [Observation(getattr(s, which), {"stalwart.bulkhead.pool": name})
            for name, s in runtime.bulkheads.statistics().items()]
