"""Offline agents that exercise everything: the default sim: model calls tools and
answers typed, FunctionModel scripts a conversation, ctx.llm makes one journaled call."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field

import stalwart as sw
from stalwart.errors import RateLimitedError
from stalwart.models import ModelRequest, ToolCallRequest
from stalwart.store import EventKind

FAST_RETRY = sw.Policy(retry=sw.Retry(max_attempts=3, initial=0.001, max_backoff=0.01))


class Forecast(BaseModel):
    city: str
    high_c: float = Field(ge=-60, le=60)
    sky: Literal["sunny", "cloudy", "rain"]


def weather_tools(calls: list[tuple[str, dict[str, object]]]) -> list[sw.Tool[..., str]]:
    def get_weather(city: str, days: int = 1) -> str:
        """Current weather for a city."""
        calls.append(("get_weather", {"city": city, "days": days}))
        return f"{city}: 18C, cloudy"

    def get_alerts(region: str, severity: Literal["minor", "severe"]) -> list[str]:
        """Weather alerts in a region."""
        calls.append(("get_alerts", {"region": region, "severity": severity}))
        return [f"{severity} wind in {region}"]

    return [sw.Tool(get_weather), sw.Tool(get_alerts)]


async def _forecast(tmp_path: Path, name: str, model: str | sw.Model,
                    calls: list[tuple[str, dict[str, object]]]) -> Forecast:
    app = sw.Runtime(tmp_path / f"{name}.db")
    agent = sw.Agent("forecaster", model, tools=weather_tools(calls), output_type=Forecast)

    @app.workflow
    async def forecast(ctx: sw.Context, question: str) -> Forecast:
        return await agent.run(ctx, question)

    async with app:
        return await app.run(forecast, "Weather in Oslo?")


async def test_a_sim_agent_calls_each_tool_then_answers_typed(tmp_path: Path) -> None:
    """On a bare sim: model, an agent with tools and an output_type runs its whole loop:
    every tool is called once with arguments its signature accepts, and the answer
    validates as the output type."""
    calls: list[tuple[str, dict[str, object]]] = []
    out = await _forecast(tmp_path, "a", "sim:weather", calls)
    assert isinstance(out, Forecast)
    assert sorted(name for name, _ in calls) == ["get_alerts", "get_weather"]
    alerts = dict(calls)["get_alerts"]
    assert alerts["severity"] in ("minor", "severe") and isinstance(alerts["region"], str)


async def test_a_sim_agent_is_deterministic(tmp_path: Path) -> None:
    """The same model and seed give the same tool arguments and the same answer."""
    first: list[tuple[str, dict[str, object]]] = []
    second: list[tuple[str, dict[str, object]]] = []
    one = await _forecast(tmp_path, "one", "sim:weather", first)
    two = await _forecast(tmp_path, "two", "sim:weather", second)
    assert one == two and first == second
    other = await _forecast(tmp_path, "three", "sim:weather?seed=9", [])
    assert other != one


async def test_a_sim_spec_chooses_the_tools_called(tmp_path: Path) -> None:
    """sim:NAME?tools=a calls only tool a."""
    calls: list[tuple[str, dict[str, object]]] = []
    await _forecast(tmp_path, "subset", "sim:weather?tools=get_alerts", calls)
    assert [name for name, _ in calls] == ["get_alerts"]


async def test_a_function_model_drives_the_agent(tmp_path: Path) -> None:
    """A FunctionModel sees the tools, the output schema and each tool's result, and
    answers with tool calls, then a pydantic value."""
    def bot(request: ModelRequest) -> sw.models.ScriptedReply:
        results = [m for m in request.messages if m.role == "tool"]
        if not results:
            return ToolCallRequest.create("c1", "get_weather", {"city": "Bergen"})
        return Forecast(city="Bergen", high_c=18, sky="cloudy")

    model = sw.FunctionModel(bot)
    calls: list[tuple[str, dict[str, object]]] = []
    out = await _forecast(tmp_path, "fn", model, calls)
    assert out == Forecast(city="Bergen", high_c=18, sky="cloudy")
    assert calls == [("get_weather", {"city": "Bergen", "days": 1})]
    first, second = model.requests
    assert [t.name for t in first.tools] == ["get_weather", "get_alerts"]
    assert first.output_schema is not None and "sky" in first.output_schema["properties"]  # type: ignore[operator]
    assert second.messages[-1].content == "Bergen: 18C, cloudy"


# -- ctx.llm --------------------------------------------------------------------------


async def test_llm_answers_text_or_a_typed_value(tmp_path: Path) -> None:
    """ctx.llm returns the text, or a value of output_type; each call is one model turn
    in the journal (chat:NAME), counted in the run's usage."""
    app = sw.Runtime(tmp_path / "j.db")

    @app.workflow
    async def wf(ctx: sw.Context) -> dict[str, object]:
        text = await ctx.llm("sim:m", "Say something durable.")
        typed = await ctx.llm("sim:m", "Forecast for Oslo", output_type=Forecast,
                              name="forecast")
        return {"text": text, "typed": typed.model_dump()}

    async with app:
        handle = await app.start(wf)
        out = await handle.result()
        events = await app.events(handle.run_id)
        usage = await app.usage(handle.run_id)
    assert isinstance(out["text"], str) and "Say something durable." in out["text"]
    Forecast.model_validate(out["typed"])
    steps = [e.name for e in events if e.kind == EventKind.STEP_COMPLETED]
    assert steps == ["chat:llm", "chat:forecast"]
    assert usage.total.calls == 2 and usage.total.tokens > 0
    assert set(usage.by_agent) == {"llm", "forecast"}


async def test_llm_sends_instructions_and_the_schema(tmp_path: Path) -> None:
    """Instructions and the output schema reach the model; a conversation is accepted."""
    model = sw.FunctionModel(lambda request: {"city": "Oslo", "high_c": 3, "sky": "rain"})
    app = sw.Runtime(tmp_path / "j.db")

    @app.workflow
    async def wf(ctx: sw.Context) -> Forecast:
        return await ctx.llm(model, [sw.Message.user("Hi"), sw.Message.assistant("Hello"),
                                     "Forecast?"],
                             output_type=Forecast, instructions="Be terse.")

    async with app:
        assert await app.run(wf) == Forecast(city="Oslo", high_c=3, sky="rain")
    (request,) = model.requests
    system = request.messages[0]
    assert system.role == "system" and (system.content or "").startswith("Be terse.")
    assert "JSON schema" in (system.content or "")
    assert [m.role for m in request.messages] == ["system", "user", "assistant", "user"]
    assert request.output_schema == Forecast.model_json_schema()


async def test_llm_is_replayed_not_repeated(tmp_path: Path) -> None:
    """A run that resumes after the call returns the recorded answer; the model is called
    once."""
    model = sw.FunctionModel(lambda request: "recorded answer")
    app = sw.Runtime(tmp_path / "j.db", park_after=0, poll_interval=0.05)

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        answer = await ctx.llm(model, "question")
        go = await ctx.wait_for_signal("go")  # parks the run: the next execution replays
        return f"{answer} {go}"

    async with app:
        handle = await app.start(wf)
        while (await app.get_run(handle.run_id)).status != sw.RunStatus.WAITING:
            await asyncio.sleep(0.01)
        await app.signal(handle.run_id, "go", "then")
        assert await handle.result() == "recorded answer then"
        claims = [e for e in await app.events(handle.run_id)
                  if e.kind == EventKind.RUN_CLAIMED]
    assert len(claims) >= 2  # the run did execute again after parking
    assert len(model.requests) == 1


async def test_llm_is_behind_the_policy_stack(tmp_path: Path) -> None:
    """A 429 is retried by the policy, and the failed attempt is journaled."""
    answers: list[object] = [RateLimitedError("busy", provider="function", model="m",
                                              retry_after=0.0), "fine"]

    def flaky(request: ModelRequest) -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return str(answer)

    app = sw.Runtime(tmp_path / "j.db")

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        return await ctx.llm(sw.FunctionModel(flaky, name="m"), "q", policy=FAST_RETRY)

    async with app:
        handle = await app.start(wf)
        assert await handle.result() == "fine"
        failed = [json.loads(e.payload or "{}") for e in await app.events(handle.run_id)
                  if e.kind == EventKind.ATTEMPT_FAILED]
    assert [(f["key"], f["next"]) for f in failed] == [("function:m", "retry")]


async def test_an_answer_that_does_not_fit_is_a_failed_attempt(tmp_path: Path) -> None:
    """An answer that fails output_type (or check) is retried like an error, and journaled
    as a failed OutcomeCheckError attempt."""
    answers = ['{"city": "Oslo"}', '{"city": "Oslo", "high_c": 1, "sky": "sunny"}']
    model = sw.FunctionModel(lambda request: answers.pop(0), name="typed")
    app = sw.Runtime(tmp_path / "j.db")

    @app.workflow
    async def wf(ctx: sw.Context) -> Forecast:
        return await ctx.llm(model, "q", output_type=Forecast, policy=FAST_RETRY,
                             check=lambda f: f.city == "Oslo")

    async with app:
        handle = await app.start(wf)
        assert (await handle.result()).high_c == 1
        failed = [json.loads(e.payload or "{}") for e in await app.events(handle.run_id)
                  if e.kind == EventKind.ATTEMPT_FAILED]
    assert [f["error"]["type"].rsplit(".", 1)[-1] for f in failed] == ["OutcomeCheckError"]


async def test_llm_refuses_a_prompt_it_cannot_send(tmp_path: Path) -> None:
    """An empty prompt or an empty name is a configuration error."""
    app = sw.Runtime(tmp_path / "j.db")

    @app.workflow
    async def wf(ctx: sw.Context, which: str) -> str:
        if which == "empty":
            return await ctx.llm("sim:m", [])
        return await ctx.llm("sim:m", "q", name="")

    async with app:
        for which in ("empty", "name"):
            with pytest.raises(sw.RunFailedError) as info:
                await app.run(wf, which)
            assert isinstance(info.value.__cause__, sw.ConfigurationError)
