"""Spans built directly (without the SDK's ``Span``) are the spans the SDK path builds:
same ids, parents, attributes, events, status, times, resource and scope, and the same
OTLP bytes. Other samplers and processors that watch span starts take the SDK path."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.context import Context as OtelContext
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import (
    ReadableSpan,
    Span,
    SpanLimits,
    SpanProcessor,
    TracerProvider,
)
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Sampler, TraceIdRatioBased
from opentelemetry.trace import StatusCode

import stalwart as sw
from stalwart.errors import ProviderOverloadedError
from stalwart.models import Latency
from stalwart.telemetry import span_id_for
from stalwart.telemetry._ids import RunIds
from stalwart.testing import MemoryStore

from .conftest import Otel
from .test_spans import RETRY, research

RESOURCE = Resource.create({"service.name": "direct-spans"})


class WatchesStarts(SpanProcessor):
    """A processor that looks at spans as they start (so no span may skip ``on_start``)."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def on_start(self, span: Span, parent_context: OtelContext | None = None) -> None:
        self.started.append(span.name)


def make_otel(*, sampler: Sampler | None = None, limits: SpanLimits | None = None,
              watch: WatchesStarts | None = None) -> Otel:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler, span_limits=limits, resource=RESOURCE)
    if watch is not None:
        provider.add_span_processor(watch)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    return Otel(exporter, reader, provider, MeterProvider(metric_readers=[reader]))


calls: list[int] = []
# Async steps and tools only: a sync one runs in a thread, and an autojumping FakeClock
# may move on while the loop waits for it, so two runs would differ in their timestamps.


async def flaky(n: int) -> int:
    """Fails every other call (the first of each run), then returns ``n``."""
    calls.append(n)
    if len(calls) % 2 == 1:
        raise ConnectionError("flaky: first call")
    return n


async def broken() -> int:
    raise ValueError("broken for good")


async def lookup(q: str) -> str:
    return f"{q} is true"


async def run_everything(otel: Otel) -> bool:
    """Agents with a tool, a retried model call, a child run with a retried tool call
    and a run that fails; returns whether the interceptor built its spans directly."""
    calls.clear()
    clock = sw.FakeClock(autojump=True)
    researcher_model = sw.SimulatedModel("r1", clock=clock, latency=Latency.fixed(0.25),
                                         script=research)
    writer_model = sw.SimulatedModel("w1", clock=clock, latency=Latency.fixed(0.5), script=[
        ProviderOverloadedError("sim:w1: busy", provider="sim", model="w1", status_code=503),
        "the report"])
    app = sw.Runtime(MemoryStore(), clock=clock, models={"sim:r1": researcher_model,
                                                         "sim:w1": writer_model},
                     tracing=otel.tracing())
    researcher = sw.Agent("researcher", "sim:r1", tools=[sw.Tool(lookup)], policy=RETRY)
    writer = sw.Agent("writer", "sim:w1", policy=RETRY)
    flaky_tool = sw.Tool(flaky)

    @app.workflow(name="report")
    async def report(ctx: sw.Context, topic: str) -> str:
        facts = await ctx.gather(researcher.run(ctx, f"{topic} A"),
                                 researcher.run(ctx, f"{topic} B"))
        return await writer.run(ctx, "; ".join(facts))

    @app.workflow(name="sub")
    async def sub(ctx: sw.Context) -> int:
        return await ctx.tool(flaky_tool, policy=RETRY, n=7)

    @app.workflow(name="failing")
    async def failing(ctx: sw.Context) -> int:
        await ctx.child(sub)
        return await ctx.step(broken, name="broken")

    async with app:
        assert await app.run(report, "tides", run_id="report-1") == "the report"
        with pytest.raises(sw.RunFailedError, match="broken for good"):
            await app.run(failing, run_id="failing-1")
        return bool(app.interceptor._sink.direct())  # type: ignore[attr-defined]


def dump(span: ReadableSpan) -> tuple[Any, ...]:
    """Everything an exporter can read from a span."""
    ctx, parent = span.context, span.parent
    assert ctx is not None
    return (
        span.name, ctx.trace_id, ctx.span_id, int(ctx.trace_flags), ctx.is_remote,
        tuple(ctx.trace_state.items()),
        None if parent is None else (parent.trace_id, parent.span_id,
                                     int(parent.trace_flags), parent.is_remote,
                                     tuple(parent.trace_state.items())),
        span.kind, dict(span.attributes or {}), span.dropped_attributes,
        [(e.name, e.timestamp, dict(e.attributes or {}), e.dropped_attributes)
         for e in span.events], span.dropped_events,
        [(link.context, dict(link.attributes or {})) for link in span.links],
        span.dropped_links, span.status.status_code, span.status.description,
        span.start_time, span.end_time, dict(span.resource.attributes),
        span.resource.schema_url, span.instrumentation_scope)


def exported(otel: Otel) -> list[ReadableSpan]:
    spans = list(otel.spans())
    spans.sort(key=lambda s: (s.context.trace_id, s.context.span_id, s.name)
               if s.context is not None else (0, 0, s.name))
    return spans


@pytest.fixture
def providers() -> Iterator[list[Otel]]:
    made: list[Otel] = []
    yield made
    for otel in made:
        otel.tracer_provider.shutdown()
        otel.meter_provider.shutdown()


class Custom(TraceIdRatioBased):
    """A sampler of the user's own (here deciding as the ratio sampler it extends): it
    must see every span, so none is direct."""


@pytest.mark.parametrize("other", ["watched", "custom sampler", "limits"])
async def test_direct_spans_are_what_the_sdk_path_exports(
        other: str, providers: list[Otel]) -> None:
    """Every span, field by field and as OTLP bytes, against the SDK's own path."""
    limits = SpanLimits(max_span_attributes=4, max_span_attribute_length=6,
                        max_events=1, max_event_attributes=0) if other == "limits" else None
    direct = make_otel(limits=limits)
    watch = WatchesStarts()
    sdk = make_otel(limits=limits, watch=None if other == "custom sampler" else watch,
                    sampler=Custom(1.0) if other == "custom sampler" else None)
    providers += [direct, sdk]

    assert await run_everything(direct) is True
    assert await run_everything(sdk) is False
    # stalwart's encoder reads the direct spans' raw fields (before anything fills them
    # in): the same bytes as the SDK's encoder reading them filled in.
    from stalwart.telemetry._otlp import encode_packed
    from stalwart.telemetry._otlp import encode_spans as stalwart_encode
    from stalwart.telemetry._sidecar import _Known, _pack, _Tables

    unread = list(direct.spans())
    # As the export process gets them: packed from the raw fields (a plain step's as the
    # few values the child builds its span from), pickled.
    tables = _Tables()
    packed = [_pack(s, tables) for s in unread]
    assert (sum(len(p) == 2 for p in packed) > 0) is (other != "limits")
    raw = stalwart_encode(unread)
    message = pickle.loads(pickle.dumps((*tables.take(), packed)))
    assert encode_packed(*_Known().batch(message)) == raw
    assert raw == encode_spans(unread).SerializeToString()  # (this fills them in)

    a, b = exported(direct), exported(sdk)
    assert [dump(s) for s in a] == [dump(s) for s in b]
    for x, y in zip(a, b, strict=True):
        assert encode_spans([x]).SerializeToString() == encode_spans([y]).SerializeToString()
        assert x.to_json() == y.to_json()
    if other == "watched":
        assert sorted(watch.started) == sorted(s.name for s in b)

    # The runs exercised what a direct span must carry.
    names = {s.name for s in a}
    assert {"workflow report", "workflow failing", "workflow sub", "step child:sub",
            "invoke_agent writer", "chat w1", "execute_tool lookup"} <= names
    assert any(s.status.status_code == StatusCode.ERROR for s in a)
    assert any(s.events for s in a)
    sub_run = next(s for s in a if s.name == "workflow sub")
    child_step = next(s for s in a if s.name == "step child:sub")
    assert sub_run.parent is not None and child_step.context is not None
    assert sub_run.parent.span_id == child_step.context.span_id
    if other == "limits":
        assert any(s.dropped_attributes for s in a)
        assert all(len(str(v)) <= 6 for s in a for v in (s.attributes or {}).values()
                   if isinstance(v, str))
    else:
        failed = next(s for s in a if s.name == "workflow failing")
        assert failed.status.description == "broken for good"
        assert failed.attributes is not None
        assert failed.attributes["error.type"] == "builtins.ValueError"


async def test_a_sampler_that_drops_decides_for_itself(providers: list[Otel]) -> None:
    """ALWAYS_OFF: no span is built directly and none is exported."""
    otel = make_otel(sampler=ALWAYS_OFF)
    providers.append(otel)
    assert await run_everything(otel) is False
    assert otel.spans() == ()


async def test_a_processor_added_later_sees_the_next_spans_start(
        providers: list[Otel]) -> None:
    """Eligibility is checked per span: a watching processor added between two runs gets
    every span of the second run in on_start; both runs are exported in full."""
    otel = make_otel()
    providers.append(otel)
    clock = sw.FakeClock(autojump=True)
    app = sw.Runtime(MemoryStore(), clock=clock, tracing=otel.tracing())

    async def one() -> int:
        return 1

    @app.workflow(name="tiny")
    async def tiny(ctx: sw.Context) -> int:
        return await ctx.step(one, name="one") + await ctx.step(one, name="one")

    watch = WatchesStarts()
    async with app:
        await app.run(tiny, run_id="t-1")
        assert app.interceptor._sink.direct()  # type: ignore[attr-defined]
        otel.tracer_provider.add_span_processor(watch)
        await app.run(tiny, run_id="t-2")
        assert not app.interceptor._sink.direct()  # type: ignore[attr-defined]
    assert len(otel.spans()) == 6
    assert sorted(watch.started) == ["step one", "step one", "workflow tiny"]


def test_run_ids_match_span_id_for() -> None:
    """RunIds caches a run's hash prefix and computes the same ids as span_id_for."""
    ids = RunIds("run-42")
    for what in [("run",), ("step", "1/0/2"), ("agent", "3"), ("call", "4", "sim:x", "2")]:
        assert ids.span(*what) == span_id_for("run-42", *what)
    assert ids.step("1/0/2") == span_id_for("run-42", "step", "1/0/2")
    assert RunIds("run-43").step("1") != ids.step("1")
    redriven = RunIds("run-42", redrive=2)
    assert redriven.span("run") == span_id_for("run-42", "redrive", "2", "run")
    assert redriven.step("5") == span_id_for("run-42", "redrive", "2", "step", "5")
    assert redriven.step("5") not in (ids.step("5"), RunIds("run-42", redrive=1).step("5"))


async def test_spans_are_filled_in_on_first_read_not_on_the_loop() -> None:
    """Through a batch processor, a step's span reaches the exporter unfilled; reading
    it fills it in, the same as the SDK's would read."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from stalwart.telemetry._spans import EndedSpan, LazySpan

    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    app = sw.Runtime(MemoryStore(), clock=sw.FakeClock(autojump=True),
                     tracing=sw.telemetry.Tracing(tracer_provider=provider, metrics=False))

    async def one() -> int:
        return 1

    @app.workflow(name="lazy")
    async def lazy(ctx: sw.Context) -> int:
        return await ctx.step(one, name="one")

    async with app:
        await app.run(lazy, run_id="lazy-1")
    assert provider.force_flush()
    spans = exporter.get_finished_spans()
    assert [type(s) for s in spans] == [LazySpan, LazySpan]  # the step's, the run's
    assert all(isinstance(s, EndedSpan) and s.fields() is not None for s in spans)
    from stalwart.telemetry._otlp import encode_spans as stalwart_encode

    ours = stalwart_encode(spans)  # encodes the raw fields: fills nothing in
    assert all(isinstance(s, EndedSpan) and s.fields() is not None for s in spans)
    assert ours == encode_spans(spans).SerializeToString()  # the SDK's reads them
    assert all(isinstance(s, EndedSpan) and s.fields() is None for s in spans)
    step = next(s for s in spans if s.name == "step one")
    assert isinstance(step, EndedSpan)
    assert dict(step.attributes or {}) == {"stalwart.run_id": "lazy-1",
                                           "stalwart.step_id": "1",
                                           "stalwart.step.name": "one"}
    assert step.parent is not None and step.parent.span_id == span_id_for("lazy-1", "run")
    provider.shutdown()


async def test_the_export_process_is_sent_each_run_once_across_batches(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs, resources and scopes go to the export process once, numbered, and later
    batches refer to them by number; with fewer kept than runs in flight, both sides
    forget the same oldest ones and a run is sent again when next needed. Each batch
    encodes as the SDK encodes the same spans."""
    from stalwart.telemetry import _sidecar
    from stalwart.telemetry._otlp import encode_packed
    from stalwart.telemetry._spans import LazySpan

    monkeypatch.setattr(_sidecar, "_KEPT", 3)
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = sw.Runtime(MemoryStore(), clock=sw.FakeClock(autojump=True), concurrency=8,
                     tracing=sw.telemetry.Tracing(tracer_provider=provider, metrics=False))

    async def one(i: int) -> int:
        if i == 3:
            raise ValueError("three")
        return i

    @app.workflow(name="batches")
    async def batches(ctx: sw.Context) -> int:
        total = 0
        for i in range(4):
            try:
                total += await ctx.step(one, i, name=f"s{i}")
            except ValueError:
                total -= 1
        return total

    async with app:
        handles = [await app.start(batches, run_id=f"b-{k}") for k in range(6)]
        assert [await h.result() for h in handles] == [2] * 6
    spans = list(exporter.get_finished_spans())
    assert len(spans) == 6 * 5 and all(type(s) is LazySpan for s in spans)
    tables, known = _sidecar._Tables(), _sidecar._Known()
    sent_runs = 0
    for start in range(0, len(spans), 4):  # batches of 4 spans, runs interleaved
        batch = spans[start:start + 4]
        packed = [_sidecar._pack(s, tables) for s in batch]
        assert all(len(p) == 2 for p in packed)  # every one built by the child
        message = pickle.loads(pickle.dumps((*tables.take(), packed)))
        sent_runs += len(message[2])
        assert encode_packed(*known.batch(message)) == (
            encode_spans(batch).SerializeToString())
        known.forget()
        assert len(known.runs) <= 3
    assert 6 < sent_runs < len(spans)  # some runs sent again after being forgotten
    provider.shutdown()
