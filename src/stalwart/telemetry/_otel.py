"""The OpenTelemetry interceptor: spans and metrics for the runs of one runtime.

Span tree of a run (every id derived from the journal's names, see ``_ids``)::

    workflow {name}                     the run: from its creation to its end
      step {name}                       a step that executed (``Tracing(steps=...)``)
      invoke_agent {agent}              an agent's loop
        step chat:{agent}               the model turn (a journaled step)
          chat {model}                  each attempt, each fallback model
        step tool:{name}
          execute_tool {name}           each attempt

Every span is the SDK's own: ``Tracer.start_span`` under an explicit parent (a run's
steps span several tasks and processes, so not the ambient context), with the ids
stalwart chose (``RunIdGenerator``), then ``Span.end``. Nothing is emitted for a step
replayed from the journal, nor for an agent whose steps all replay. A run span is ended
by the execution that ends the run; one that parks it or dies leaves its spans unended,
so unexported, and the next starts them again with the same ids. Span times come from
the runtime's clock (virtual under a ``FakeClock``). A redrive (``dlq retry``) gets a
``workflow`` span of its own under the run's, and ids of its own. User code runs with
its step's or call's span current, workflow code with the run's.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from opentelemetry import context as otel_context
from opentelemetry import metrics as metrics_api
from opentelemetry import trace as trace_api
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind
from pydantic import TypeAdapter

from ..engine._interceptor import (
    AgentEndInput,
    AgentStartInput,
    BindInput,
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
from ..errors import ConfigurationError
from ._ids import span_id_for, trace_id_for
from ._setup import CHOSEN, RunIdGenerator, configure


class Settings(Protocol):
    """What the interceptor reads of its :class:`~stalwart.telemetry.Tracing` (which
    imports this module when it binds, not the other way round)."""

    @property
    def tracer_provider(self) -> Any: ...
    @property
    def meter_provider(self) -> Any: ...
    @property
    def metrics(self) -> bool: ...
    @property
    def capture_content(self) -> CaptureContent: ...
    @property
    def steps(self) -> Literal["all", "calls", "none"]: ...
    @property
    def sampler(self) -> Any: ...

__all__ = ["OTelInterceptor"]

_SCOPE = "stalwart"
_TRACES_KEPT = 10_000
"""Trace ids of recent runs kept in memory, so their child runs join their trace."""
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                  16777216, 67108864)
_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24,
                     20.48, 40.96, 81.92)
_BREAKER_LEVEL = {"closed": 0, "half_open": 1, "open": 2}
_SAMPLED = trace_api.TraceFlags(trace_api.TraceFlags.SAMPLED)
_NOT_SAMPLED = trace_api.TraceFlags(trace_api.TraceFlags.DEFAULT)
_EMPTY = otel_context.Context()
_NOTHING: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
_ANY: TypeAdapter[Any] = TypeAdapter(Any)

_Step = Span | tuple[str, int]
"""A step executing: its span, or (``steps="calls"``) its name and start, until a call
inside it needs its span."""


@dataclass(slots=True)
class _Run:
    """A run executing here. ``steps`` is ``None`` for a run its sampler dropped."""

    run_id: str
    redrive: tuple[str, ...]
    """``()``, or ``("redrive", n)`` in the n-th redrive: its spans' ids are its own."""
    trace_id: int
    span: Span
    steps: dict[str, _Step] | None
    token: object = None
    retries: dict[str, int] = field(default_factory=dict)

    def span_id(self, *what: str) -> int:
        return span_id_for(self.run_id, *self.redrive, *what)


@dataclass(slots=True)
class _Agent:
    run_id: str
    span_id: int
    name: str
    attributes: dict[str, Any]
    started: float
    capture: CaptureContent | None
    span: Span | None = None
    token: contextvars.Token[tuple[_Agent, ...]] | None = None


@dataclass(slots=True)
class _Call:
    span: Span
    started: float
    attributes: dict[str, Any]
    capture: CaptureContent


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _json(value: Any) -> str:
    try:
        return _ANY.dump_json(value).decode()
    except Exception:
        return json.dumps(str(value))


def _error_of(info_json: str) -> tuple[str, str]:
    """``(error.type, message)`` of an ``ErrorInfo`` JSON (something readable if not)."""
    try:
        info = json.loads(info_json)
        return str(info.get("type") or "error"), str(info.get("message") or "")
    except (ValueError, AttributeError):
        return "error", info_json[:200]


def _fail(span: Span, kind: str, message: str) -> None:
    span.set_attribute("error.type", kind)
    span.set_status(trace_api.Status(trace_api.StatusCode.ERROR, message))


def _provider(config: Settings) -> SdkTracerProvider:
    provider = config.tracer_provider
    if provider is None:
        provider = trace_api.get_tracer_provider()
        if not isinstance(provider, SdkTracerProvider):
            configure()
            provider = trace_api.get_tracer_provider()
    if not isinstance(provider, SdkTracerProvider):
        raise ConfigurationError(
            "Tracing needs an OpenTelemetry SDK TracerProvider (its spans get ids derived "
            f"from the run, so a resumed run continues its trace); got {type(provider).__name__}")
    return provider


class OTelInterceptor(Interceptor):
    """Spans and metrics for one runtime's runs (built by :meth:`Tracing.bind`)."""

    def __init__(self, config: Settings, bound: BindInput) -> None:
        provider = _provider(config)
        if not isinstance(provider.id_generator, RunIdGenerator):
            # A public attribute, typed by the SDK after its default (RandomIdGenerator).
            provider.id_generator = RunIdGenerator(  # type: ignore[assignment]
                provider.id_generator)
        self._tracer = provider.get_tracer(_SCOPE)
        if not isinstance(getattr(self._tracer, "id_generator", None), RunIdGenerator):
            raise ConfigurationError(
                "the TracerProvider made its 'stalwart' tracer before Tracing was bound; "
                "build it with TracerProvider(id_generator=stalwart.telemetry.RunIdGenerator())")
        self._samplers = [s for s in (config.sampler, getattr(provider, "sampler", None))
                          if s is not None]
        self._sampler = config.sampler
        self._steps = config.steps
        self._capture_default = config.capture_content
        self._clock = bound.clock
        self.bound = bound
        """What the runtime handed over: its clock, breakers and bulkheads."""
        self._runs: dict[str, _Run] = {}
        self._traces: dict[str, int] = {}
        self._agents: contextvars.ContextVar[tuple[_Agent, ...]] = contextvars.ContextVar(
            "stalwart_otel_agents", default=())
        self._metrics = config.metrics
        if config.metrics:
            self._setup_metrics(config.meter_provider or metrics_api.get_meter_provider())

    # -- spans -----------------------------------------------------------------------

    def _now(self) -> int:
        return _ns(self._clock.now())

    def _start(self, name: str, trace_id: int, span_id: int, parent: Span | None, start: int,
               attributes: dict[str, Any], kind: SpanKind = SpanKind.INTERNAL) -> Span:
        """An SDK span with the ids stalwart chose, under ``parent`` (``None``: a root)."""
        token = CHOSEN.set((trace_id, span_id))
        try:
            return self._tracer.start_span(
                name, context=_EMPTY if parent is None
                else trace_api.set_span_in_context(parent, _EMPTY),
                kind=kind, attributes=attributes, start_time=start)
        finally:
            CHOSEN.reset(token)

    def _elsewhere(self, trace_id: int, span_id: int) -> Span:
        """A span of this trace that another execution emits (or emitted): a parent, by
        id. Sampled as the trace's root would be, so a run its sampler dropped does not
        get traced children."""
        sampled = all(s.should_sample(None, trace_id, "workflow").decision.is_sampled()
                      for s in self._samplers)
        return NonRecordingSpan(SpanContext(trace_id, span_id, True,
                                            _SAMPLED if sampled else _NOT_SAMPLED))

    def _parent_of_child(self, parent_run: str, parent_step: str | None,
                         trace_id: int) -> Span:
        """A child run's parent span: its parent's ``child:`` step (the parent run's own
        span with ``steps="none"``), from the parent's execution if it runs here."""
        executing = self._runs.get(parent_run)
        if parent_step is not None and self._steps != "none":
            if executing is not None and executing.steps is not None:
                step = executing.steps.get(parent_step)
                if step is not None and not isinstance(step, tuple):
                    return step
            return self._elsewhere(trace_id, span_id_for(parent_run, "step", parent_step))
        if executing is not None:
            return executing.span
        return self._elsewhere(trace_id, span_id_for(parent_run, "run"))

    def run_started(self, input: RunStartInput) -> None:
        run = input.run
        attributes: dict[str, Any] = {"stalwart.run_id": run.run_id,
                                      "stalwart.workflow": run.workflow}
        parent: Span | None = None
        # A child run's trace is its parent's (remembered here while the parent is).
        trace_id = self._traces.get(run.run_id) or trace_id_for(run.run_id)
        if run.parent_run_id is not None:
            parent_run = run.parent_run_id
            trace_id = self._traces[run.run_id] = (self._traces.get(parent_run)
                                                    or trace_id_for(parent_run))
            if len(self._traces) > _TRACES_KEPT:
                del self._traces[next(iter(self._traces))]
            attributes["stalwart.parent_run_id"] = run.parent_run_id
            parent = self._parent_of_child(run.parent_run_id, run.parent_step_id, trace_id)
        if input.resumed:
            attributes["stalwart.resumed"] = True
        at = run.created_at
        if input.redrives:
            # The run's span ended when it was dead-lettered, and its steps' spans with
            # it: what a redrive executes gets ids of its own, under a span of its own
            # that is a child of the run's (a span is emitted once).
            parent = self._elsewhere(trace_id, span_id_for(run.run_id, "run"))
            attributes["stalwart.redrive"] = input.redrives
            at = input.redriven_at if input.redriven_at is not None else self._clock.now()
        redrive = ("redrive", str(input.redrives)) if input.redrives else ()
        span_id = span_id_for(run.run_id, *redrive, "run")
        name = f"workflow {run.workflow}"
        span: Span
        if self._sampler is not None and not self._sampler.should_sample(
                _EMPTY if parent is None else trace_api.set_span_in_context(parent, _EMPTY),
                trace_id, name, SpanKind.INTERNAL, attributes).decision.is_sampled():
            span = NonRecordingSpan(SpanContext(trace_id, span_id, False, _NOT_SAMPLED))
        else:
            span = self._start(name, trace_id, span_id, parent, _ns(at), attributes)
        # Workflow code between steps runs with the run's span current: spans it makes
        # (or, for a dropped run, drops) nest there.
        self._runs[run.run_id] = _Run(
            run.run_id, redrive, trace_id, span, {} if span.is_recording() else None,
            otel_context.attach(trace_api.set_span_in_context(span)))

    def run_ended(self, input: RunEndInput) -> None:
        state = self._runs.pop(input.run.run_id, None)
        if state is None:
            return
        otel_context.detach(state.token)  # type: ignore[arg-type]
        if state.steps is None or not input.terminal:
            return  # dropped, parked or interrupted: the execution that ends it emits it
        span = state.span
        span.set_attribute("stalwart.run.status", str(input.status))
        if input.status in ("failed", "dead_lettered"):
            _fail(span, *_error_of(input.error or "{}"))
        span.end(self._now())

    def _enclosing(self, state: _Run) -> Span:
        """The span that a step or call of ``state``'s run hangs under: its innermost
        agent's (started now if it was not yet), else the run's."""
        parent = state.span
        for frame in self._agents.get():
            if frame.run_id != state.run_id:
                continue
            if frame.span is None:
                frame.span = self._start(
                    f"invoke_agent {frame.name}", state.trace_id, frame.span_id, parent,
                    _ns(frame.started), dict(frame.attributes))
            parent = frame.span
        return parent

    def _step_span(self, state: _Run, step_id: str, name: str, start: int) -> Span:
        span = self._start(f"step {name}", state.trace_id, state.span_id("step", step_id),
                           self._enclosing(state), start,
                           {"stalwart.run_id": state.run_id, "stalwart.step_id": step_id,
                            "stalwart.step.name": name})
        if state.steps is not None:
            state.steps[step_id] = span
        return span

    def _step(self, state: _Run, step_id: str) -> Span | None:
        """Step ``step_id``'s span, started now if a call inside it is the first to need
        it (``steps="calls"``); ``None`` if it has none."""
        step = state.steps.get(step_id) if state.steps is not None else None
        return self._step_span(state, step_id, *step) if isinstance(step, tuple) else step

    def step_started(self, input: StepStartInput) -> None:
        state = self._runs.get(input.run_id)
        if state is None or state.steps is None or self._steps == "none":
            return
        step_id, name = input.step_id, input.name
        if step_id in state.steps:
            return
        start = self._now() if input.since is None else _ns(input.since)
        if self._steps == "calls" and not name.startswith("child:"):
            state.steps[step_id] = (name, start)  # its span when a call inside needs it
        else:
            self._step_span(state, step_id, name, start)

    def step_ended(self, input: StepEndInput) -> None:
        state = self._runs.get(input.run_id)
        if state is None or state.steps is None:
            return
        span = state.steps.pop(input.step_id, None)
        if span is None or isinstance(span, tuple):
            return
        retries = state.retries.pop(input.step_id, 0)
        if retries:
            span.set_attribute("stalwart.retries", retries)
        if input.error is not None:
            _fail(span, *_error_of(input.error))
        span.end(self._now())

    # -- agents ----------------------------------------------------------------------

    def agent_started(self, input: AgentStartInput) -> Any:
        state = self._runs.get(input.run_id)
        if state is None or state.steps is None:
            return None
        frame = _Agent(
            run_id=input.run_id, name=input.agent,
            span_id=state.span_id("agent", input.first_step_id),
            attributes={"gen_ai.operation.name": "invoke_agent",
                        "gen_ai.agent.name": input.agent,
                        "gen_ai.provider.name": input.provider,
                        "gen_ai.request.model": input.model,
                        "stalwart.run_id": input.run_id,
                        "stalwart.step_id": input.first_step_id},
            started=self._clock.now() if input.since is None else input.since,
            capture=input.capture_content)
        frame.token = self._agents.set((*self._agents.get(), frame))
        if input.live:
            self._enclosing(state)
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
            _fail(span, type(input.error).__name__, str(input.error))
        span.end(self._now())

    def _capture(self) -> CaptureContent:
        frames = self._agents.get()
        if frames and frames[-1].capture is not None:
            return frames[-1].capture
        return self._capture_default

    @staticmethod
    def _content(span: Span, capture: CaptureContent, key: str, text: str,
                 digest_key: str) -> None:
        if capture:
            span.set_attribute(*(digest_key, hashlib.sha256(text.encode()).hexdigest())
                               if capture == "hash" else (key, text))

    # -- model and tool calls --------------------------------------------------------

    def _call_span(self, run_id: str, step_id: str, name: str, what: tuple[str, ...],
                   kind: SpanKind, attributes: dict[str, Any]) -> _Call | None:
        state = self._runs.get(run_id)
        if state is None:
            return None
        at = self._clock.now()
        if state.steps is None:  # a dropped run: no span, but the call's metrics
            return _Call(state.span, at, attributes, False)
        parent = self._step(state, step_id) or self._enclosing(state)
        span = self._start(name, state.trace_id, state.span_id("call", step_id, *what),
                           parent, _ns(at), dict(attributes), kind)
        return _Call(span, at, attributes, self._capture())

    def model_call_started(self, input: ModelCallStartInput) -> Any:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": input.provider,
            "gen_ai.request.model": input.model, "stalwart.run_id": input.run_id,
            "stalwart.step_id": input.step_id, "stalwart.attempt": input.attempt}
        if input.agent is not None:
            attributes["gen_ai.agent.name"] = input.agent
        options = input.request.options
        attributes.update({f"gen_ai.request.{name}": value for name in (
            "temperature", "max_tokens", "top_p", "seed")
            if (value := getattr(options, name)) is not None})
        breakers = self.bound.breakers
        if input.key in breakers:
            attributes["stalwart.breaker.state"] = str(breakers.get(input.key).state)
        call = self._call_span(input.run_id, input.step_id, f"chat {input.model}",
                               (input.key, str(input.attempt)), SpanKind.CLIENT, attributes)
        if call is not None and call.capture:
            # the messages as sent (GenAI conventions); their origins are in the journal
            messages = [m.model_dump(mode="json", exclude_none=True, exclude={"origin"})
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
            _fail(call.span, type(error).__name__, str(error))
            metric_attrs["error.type"] = type(error).__name__
        end = self._clock.now()
        call.span.end(_ns(end))
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
        """Make the call's span (``handle``), else the step's, OpenTelemetry's current
        span while user code runs, so the spans it starts (its own, or an instrumented
        library's) are its children. Without one, the run's stays current."""
        if isinstance(handle, _Call):
            span: _Step | None = handle.span
        else:
            state = self._runs.get(run_id)
            span = state.steps.get(step_id) if state is not None and state.steps else None
        if span is None or isinstance(span, tuple):
            return _NOTHING
        return trace_api.use_span(span, record_exception=False, set_status_on_exception=False)

    # -- policies --------------------------------------------------------------------

    def policy_noted(self, input: PolicyInput) -> None:
        if input.action == "retried" and self._metrics:
            self._retries.add(1, {"stalwart.policy.key": input.key})
        elif input.action == "semantic_failure" and self._metrics:
            self._semantic.add(1, {"stalwart.policy.key": input.key})
        elif input.action == "oscillation" and self._metrics:
            self._oscillations.add(1, {"stalwart.policy.key": input.key})
        state = self._runs.get(input.run_id)
        if state is None or state.steps is None or input.step_id is None:
            return
        step = self._step(state, input.step_id)
        span = step if step is not None else (
            self._enclosing(state) if self._steps == "none" else None)
        if span is None:
            return  # the step is not executing here
        span.add_event(f"stalwart.{input.action}", {"stalwart.policy.key": input.key},
                       timestamp=self._now())
        if step is None:
            return
        if input.action == "retried":
            state.retries[input.step_id] = state.retries.get(input.step_id, 0) + 1
            step.set_attribute("stalwart.retried", True)
        elif input.action == "fallback_answered":
            step.set_attribute("stalwart.fallback.model", input.key)
        elif input.action == "breaker_rejected":
            step.set_attribute("stalwart.breaker.rejected", True)

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
        self._semantic = meter.create_counter(
            "stalwart.semantic_failures", unit="{failure}",
            description="Answers that were wrong though the call succeeded: a voter "
                        "dissenting from the winner, a draft a critic rejected, a "
                        "failed Reflexion trial, a refuted blackboard entry "
                        "(key: the model, or the member without one)")
        self._oscillations = meter.create_counter(
            "stalwart.oscillations", unit="{oscillation}",
            description="Loops seen alternating between the same outputs, A->B->A->B "
                        "(key: the loop)")
        # The meter provider keeps its callbacks for good: they hold this interceptor
        # weakly, so a runtime that is gone stops reporting (and is not kept alive).
        me = weakref.ref(self)
        meter.create_observable_gauge(
            "stalwart.breaker.state", callbacks=[lambda o: _breaker_states(me(), o)],
            description="Circuit breaker state: 0 closed, 1 half-open, 2 open")
        meter.create_observable_gauge(
            "stalwart.bulkhead.queued", unit="{call}",
            callbacks=[lambda o: _bulkheads(me(), "queued")],
            description="Calls waiting for a bulkhead slot")
        meter.create_observable_gauge(
            "stalwart.bulkhead.active", unit="{call}",
            callbacks=[lambda o: _bulkheads(me(), "active")],
            description="Calls holding a bulkhead slot")


def _breaker_states(it: OTelInterceptor | None,
                    options: CallbackOptions) -> Iterable[Observation]:
    if it is None:
        return []
    return [Observation(_BREAKER_LEVEL.get(str(s.state), 0),
                        {"stalwart.breaker.key": key, "stalwart.breaker.state": str(s.state)})
            for key, s in it.bound.breakers.statistics().items()]


def _bulkheads(it: OTelInterceptor | None, which: str) -> Iterable[Observation]:
    if it is None:
        return []
    return [Observation(getattr(s, which), {"stalwart.bulkhead.pool": name})
            for name, s in it.bound.bulkheads.statistics().items()]
