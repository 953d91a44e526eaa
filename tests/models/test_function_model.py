"""FunctionModel: answers written as a function of the request."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

import stalwart as sw
from stalwart import testing
from stalwart.errors import ConfigurationError, RateLimitedError
from stalwart.models import (
    FunctionModel,
    Model,
    ModelRequest,
    ModelResponse,
    ToolCallRequest,
    ToolSpec,
)

LOOKUP = ToolSpec(name="lookup", parameters={"type": "object", "properties": {}})


class Answer(BaseModel):
    city: str
    degrees: int


def test_it_is_a_model_exported_where_users_look() -> None:
    """stalwart.FunctionModel and stalwart.testing.FunctionModel are the same Model."""
    assert sw.FunctionModel is testing.FunctionModel is FunctionModel
    assert testing.SimulatedModel is sw.SimulatedModel
    model = FunctionModel(lambda request: "hi")
    assert isinstance(model, Model)
    assert (model.provider, model.name) == ("function", "lambda")


async def test_text_tool_calls_and_full_responses_pass_through() -> None:
    """Text, one or several tool calls, and a ready ModelResponse become the response."""
    call = ToolCallRequest.create("c1", "lookup", {})
    replies: list[object] = ["plain", call, [call, ToolCallRequest.create("c2", "lookup")],
                             ModelResponse(content="full", finish_reason="length")]
    model = FunctionModel(lambda request: replies.pop(0), name="scripted")  # type: ignore[arg-type,return-value]
    text = await model.complete(ModelRequest.of("q"))
    assert (text.content, text.tool_calls, text.finish_reason) == ("plain", (), "stop")
    assert (text.provider, text.model) == ("function", "scripted")
    assert text.usage.input_tokens > 0 and text.usage.output_tokens > 0
    one = await model.complete(ModelRequest.of("q", tools=[LOOKUP]))
    assert one.tool_calls == (call,) and one.finish_reason == "tool_calls"
    two = await model.complete(ModelRequest.of("q", tools=[LOOKUP]))
    assert [c.id for c in two.tool_calls] == ["c1", "c2"]
    full = await model.complete(ModelRequest.of("q"))
    assert (full.content, full.finish_reason, full.model) == ("full", "length", "scripted")


async def test_structured_values_are_sent_as_json() -> None:
    """A pydantic model, a dict or a list is the answer's JSON text."""
    values: list[object] = [Answer(city="Oslo", degrees=3), {"a": [1, 2]}, [1, "x"], 4.5]
    model = FunctionModel(lambda request: values.pop(0))  # type: ignore[arg-type,return-value]
    assert json.loads((await model.complete(ModelRequest.of("q"))).content or "") == {
        "city": "Oslo", "degrees": 3}
    assert json.loads((await model.complete(ModelRequest.of("q"))).content or "") == {
        "a": [1, 2]}
    assert json.loads((await model.complete(ModelRequest.of("q"))).content or "") == [1, "x"]
    assert (await model.complete(ModelRequest.of("q"))).content == "4.5"


async def test_an_async_function_is_awaited_and_sees_every_request() -> None:
    """The function may be async; requests are kept in order for assertions."""
    async def bot(request: ModelRequest) -> str:
        return f"{len(request.messages)} message(s), tools {[t.name for t in request.tools]}"

    model = FunctionModel(bot)
    reply = await model.complete(ModelRequest.of("a", "b", tools=[LOOKUP]))
    assert reply.content == "2 message(s), tools ['lookup']"
    assert model.name == "bot" and model.last_request is model.requests[0]


async def test_errors_it_raises_reach_the_caller() -> None:
    """A ModelError from the function is the provider's error, for the policies."""
    def overloaded(request: ModelRequest) -> str:
        raise RateLimitedError("slow down", provider="function", model="x", retry_after=2)

    with pytest.raises(RateLimitedError):
        await FunctionModel(overloaded).complete(ModelRequest.of("q"))


async def test_a_reply_that_is_not_json_is_a_configuration_error() -> None:
    """An object that cannot be sent as JSON is refused with a readable error."""
    with pytest.raises(ConfigurationError, match="JSON-compatible"):
        await FunctionModel(lambda request: object()).complete(  # type: ignore[arg-type,return-value]
            ModelRequest.of("q"))
    with pytest.raises(ConfigurationError, match="callable"):
        FunctionModel("not a function")  # type: ignore[arg-type]
