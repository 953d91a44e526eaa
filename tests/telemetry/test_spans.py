"""Spans of real runs, read from the SDK's in-memory exporter: tree shape, GenAI
attributes, policy outcomes, virtual timestamps, replay safety, content capture."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import StatusCode

import stalwart as sw
from stalwart.errors import ProviderOverloadedError
from stalwart.models import Latency, ModelRequest, ToolCallRequest
from stalwart.telemetry import (
    CaptureContent,
    RunIdGenerator,
    Tracing,
    span_id_for,
    trace_id_for,
)
from stalwart.testing import MemoryStore

from .conftest import Otel

RETRY = sw.Policy(retry=sw.Retry(max_attempts=3, initial=1.0), breaker=None)


def research(request: ModelRequest) -> str | ToolCallRequest:
    """Asks for one lookup of its topic, then states the fact it was given."""
    last = request.messages[-1]
    if last.role == "user":
        return ToolCallRequest.create(f"call-{last.content}", "lookup",
                                      {"q": last.content or ""})
    return f"fact: {last.content}"


def lookup(q: str) -> str:
    return f"{q} is true"


def make_app(otel: Otel, *, tracing: Tracing | None = None,
             capture: CaptureContent | None = None,
             writer_capture: CaptureContent | None = None,
             clock: sw.FakeClock | None = None) -> tuple[sw.Runtime, sw.Workflow]:
    # One FakeClock per event loop: an autojumping clock left behind keeps the loop busy.
    clock = clock or sw.FakeClock(autojump=True)
    researcher_model = sw.SimulatedModel("r1", clock=clock, latency=Latency.fixed(0.25),
                                         script=research)
    writer_model = sw.SimulatedModel("w1", clock=clock, latency=Latency.fixed(0.5), script=[
        ProviderOverloadedError("sim:w1: busy", provider="sim", model="w1", status_code=503),
        "the report"])
    app = sw.Runtime(MemoryStore(), clock=clock, models={"sim:r1": researcher_model,
                                                         "sim:w1": writer_model},
                     tracing=tracing or otel.tracing(capture or False))
    extra = {} if writer_capture is None else {"capture_content": writer_capture}
    researcher = sw.Agent("researcher", "sim:r1", tools=[sw.Tool(lookup)], policy=RETRY)
    writer = sw.Agent("writer", "sim:w1", policy=RETRY, **extra)  # type: ignore[arg-type]

    @app.workflow(name="report")
    async def report(ctx: sw.Context, topic: str) -> str:
        facts = await ctx.gather(researcher.run(ctx, f"{topic} A"),
                                 researcher.run(ctx, f"{topic} B"))
        return await writer.run(ctx, "; ".join(facts))

    return app, report


def children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    pid = parent.context.span_id
    return sorted((s for s in spans if s.parent is not None and s.parent.span_id == pid),
                  key=lambda s: (s.start_time or 0,
                                 str((s.attributes or {}).get("stalwart.step_id", "")),
                                 s.name))


def dur(span: ReadableSpan) -> float:
    assert span.start_time is not None and span.end_time is not None
    return (span.end_time - span.start_time) / 1e9


async def test_multi_agent_run_span_tree_and_genai_attributes(otel: Otel) -> None:
    """One trace; run -> agents -> steps -> attempts, with the GenAI attributes."""
    app, report = make_app(otel)
    async with app:
        handle = await app.start(report, "tides", run_id="report-1")
        assert await handle.result() == "the report"
    spans = otel.spans()
    assert {s.context.trace_id for s in spans} == {trace_id_for("report-1")}
    assert len({s.context.span_id for s in spans}) == len(spans)

    run = otel.one("workflow report")
    assert run.parent is None and run.context.span_id == span_id_for("report-1", "run")
    assert run.attributes is not None
    assert run.attributes["stalwart.run_id"] == "report-1"
    assert run.attributes["stalwart.run.status"] == "completed"
    assert [s.name for s in children(spans, run)] == [
        "invoke_agent researcher", "invoke_agent researcher", "invoke_agent writer"]

    researchers = otel.named("invoke_agent researcher")
    for agent in researchers:
        assert agent.attributes is not None
        assert agent.attributes["gen_ai.operation.name"] == "invoke_agent"
        assert agent.attributes["gen_ai.agent.name"] == "researcher"
        assert agent.attributes["gen_ai.request.model"] == "r1"
        assert agent.attributes["gen_ai.provider.name"] == "sim"
        steps = children(spans, agent)
        assert [s.name for s in steps] == ["step chat:researcher", "step tool:lookup",
                                           "step chat:researcher"]
        chat = children(spans, steps[0])
        assert [c.name for c in chat] == ["chat r1"]
        attrs = chat[0].attributes
        assert attrs is not None
        assert attrs["gen_ai.operation.name"] == "chat"
        assert attrs["gen_ai.request.model"] == attrs["gen_ai.response.model"] == "r1"
        assert attrs["gen_ai.response.finish_reasons"] == ("tool_calls",)
        assert attrs["gen_ai.agent.name"] == "researcher"
        assert attrs["stalwart.attempt"] == 1
        assert attrs["stalwart.step_id"] == steps[0].attributes["stalwart.step_id"]  # type: ignore[index]
        assert int(attrs["gen_ai.usage.input_tokens"]) > 0  # type: ignore[arg-type]
        assert int(attrs["gen_ai.usage.output_tokens"]) > 0  # type: ignore[arg-type]
        assert dur(chat[0]) == pytest.approx(0.25)  # virtual time: the model's latency
        tool = children(spans, steps[1])
        assert [t.name for t in tool] == ["execute_tool lookup"]
        tattrs = tool[0].attributes
        assert tattrs is not None
        assert tattrs["gen_ai.operation.name"] == "execute_tool"
        assert tattrs["gen_ai.tool.name"] == "lookup"
        assert str(tattrs["gen_ai.tool.call.id"]).startswith("call-tides ")
    assert {r.attributes["stalwart.step_id"] for r in researchers} == {  # type: ignore[index]
        "1/0/1", "1/1/1"}

    writer = otel.one("invoke_agent writer")
    (turn,) = children(spans, writer)
    assert turn.name == "step chat:writer" and turn.attributes is not None
    assert turn.attributes["stalwart.retries"] == 1
    assert turn.attributes["stalwart.retried"] is True
    assert [e.name for e in turn.events] == ["stalwart.retried"]
    failed, ok = children(spans, turn)
    assert failed.attributes is not None and ok.attributes is not None
    assert (failed.attributes["stalwart.attempt"], ok.attributes["stalwart.attempt"]) == (1, 2)
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes["error.type"] == "ProviderOverloadedError"
    assert ok.status.status_code == StatusCode.UNSET
    assert ok.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert dur(ok) == pytest.approx(0.5)
    assert writer.attributes is not None
    assert writer.attributes["gen_ai.usage.output_tokens"] == ok.attributes[
        "gen_ai.usage.output_tokens"]

    # Content is not recorded unless asked for.
    for span in spans:
        for key in (span.attributes or {}):
            assert "messages" not in key and "arguments" not in key and "sha256" not in key
            assert key != "gen_ai.tool.call.result"


async def test_metrics_token_usage_duration_and_retries(otel: Otel) -> None:
    """Token and duration histograms per the GenAI conventions; retries counted."""
    app, report = make_app(otel)
    async with app:
        await app.run(report, "tides")
    data = otel.reader.get_metrics_data()
    assert data is not None
    points: dict[str, list[object]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    usage = points["gen_ai.client.token.usage"]
    types = {(p.attributes["gen_ai.request.model"], p.attributes["gen_ai.token.type"])  # type: ignore[attr-defined]
             for p in usage}
    assert types == {("r1", "input"), ("r1", "output"), ("w1", "input"), ("w1", "output")}
    r1_in = next(p for p in usage if p.attributes["gen_ai.request.model"] == "r1"  # type: ignore[attr-defined]
                 and p.attributes["gen_ai.token.type"] == "input")  # type: ignore[attr-defined]
    assert r1_in.count == 4  # type: ignore[attr-defined]  # two turns for each of two researchers
    durations = {(p.attributes["gen_ai.operation.name"],  # type: ignore[attr-defined]
                  p.attributes.get("error.type")): p for p in  # type: ignore[attr-defined]
                 points["gen_ai.client.operation.duration"]
                 if p.attributes.get("gen_ai.request.model", "w1") == "w1"}  # type: ignore[attr-defined]
    assert durations[("chat", None)].count == 1  # type: ignore[attr-defined]
    assert durations[("chat", None)].sum == pytest.approx(0.5)  # type: ignore[attr-defined]
    assert durations[("chat", "ProviderOverloadedError")].count == 1  # type: ignore[attr-defined]
    assert durations[("execute_tool", None)].count == 2  # type: ignore[attr-defined]
    assert sum(p.value for p in points["stalwart.retries"]) == 1  # type: ignore[attr-defined]


async def test_parked_run_resumes_without_duplicate_spans(otel: Otel) -> None:
    """A run that parks and is replayed by a second execution emits each span once."""
    clock = sw.FakeClock(autojump=True)
    model = sw.SimulatedModel("r1", clock=clock, script=research)
    app = sw.Runtime(MemoryStore(), clock=clock, park_after=5.0, models={"sim:r1": model},
                     tracing=otel.tracing())
    agent = sw.Agent("researcher", "sim:r1", tools=[sw.Tool(lookup)])
    executions: list[bool] = []

    async def mark(ctx: sw.Context) -> None:
        executions.append(ctx.is_replaying)

    @app.workflow(name="slow")
    async def slow(ctx: sw.Context) -> str:
        first = await agent.run(ctx, "moon")
        await ctx.sleep(3600)  # parks: this execution ends, a later one replays
        await mark(ctx)
        second = await agent.run(ctx, "sun")
        return f"{first} / {second}"

    async with app:
        assert await app.run(slow, run_id="slow-1") == "fact: moon is true / fact: sun is true"
    assert executions == [True]  # the code after the sleep ran in a replaying execution
    names = sorted(s.name for s in otel.spans())
    assert names == sorted([
        "workflow slow",
        *["invoke_agent researcher", "step chat:researcher", "step chat:researcher",
          "step tool:lookup", "chat r1", "chat r1", "execute_tool lookup"] * 2])
    run = otel.one("workflow slow")
    assert run.attributes is not None and run.attributes["stalwart.resumed"] is True
    assert 3600 <= dur(run) < 3700  # from the run's creation to its end, across the park
    agents = otel.named("invoke_agent researcher")
    assert {a.parent.span_id for a in agents if a.parent} == {run.context.span_id}


async def test_child_run_spans_join_the_parent_trace(otel: Otel) -> None:
    """A child run's span hangs under its parent's ``child:`` step, in the same trace."""
    clock = sw.FakeClock(autojump=True)
    app = sw.Runtime(MemoryStore(), clock=clock, tracing=otel.tracing())

    def double(x: int) -> int:
        return 2 * x

    @app.workflow(name="sub")
    async def sub(ctx: sw.Context, x: int) -> int:
        return await ctx.step(double, x, name="double")

    @app.workflow(name="parent")
    async def parent(ctx: sw.Context) -> int:
        return await ctx.child(sub, 21) + await ctx.step(double, 1, name="double")

    async with app:
        assert await app.run(parent, run_id="p-1") == 44
    spans = otel.spans()
    assert {s.context.trace_id for s in spans} == {trace_id_for("p-1")}
    child_step = otel.one("step child:sub")
    child_run = otel.one("workflow sub")
    assert child_run.parent is not None
    assert child_run.parent.span_id == child_step.context.span_id
    assert child_step.parent is not None
    assert child_step.parent.span_id == otel.one("workflow parent").context.span_id
    doubles = otel.named("step double")
    assert sorted(d.parent.span_id for d in doubles if d.parent) == sorted(
        [child_run.context.span_id, otel.one("workflow parent").context.span_id])


def content_of(otel: Otel) -> dict[str, dict[str, object]]:
    """Content attributes by span name (the writer's answering attempt, one tool call)."""
    out: dict[str, dict[str, object]] = {}
    for span in otel.spans():
        attrs = {k: v for k, v in (span.attributes or {}).items()
                 if "messages" in k or "sha256" in k or k.startswith("gen_ai.tool.call.a")
                 or k == "gen_ai.tool.call.result"}
        if span.name == "chat w1" and span.status.status_code != StatusCode.ERROR:
            out["chat w1"] = attrs
        elif span.name == "execute_tool lookup" and "A" in str(span.attributes):
            out["execute_tool"] = attrs
    return out


async def test_content_capture_text_and_hash_modes(otel: Otel) -> None:
    """capture_content=True records messages and tool I/O; "hash" only their SHA-256."""
    clock = sw.FakeClock(autojump=True)
    app, report = make_app(otel, capture=True, clock=clock)
    async with app:
        await app.run(report, "tides")
    text = content_of(otel)
    chat = text["chat w1"]
    inp = json.loads(str(chat["gen_ai.input.messages"]))
    assert inp[-1] == {"role": "user", "content": "fact: tides A is true; fact: tides B is true",
                       "tool_calls": []}
    out = json.loads(str(chat["gen_ai.output.messages"]))
    assert out[0]["content"] == "the report"
    tool = text["execute_tool"]
    assert json.loads(str(tool["gen_ai.tool.call.arguments"])) == {"q": "tides A"}
    assert json.loads(str(tool["gen_ai.tool.call.result"])) == "tides A is true"

    otel.exporter.clear()
    app, report = make_app(otel, capture="hash", clock=clock)
    async with app:
        await app.run(report, "tides")
    hashed = content_of(otel)

    def sha(value: object) -> str:
        return hashlib.sha256(str(value).encode()).hexdigest()

    assert hashed["chat w1"] == {
        "stalwart.input.sha256": sha(chat["gen_ai.input.messages"]),
        "stalwart.output.sha256": sha(chat["gen_ai.output.messages"])}
    assert hashed["execute_tool"] == {
        "stalwart.input.sha256": sha(tool["gen_ai.tool.call.arguments"]),
        "stalwart.output.sha256": sha(tool["gen_ai.tool.call.result"])}


async def test_an_agent_opts_in_to_content_capture_on_its_own(otel: Otel) -> None:
    """Runtime capture off, one agent with capture_content=True: only its spans carry it."""
    app, report = make_app(otel, writer_capture=True)
    async with app:
        await app.run(report, "tides")
    got = content_of(otel)
    assert set(got["chat w1"]) == {"gen_ai.input.messages", "gen_ai.output.messages"}
    assert got["execute_tool"] == {}
    assert not any("messages" in k for s in otel.named("chat r1") for k in s.attributes or {})


async def test_tracing_off_by_default_and_bad_settings_are_refused(otel: Otel) -> None:
    """No tracing= means no spans; a bad capture_content is a ConfigurationError."""
    app = sw.Runtime(MemoryStore(), clock=sw.FakeClock(autojump=True))
    assert not app.interceptor.active

    @app.workflow
    async def wf(ctx: sw.Context) -> float:
        return await ctx.now()

    async with app:
        await app.run(wf)
    assert otel.spans() == ()
    with pytest.raises(sw.ConfigurationError):
        Tracing(capture_content="yes")  # type: ignore[arg-type]
    with pytest.raises(sw.ConfigurationError):
        sw.Agent("a", "sim:x", capture_content="yes")  # type: ignore[arg-type]


async def test_an_agent_stopped_by_its_budget_reports_the_tokens_it_spent(otel: Otel) -> None:
    """A budget stop after a paid turn: the agent's span carries that turn's tokens and
    the error (the tokens were spent; the span does not say zero)."""
    clock = sw.FakeClock(autojump=True)
    model = sw.SimulatedModel("r1", clock=clock, script=research)
    app = sw.Runtime(MemoryStore(), clock=clock, models={"sim:r1": model},
                     tracing=otel.tracing(False))
    agent = sw.Agent("researcher", "sim:r1", tools=[sw.Tool(lookup)],
                     budget=sw.Budget(max_steps=1))

    @app.workflow(name="tight")
    async def tight(ctx: sw.Context) -> str:
        return await agent.run(ctx, "tides")

    async with app:
        handle = await app.start(tight)
        with pytest.raises(sw.RunFailedError):
            await handle.result()
    (turn,) = otel.named("chat r1")
    span = otel.one("invoke_agent researcher")
    assert span.attributes is not None and turn.attributes is not None
    assert span.attributes["error.type"] == "BudgetExceededError"
    assert span.status.status_code == StatusCode.ERROR
    for name in ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"):
        assert span.attributes[name] == turn.attributes[name] > 0  # type: ignore[operator]


class Counting(IdGenerator):
    """The user's own id generator: small, counted ids."""

    def __init__(self) -> None:
        self.n = 0

    def generate_span_id(self) -> int:
        self.n += 1
        return self.n

    def generate_trace_id(self) -> int:
        self.n += 1
        return self.n


async def test_the_providers_id_generator_keeps_every_span_but_stalwarts() -> None:
    """Tracing wraps the provider's generator: stalwart's spans get the journal's ids, the
    user's spans the generator's; a provider built with a RunIdGenerator is left as is,
    and one whose stalwart tracer exists already is refused (its spans would get random
    ids)."""
    exporter = InMemorySpanExporter()
    counting = Counting()
    provider = TracerProvider(id_generator=counting)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = sw.Runtime(MemoryStore(), clock=sw.FakeClock(autojump=True),
                     tracing=Tracing(tracer_provider=provider, metrics=False))
    user = provider.get_tracer("user")

    async def mark() -> None:
        with user.start_as_current_span("user"):
            pass

    @app.workflow(name="ids")
    async def ids(ctx: sw.Context) -> None:
        await ctx.step(mark, name="mark")

    async with app:
        await app.run(ids, run_id="ids-1")
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    assert by_name["workflow ids"].context.span_id == span_id_for("ids-1", "run")
    assert by_name["step mark"].context.span_id == span_id_for("ids-1", "step", "1")
    assert by_name["user"].context.span_id == counting.n == 1  # the generator's
    assert by_name["user"].context.trace_id == trace_id_for("ids-1")
    assert isinstance(provider.id_generator, RunIdGenerator)
    assert provider.id_generator.base is counting

    mine = RunIdGenerator()
    built = TracerProvider(id_generator=mine)
    sw.Runtime(MemoryStore(), tracing=Tracing(tracer_provider=built, metrics=False))
    assert built.id_generator is mine

    early = TracerProvider()
    early.get_tracer("stalwart")
    with pytest.raises(sw.ConfigurationError, match="RunIdGenerator"):
        sw.Runtime(MemoryStore(), tracing=Tracing(tracer_provider=early, metrics=False))
    for p in (provider, built, early):
        p.shutdown()
