"""Sampling decides once per run, from the run's trace id, as the SDK's trace-id samplers
decide each span: a sampled run's spans are the spans tracing everything would make,
a dropped run makes none (and code inside it starts none), and metrics count every run."""

from __future__ import annotations

from collections.abc import Iterator

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
from stalwart.telemetry import trace_id_for
from stalwart.testing import MemoryStore

from .conftest import Otel
from .test_direct_spans import dump, exported

RUNS = [f"sampled-{i}" for i in range(24)]
RATIO = 0.5
USER: list[trace_api.Tracer] = []
RESOURCE = Resource({"service.name": "sampling"})


def script(request: ModelRequest) -> str | ToolCallRequest:
    if request.messages[-1].role == "user":
        return ToolCallRequest.create("call-1", "lookup", {"q": "tide"})
    return "high tide"


async def lookup(q: str) -> str:
    with USER[-1].start_as_current_span("SELECT tides"):  # the user's own span
        return f"{q}: high"


async def note(text: str) -> str:
    return text.upper()


def make(sampler: Sampler | None) -> Otel:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler, resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    return Otel(exporter, reader, provider, MeterProvider(metric_readers=[reader]))


async def run_all(otel: Otel) -> bool | None:
    """Every run of RUNS (an agent with a tool, a child run); returns how the sink
    decides a run's spans (None: the SDK path)."""
    USER.append(otel.tracer_provider.get_tracer("user"))
    clock = sw.FakeClock(autojump=True)
    app = sw.Runtime(MemoryStore(), clock=clock, tracing=otel.tracing(),
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
        return app.interceptor._sink.sampled(trace_id_for(RUNS[0]))  # type: ignore[attr-defined]


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


@pytest.mark.parametrize("sampler", [ParentBasedTraceIdRatio(RATIO), TraceIdRatioBased(RATIO)],
                         ids=["parentbased_traceidratio", "traceidratio"])
async def test_a_sampled_run_is_traced_whole_and_a_dropped_one_not_at_all(
        sampler: Sampler, otels: list[Otel]) -> None:
    everything, sampled = make(None), make(sampler)
    otels += [everything, sampled]
    assert await run_all(everything) is True
    assert await run_all(sampled) is not None  # decided per run, spans built directly

    kept = {trace_id_for(r) for r in RUNS if TraceIdRatioBased(RATIO).should_sample(
        None, trace_id_for(r), "").decision is Decision.RECORD_AND_SAMPLE}
    assert 0 < len(kept) < len(RUNS)
    # Exactly the sampled runs' traces, each as tracing everything makes it; the child
    # runs and the user's spans inside a dropped run are dropped with it.
    def stalwarts(otel: Otel) -> list[ReadableSpan]:
        return [s for s in exported(otel) if s.instrumentation_scope.name == "stalwart"]

    expected = [dump(s) for s in stalwarts(everything) if s.context.trace_id in kept]
    assert [dump(s) for s in stalwarts(sampled)] == expected
    assert {name for name, *_ in expected} >= {
        "workflow voyage", "workflow leaf", "invoke_agent pilot", "chat tide",
        "execute_tool lookup", "step note"}
    # The user's spans (random ids, real time): one per sampled run, under its tool call.
    users = [s for s in sampled.spans() if s.instrumentation_scope.name == "user"]
    assert sorted(s.context.trace_id for s in users) == sorted(kept)
    tools = {s.context.span_id for s in sampled.spans() if s.name == "execute_tool lookup"}
    assert {s.parent.span_id for s in users if s.parent is not None} == tools
    # Metrics are not sampled: every model call of every run is counted.
    assert token_counts(sampled) == token_counts(everything) == 2 * 2 * len(RUNS)
