"""Spans that user code makes itself (or an instrumented library it calls) nest under the
stalwart span it runs in: a step's, a tool call's, a model call's. A redriven run's
spans go under a run span of their own."""

from __future__ import annotations

from collections import Counter

import pytest
from opentelemetry import trace as trace_api
from opentelemetry.trace import StatusCode

import stalwart as sw
from stalwart.models import ModelRequest, ModelResponse, ToolCallRequest
from stalwart.telemetry import span_id_for
from stalwart.testing import MemoryStore

from .conftest import Otel

TRACERS: list[trace_api.Tracer] = []


def user_span(name: str) -> None:
    """What instrumented code does: a span under whatever span is current."""
    with TRACERS[-1].start_as_current_span(name):
        pass


class Instrumented:
    """A model adapter whose HTTP client is instrumented (it makes a span per request)."""

    def __init__(self, inner: sw.SimulatedModel) -> None:
        self.inner = inner

    @property
    def provider(self) -> str:
        return self.inner.provider

    @property
    def name(self) -> str:
        return self.inner.name

    async def complete(self, request: ModelRequest) -> ModelResponse:
        user_span("POST /v1/chat/completions")
        return await self.inner.complete(request)


def script(request: ModelRequest) -> str | ToolCallRequest:
    if request.messages[-1].role == "user":
        return ToolCallRequest.create("call-1", "lookup", {"q": "sky"})
    return "the sky is blue"


def lookup(q: str) -> str:  # sync: runs in a worker thread
    user_span("SELECT facts")
    return f"{q} is blue"


def fetch(url: str) -> str:  # a sync step, in a worker thread
    user_span(f"GET {url}")
    return "page"


async def parse(text: str) -> int:  # an async step, on the loop
    user_span("parse")
    return len(text)


async def test_user_spans_nest_under_steps_tools_and_model_calls(otel: Otel) -> None:
    TRACERS.append(otel.tracer_provider.get_tracer("user-code"))
    app = sw.Runtime(MemoryStore(), clock=sw.FakeClock(autojump=True),
                     models={"sim:sky": Instrumented(sw.SimulatedModel("sky", script=script))},
                     tracing=otel.tracing())
    agent = sw.Agent("guide", "sim:sky", tools=[sw.Tool(lookup)])

    @app.workflow(name="nested")
    async def nested(ctx: sw.Context) -> str:
        page = await ctx.step(fetch, "https://example.com", name="fetch")
        user_span("between steps")  # workflow code: under the run
        await ctx.gather(ctx.step(parse, page, name="parse"),
                         ctx.step(fetch, "https://example.org", name="fetch-too"))
        return await agent.run(ctx, "sky?")

    async with app:
        assert await app.run(nested, run_id="nested-1") == "the sky is blue"

    def parent_of(name: str) -> str:
        (span,) = [s for s in otel.spans() if s.name == name]
        assert span.parent is not None and span.context.trace_id == span.parent.trace_id
        (parent,) = [s for s in otel.spans() if s.context.span_id == span.parent.span_id]
        return parent.name

    assert parent_of("GET https://example.com") == "step fetch"
    assert parent_of("between steps") == "workflow nested"
    assert parent_of("parse") == "step parse"  # in gather branches, each its own step
    assert parent_of("GET https://example.org") == "step fetch-too"
    assert parent_of("SELECT facts") == "execute_tool lookup"
    model_spans = [s for s in otel.spans() if s.name == "POST /v1/chat/completions"]
    chats = {s.context.span_id for s in otel.spans() if s.name == "chat sky"}
    assert len(model_spans) == 2 and {s.parent.span_id for s in model_spans} == chats
    # Outside a step, nothing of the run is current any more.
    assert not trace_api.get_current_span().get_span_context().is_valid


async def test_a_redriven_run_gets_a_run_span_of_its_own_under_the_first(otel: Otel) -> None:
    """The run's span ended when the run was dead-lettered; ``dlq retry`` does not emit
    it again but opens a child span for what the redrive runs."""
    healthy: list[bool] = []

    async def service() -> str:
        if not healthy:
            raise TimeoutError("service down")
        return "served"

    tool = sw.Tool(service, policy=sw.Policy(retry=sw.Retry(max_attempts=2, initial=0.01),
                                             breaker=None))
    app = sw.Runtime(MemoryStore(), clock=sw.FakeClock(autojump=True), tracing=otel.tracing())

    @app.workflow(name="leaf")
    async def leaf(ctx: sw.Context) -> int:
        return await ctx.step(parse, "leaf", name="leaf-step")

    @app.workflow(name="redriven")
    async def redriven(ctx: sw.Context) -> str:
        await ctx.step(parse, "abc", name="before")
        served = await ctx.tool(tool)
        await ctx.child(leaf)  # started by the redrive: under the redrive's step span
        return served

    async with app:
        handle = await app.start(redriven, run_id="redriven-1")
        with pytest.raises(sw.RunFailedError):
            await handle.result()
        healthy.append(True)
        await app.redrive(handle.run_id)
        assert await handle.result() == "served"

    spans = otel.spans()
    assert max(Counter(s.context.span_id for s in spans).values()) == 1
    first, second = sorted(otel.named("workflow redriven"), key=lambda s: s.start_time or 0)
    assert first.context.span_id == span_id_for("redriven-1", "run")
    assert first.attributes["stalwart.run.status"] == "dead_lettered"
    assert first.status.status_code is StatusCode.ERROR
    assert second.parent is not None and second.parent.span_id == first.context.span_id
    assert second.attributes["stalwart.redrive"] == 1
    assert second.attributes["stalwart.run.status"] == "completed"
    assert (second.start_time or 0) >= (first.end_time or 0)
    tool_steps = sorted(otel.named("step tool:service"), key=lambda s: s.start_time or 0)
    assert [s.parent.span_id for s in tool_steps if s.parent] == [
        first.context.span_id, second.context.span_id]
    assert [s.status.status_code for s in tool_steps] == [StatusCode.ERROR, StatusCode.UNSET]
    (child_step,) = otel.named("step child:leaf")
    (child_run,) = otel.named("workflow leaf")
    assert child_step.parent is not None
    assert child_step.parent.span_id == second.context.span_id
    assert child_run.parent is not None
    assert child_run.parent.span_id == child_step.context.span_id
