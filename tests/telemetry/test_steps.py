"""``Tracing(steps=...)``: which steps get a span. Runs, agents, model calls and tool calls
always do; plain steps only with ``"all"``; call steps with ``"all"`` and ``"calls"``;
with ``"none"`` the calls hang under their agent's or run's span."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace import ReadableSpan

import stalwart as sw
from stalwart.errors import ProviderOverloadedError
from stalwart.models import ModelRequest, ToolCallRequest
from stalwart.telemetry import StepSpans, Tracing
from stalwart.testing import MemoryStore

from .conftest import Otel

TRACERS: list[trace_api.Tracer] = []


def script(request: ModelRequest) -> str | ToolCallRequest:
    if request.messages[-1].role == "user":
        return ToolCallRequest.create("call-1", "lookup", {"q": "sky"})
    return "blue"


def lookup(q: str) -> str:
    return f"{q} is blue"


def fetch(url: str) -> str:
    with TRACERS[-1].start_as_current_span("GET"):  # the user's own span
        return "page"


async def run_traced(otel: Otel, steps: StepSpans) -> None:
    TRACERS.append(otel.tracer_provider.get_tracer("user"))
    clock = sw.FakeClock(autojump=True)
    model = sw.SimulatedModel("sky", clock=clock, script=[
        ProviderOverloadedError("busy", provider="sim", model="sky", status_code=503),
        script(ModelRequest(messages=(sw.Message.user("sky"),))), "blue"])
    app = sw.Runtime(MemoryStore(), clock=clock, models={"sim:sky": model},
                     tracing=Tracing(tracer_provider=otel.tracer_provider,
                                     meter_provider=otel.meter_provider, steps=steps))
    agent = sw.Agent("guide", "sim:sky", tools=[sw.Tool(lookup)],
                     policy=sw.Policy(retry=sw.Retry(max_attempts=2, initial=0.1),
                                      breaker=None))

    @app.workflow(name="leaf")
    async def leaf(ctx: sw.Context) -> str:
        return await ctx.step(fetch, "leaf", name="leaf-fetch")

    @app.workflow(name="tree")
    async def tree(ctx: sw.Context) -> str:
        page = await ctx.step(fetch, "https://example.com", name="fetch")
        answer = await agent.run(ctx, "sky?")
        looked = await ctx.tool(sw.Tool(lookup), q="sea")
        return f"{page} {answer} {looked} {await ctx.child(leaf)}"

    async with app:
        assert await app.run(tree, run_id="tree-1") == "page blue sea is blue page"


def parent_name(spans: Sequence[ReadableSpan], span: ReadableSpan) -> str | None:
    if span.parent is None:
        return None
    (parent,) = [s for s in spans if s.context.span_id == span.parent.span_id]
    return parent.name


def shape(otel: Otel) -> set[tuple[str, str | None]]:
    spans = otel.spans()
    return {(s.name, parent_name(spans, s)) for s in spans}


CALLS = {
    ("workflow tree", None),
    ("invoke_agent guide", "workflow tree"),
    ("step chat:guide", "invoke_agent guide"),
    ("chat sky", "step chat:guide"),
    ("step tool:lookup", "invoke_agent guide"),
    ("execute_tool lookup", "step tool:lookup"),
    ("step tool:lookup", "workflow tree"),
    ("step child:leaf", "workflow tree"),
    ("workflow leaf", "step child:leaf"),
}


@pytest.mark.parametrize("steps", ["all", "calls", "none"])
async def test_which_steps_get_spans(otel: Otel, steps: StepSpans) -> None:
    """The span tree of one run under each setting."""
    await run_traced(otel, steps)
    if steps == "all":
        assert shape(otel) == CALLS | {
            ("step fetch", "workflow tree"), ("GET", "step fetch"),
            ("step leaf-fetch", "workflow leaf"), ("GET", "step leaf-fetch")}
    elif steps == "calls":
        assert shape(otel) == CALLS | {("GET", "workflow tree"), ("GET", "workflow leaf")}
    else:
        assert shape(otel) == {
            ("workflow tree", None), ("invoke_agent guide", "workflow tree"),
            ("chat sky", "invoke_agent guide"), ("execute_tool lookup", "invoke_agent guide"),
            ("execute_tool lookup", "workflow tree"), ("workflow leaf", "workflow tree"),
            ("GET", "workflow tree"), ("GET", "workflow leaf")}
    # The model's first attempt failed and was retried: the event is on the model turn's
    # step where there is one, else on the agent's span.
    holder = otel.one("invoke_agent guide") if steps == "none" else next(
        s for s in otel.named("step chat:guide") if s.events)
    assert [e.name for e in holder.events] == ["stalwart.retried"]
    assert len(otel.named("chat sky")) == 3  # the failed attempt, its retry, the answer


def test_a_bad_setting_is_refused() -> None:
    """steps and sampler are checked where the Tracing is made."""
    with pytest.raises(sw.ConfigurationError, match="steps"):
        Tracing(steps="some")  # type: ignore[arg-type]
    with pytest.raises(sw.ConfigurationError, match="sampler"):
        Tracing(sampler=0.1)


def test_a_runtime_refuses_tracing_that_is_not_an_instrumentation() -> None:
    """``Runtime(tracing=True)`` is one ConfigurationError saying what it takes, at the
    constructor (it was an AttributeError, 'bool' object has no attribute 'bind')."""
    with pytest.raises(sw.ConfigurationError, match=r"tracing takes stalwart\.telemetry"):
        sw.Runtime(store=MemoryStore(), tracing=True)  # type: ignore[arg-type]
