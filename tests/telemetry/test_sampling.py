"""Sampling through the SDK's samplers: ``Tracing(sampler=...)`` decides once per run, a
provider's own sampler (``OTEL_TRACES_SAMPLER`` for the one ``configure()`` builds)
decides as for any span. A sampled run's spans are the spans tracing everything makes, a
dropped run makes none (nor its child runs, its redrives or the user's spans inside it),
and metrics count every run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace as trace_api
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)

import stalwart as sw
from stalwart.models import ModelRequest, ToolCallRequest
from stalwart.telemetry import Tracing, configure, trace_id_for
from stalwart.testing import MemoryStore

from .conftest import Otel

RUNS = [f"sampled-{i}" for i in range(24)]
RATIO = 0.5
USER: list[trace_api.Tracer] = []
RESOURCE = Resource({"service.name": "sampling"})


def kept(run_id: str) -> bool:
    return TraceIdRatioBased(RATIO).should_sample(
        None, trace_id_for(run_id), "").decision is Decision.RECORD_AND_SAMPLE


def script(request: ModelRequest) -> str | ToolCallRequest:
    if request.messages[-1].role == "user":
        return ToolCallRequest.create("call-1", "lookup", {"q": "tide"})
    return "high tide"


async def lookup(q: str) -> str:
    with USER[-1].start_as_current_span("SELECT tides"):  # the user's own span
        return f"{q}: high"


async def note(text: str) -> str:
    return text.upper()


def make(provider_sampler: Sampler | None = None) -> Otel:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=provider_sampler, resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    return Otel(exporter, reader, provider, MeterProvider(metric_readers=[reader]))


async def run_all(otel: Otel, sampler: Sampler | None = None) -> None:
    """Every run of RUNS: an agent with a tool (the user's span inside), a child run."""
    USER.append(otel.tracer_provider.get_tracer("user"))
    clock = sw.FakeClock(autojump=True)
    app = sw.Runtime(MemoryStore(), clock=clock,
                     tracing=Tracing(tracer_provider=otel.tracer_provider,
                                     meter_provider=otel.meter_provider, sampler=sampler),
                     models={"sim:tide": sw.SimulatedModel("tide", clock=clock, script=script)})
    agent = sw.Agent("pilot", "sim:tide", tools=[sw.Tool(lookup)])

    @app.workflow(name="leaf")
    async def leaf(ctx: sw.Context) -> str:
        return await ctx.step(note, "leaf", name="note")

    @app.workflow(name="voyage")
    async def voyage(ctx: sw.Context) -> str:
        answer = await agent.run(ctx, "tide?")
        return f"{answer} {await ctx.child(leaf)}"

    async with app:
        for run_id in RUNS:
            assert await app.run(voyage, run_id=run_id) == "high tide LEAF"


def dump(span: ReadableSpan) -> tuple[Any, ...]:
    """What an exporter reads from one of stalwart's spans."""
    ctx, parent = span.context, span.parent
    assert ctx is not None
    return (span.name, ctx.trace_id, ctx.span_id, int(ctx.trace_flags),
            None if parent is None else (parent.span_id, int(parent.trace_flags)),
            span.kind, dict(span.attributes or {}), [e.name for e in span.events],
            span.status.status_code, span.start_time, span.end_time)


def stalwarts(otel: Otel) -> list[tuple[Any, ...]]:
    return sorted(dump(s) for s in otel.spans() if s.instrumentation_scope is not None
                  and s.instrumentation_scope.name == "stalwart")


@pytest.fixture
def otels() -> Iterator[list[Otel]]:
    made: list[Otel] = []
    yield made
    for otel in made:
        otel.tracer_provider.shutdown()
        otel.meter_provider.shutdown()


def token_counts(otel: Otel) -> int:
    data = otel.reader.get_metrics_data()
    assert data is not None
    return sum(point.count for rm in data.resource_metrics for sm in rm.scope_metrics
               for metric in sm.metrics if metric.name == "gen_ai.client.token.usage"
               for point in metric.data.data_points if isinstance(point, HistogramDataPoint))


@pytest.mark.parametrize("where", ["Tracing(sampler=)", "provider sampler"])
async def test_a_sampled_run_is_traced_whole_and_a_dropped_one_not_at_all(
        where: str, otels: list[Otel]) -> None:
    """A ratio sampler keeps about half the runs: exactly their traces, each as tracing
    everything makes it, with their child runs and the user's spans; metrics count all."""
    everything = make()
    if where == "provider sampler":
        sampled = make(ParentBasedTraceIdRatio(RATIO))
        otels += [everything, sampled]
        await run_all(everything)
        await run_all(sampled)
    else:
        sampled = make()
        otels += [everything, sampled]
        await run_all(everything)
        await run_all(sampled, TraceIdRatioBased(RATIO))

    traces = {trace_id_for(r) for r in RUNS if kept(r)}
    assert 0 < len(traces) < len(RUNS)
    expected = [d for d in stalwarts(everything) if d[1] in traces]
    assert stalwarts(sampled) == expected
    assert {d[0] for d in expected} >= {
        "workflow voyage", "workflow leaf", "invoke_agent pilot", "chat tide",
        "execute_tool lookup", "step note"}
    # The user's spans (random ids, real time): one per sampled run, under its tool call.
    users = [s for s in sampled.spans() if s.name == "SELECT tides"]
    assert sorted(s.context.trace_id for s in users) == sorted(traces)
    tools = {s.context.span_id for s in sampled.spans() if s.name == "execute_tool lookup"}
    assert {s.parent.span_id for s in users if s.parent is not None} == tools
    # Metrics are not sampled: every model call of every run is counted.
    assert token_counts(sampled) == token_counts(everything) == 2 * 2 * len(RUNS)


async def test_a_redrive_of_a_dropped_run_is_dropped_too(otels: list[Otel]) -> None:
    """The redrive's span hangs under the run's span by id: it is sampled as the run was
    (a parent-based sampler does not take it for a sampled remote parent)."""
    otel = make(ParentBasedTraceIdRatio(RATIO))
    otels.append(otel)
    healthy: list[bool] = []

    async def service() -> str:
        if not healthy:
            raise TimeoutError("down")
        return "up"

    tool = sw.Tool(service, policy=sw.Policy(retry=sw.Retry(max_attempts=1), breaker=None))
    app = sw.Runtime(MemoryStore(), clock=sw.FakeClock(autojump=True), tracing=otel.tracing())

    @app.workflow(name="flaky")
    async def flaky(ctx: sw.Context) -> str:
        return await ctx.tool(tool)

    dropped = next(r for r in RUNS if not kept(r))
    chosen = next(r for r in RUNS if kept(r))
    async with app:
        for run_id in (dropped, chosen):
            handle = await app.start(flaky, run_id=run_id)
            with pytest.raises(sw.RunFailedError):
                await handle.result()
        healthy.append(True)
        for run_id in (dropped, chosen):
            await app.redrive(run_id)
            assert await app.handle(run_id).result() == "up"
    assert {s.context.trace_id for s in otel.spans()} == {trace_id_for(chosen)}
    assert len(otel.named("workflow flaky")) == 2  # the kept run's, and its redrive's


def test_otel_traces_sampler_sets_the_sampler_of_the_provider_configure_builds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """configure() leaves OTEL_TRACES_SAMPLER to the SDK; a sampler argument wins."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    providers = configure(set_global=False)
    assert providers is not None
    assert "TraceIdRatioBased{0.25}" in providers.tracer_provider.sampler.get_description()
    providers = configure(set_global=False, sampler=TraceIdRatioBased(0.75))
    assert providers is not None
    assert providers.tracer_provider.sampler.get_description() == "TraceIdRatioBased{0.75}"
