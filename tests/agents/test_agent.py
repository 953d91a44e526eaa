"""The agent loop: tool calls, repairs, loop detection, typed output, bounds, replay."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from pydantic import BaseModel

import stalwart as sw
from stalwart.models import ModelRequest, ToolCallRequest

NO_RETRY = sw.Policy(retry=None, breaker=None)


class Brief(BaseModel):
    topic: str
    facts: list[str]


def tc(name: str, args: dict[str, object] | str, cid: str = "c") -> ToolCallRequest:
    if isinstance(args, str):
        return ToolCallRequest(id=cid, name=name, arguments=args)
    return ToolCallRequest.create(cid, name, args)  # type: ignore[arg-type]


def runtime(tmp_path: Path, model: sw.SimulatedModel, **kw: object) -> sw.Runtime:
    return sw.Runtime(tmp_path / "j.db", models={"sim:test": model}, **kw)  # type: ignore[arg-type]


async def test_tool_calling_loop_executes_each_call_once_and_sums_usage(tmp_path: Path) -> None:
    """model -> tool -> observation -> model: the tool runs once with a stable key."""
    keys: list[str] = []

    async def lookup(city: str, call: sw.ToolCall) -> str:
        keys.append(call.idempotency_key)
        return f"{city}: 21C"

    weather = sw.Tool(lookup)
    model = sw.SimulatedModel("test", script=[tc("lookup", {"city": "Oslo"}), "It is 21C."])
    app = runtime(tmp_path, model)
    agent = sw.Agent("weather", "sim:test", tools=[weather])

    @app.workflow
    async def wf(ctx: sw.Context) -> dict[str, object]:
        res = await agent.run_result(ctx, "weather in Oslo?")
        return {"out": res.output, "tokens": res.usage.total_tokens, "iters": res.iterations,
                "tools": res.tool_calls}

    async with app:
        h = await app.start(wf)
        out = await h.result()
    assert out["out"] == "It is 21C." and out["iters"] == 2 and out["tools"] == 1
    assert isinstance(out["tokens"], int) and out["tokens"] > 0
    assert keys == [f"{h.run_id}:2"]
    observation = model.requests[1].messages[-1]
    assert observation.role == "tool" and observation.content == "Oslo: 21C"


@pytest.mark.parametrize(
    ("bad_call", "kind"),
    [
        (tc("lookup", "{not json"), "invalid_json"),
        (tc("lookup", {"city": 5, "extra": 1}), "invalid_arguments"),
        (tc("teleport", {"to": "Mars"}), "unknown_tool"),
    ],
)
async def test_malformed_tool_calls_go_back_to_the_model_as_errors(
        tmp_path: Path, bad_call: ToolCallRequest, kind: str) -> None:
    """Bad JSON, wrong types or an unknown tool never crash the run."""
    ran: list[str] = []

    def lookup(city: str) -> str:
        ran.append(city)
        return "ok"

    model = sw.SimulatedModel("test", script=[bad_call, tc("lookup", {"city": "Rome"}), "fine"])
    app = runtime(tmp_path, model)
    agent = sw.Agent("a", "sim:test", tools=[sw.Tool(lookup)])

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        return await agent.run(ctx, "go")

    async with app:
        assert await app.run(wf) == "fine"
    assert ran == ["Rome"]
    error_msg = model.requests[1].messages[-1]
    assert error_msg.role == "tool" and kind in (error_msg.content or "")


async def test_repair_budget_bounds_malformed_calls(tmp_path: Path) -> None:
    """More malformed calls than max_repairs stops the loop with a typed error."""
    model = sw.SimulatedModel("test", script=lambda req: tc("nope", {}))
    app = runtime(tmp_path, model)
    agent = sw.Agent("a", "sim:test", max_repairs=2)

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        return await agent.run(ctx, "go")

    async with app:
        with pytest.raises(sw.RunFailedError) as info:
            await app.run(wf)
    assert isinstance(info.value.__cause__, sw.RepairBudgetExceededError)
    assert model.statistics().calls == 3


async def test_same_tool_call_repeated_is_a_loop_error(tmp_path: Path) -> None:
    """The same tool with the same arguments loop_limit times raises ToolLoopError."""
    calls: list[int] = []

    def ping(n: int) -> str:
        calls.append(n)
        return "pong"

    model = sw.SimulatedModel("test", script=lambda req: tc("ping", {"n": 1}))
    app = runtime(tmp_path, model)
    agent = sw.Agent("a", "sim:test", tools=[sw.Tool(ping)], loop_limit=3)

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        return await agent.run(ctx, "go")

    async with app:
        with pytest.raises(sw.RunFailedError) as info:
            await app.run(wf)
    assert isinstance(info.value.__cause__, sw.ToolLoopError)
    assert calls == [1, 1]


async def test_typed_output_is_validated_with_a_bounded_reask(tmp_path: Path) -> None:
    """Invalid structured output is re-asked; the valid answer comes back typed."""
    model = sw.SimulatedModel("test", script=[
        "not json at all", '```json\n{"topic": "gpus", "facts": ["fast"]}\n```'])
    app = runtime(tmp_path, model)
    agent = sw.Agent("r", "sim:test", output_type=Brief)

    @app.workflow
    async def wf(ctx: sw.Context) -> Brief:
        return await agent.run(ctx, "gpus")

    async with app:
        out = await app.run(wf)
    assert out == Brief(topic="gpus", facts=["fast"])
    assert "JSON schema" in (model.requests[0].messages[0].content or "")
    assert model.requests[1].messages[-1].content.startswith("Your answer was not valid")  # type: ignore[union-attr]


async def test_output_that_never_validates_is_a_typed_failure(tmp_path: Path) -> None:
    """After max_reasks invalid answers the run fails with OutputValidationError."""
    model = sw.SimulatedModel("test", script=lambda req: '{"topic": 1}')
    app = runtime(tmp_path, model)
    agent = sw.Agent("r", "sim:test", output_type=Brief, max_reasks=1)

    @app.workflow
    async def wf(ctx: sw.Context) -> Brief:
        return await agent.run(ctx, "gpus")

    async with app:
        with pytest.raises(sw.RunFailedError) as info:
            await app.run(wf)
    assert isinstance(info.value.__cause__, sw.OutputValidationError)
    assert model.statistics().calls == 2


async def test_max_iterations_raises_or_returns_the_fallback_output(tmp_path: Path) -> None:
    """The loop is bounded; fallback_output is the defined outcome when given."""
    counter = iter(range(1000))

    def script(req: ModelRequest) -> ToolCallRequest:
        return tc("work", {"i": next(counter)})

    def work(i: int) -> str:
        return str(i)

    model = sw.SimulatedModel("test", script=script)
    app = runtime(tmp_path, model)
    strict = sw.Agent("strict", "sim:test", tools=[sw.Tool(work)], max_iterations=3)
    lenient = sw.Agent("lenient", "sim:test", tools=[sw.Tool(work)], max_iterations=2,
                       fallback_output="gave up politely")

    @app.workflow
    async def wf(ctx: sw.Context) -> list[str]:
        out = [await lenient.run(ctx, "go")]
        try:
            await strict.run(ctx, "go")
        except sw.MaxIterationsError as exc:
            out.append(type(exc).__name__)
        return out

    async with app:
        assert await app.run(wf) == ["gave up politely", "MaxIterationsError"]
    assert model.statistics().calls == 5


async def test_resumed_agent_replays_its_conversation_without_model_calls(
        tmp_path: Path) -> None:
    """After a restart the recorded model turns and tool calls are not made again."""
    clock = sw.FakeClock()
    effects: list[str] = []

    def act(x: str) -> str:
        effects.append(x)
        return "acted"

    model = sw.SimulatedModel("test", script=[tc("act", {"x": "1"}), "first done",
                                              tc("act", {"x": "2"}), "second done"])
    agent = sw.Agent("a", "sim:test", tools=[sw.Tool(act)])

    def define(app: sw.Runtime) -> sw.Workflow:  # type: ignore[type-arg]
        @app.workflow(name="two-turns")
        async def wf(ctx: sw.Context) -> list[str]:
            first = await agent.run(ctx, "one")
            await ctx.sleep(60)
            return [first, await agent.run(ctx, "two")]

        return wf

    app1 = sw.Runtime(tmp_path / "j.db", clock=clock, models={"sim:test": model})
    wf = define(app1)
    async with app1:
        h = await app1.start(wf)
        for _ in range(400):
            if (await app1.get_run(h.run_id)).status == sw.RunStatus.SLEEPING:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the run never parked in its sleep")
    assert model.statistics().calls == 2
    app2 = sw.Runtime(tmp_path / "j.db", clock=clock, models={"sim:test": model})
    define(app2)
    async with app2:
        await clock.advance(60)
        assert await app2.handle(h.run_id).result() == ["first done", "second done"]
    assert model.statistics().calls == 4
    assert effects == ["1", "2"]


async def test_provider_error_in_script_is_raised_through_the_policies(tmp_path: Path) -> None:
    """A non-retryable provider error fails the run without retries."""
    model = sw.SimulatedModel("test", script=[sw.InvalidRequestError("bad request")])
    app = runtime(tmp_path, model)
    agent = sw.Agent("a", "sim:test")

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        return await agent.run(ctx, "go")

    async with app:
        h = await app.start(wf)
        with pytest.raises(sw.RunFailedError) as info:
            await h.result()
        assert (await app.get_run(h.run_id)).status == sw.RunStatus.FAILED
    assert isinstance(info.value.__cause__, sw.InvalidRequestError)
    assert model.statistics().calls == 1


def test_a_tool_whose_parameters_cannot_be_described_is_a_configuration_error() -> None:
    """A parameter type pydantic has no schema for: a typed error naming the tool, when
    the tool is made (not pydantic's own error, nor later in a run)."""
    def guarded(lock: object) -> str:
        return "x"

    guarded.__annotations__["lock"] = threading.Lock  # a factory function, not a type

    with pytest.raises(sw.ConfigurationError, match="tool 'guarded': its parameters "):
        sw.Tool(guarded)
    with pytest.raises(sw.ConfigurationError, match=r"\*args/\*\*kwargs"):
        sw.Tool(lambda *a: a, name="star")
