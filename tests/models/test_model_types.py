"""The neutral message/tool/response types: validation, converters, JSON round trips."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from stalwart.models import (
    Message,
    ModelOptions,
    ModelRequest,
    ModelResponse,
    ToolCallRequest,
    ToolSpec,
    Usage,
)


def test_tool_call_arguments_parse_or_explain() -> None:
    """Raw arguments parse to a dict, or report why not, without raising."""
    ok = ToolCallRequest(id="1", name="f", arguments='{"a": [1, 2]}')
    assert (ok.parsed, ok.parse_error) == ({"a": [1, 2]}, None)
    empty = ToolCallRequest(id="1", name="f", arguments="")
    assert empty.parsed == {}
    broken = ToolCallRequest(id="1", name="f", arguments='{"a": ')
    assert broken.parsed is None and "not valid JSON" in (broken.parse_error or "")
    wrong = ToolCallRequest(id="1", name="f", arguments="[1]")
    assert wrong.parsed is None and "JSON object" in (wrong.parse_error or "")


def test_tool_call_create_is_canonical() -> None:
    """create() dumps arguments compactly with sorted keys (stable journal bytes)."""
    call = ToolCallRequest.create("1", "f", {"b": 1, "a": "x"})
    assert call.arguments == '{"a":"x","b":1}'


@pytest.mark.parametrize("bad", [
    {"role": "user", "content": "x", "tool_call_id": "1"},
    {"role": "tool", "content": "x"},
    {"role": "user", "content": "x",
     "tool_calls": [{"id": "1", "name": "f", "arguments": "{}"}]},
    {"role": "robot", "content": "x"},
])
def test_message_rejects_inconsistent_fields(bad: dict[str, object]) -> None:
    """Role-specific fields only appear on the role they belong to."""
    with pytest.raises(ValidationError):
        Message.model_validate(bad)


def test_types_are_frozen() -> None:
    """Journaled values cannot be mutated after the fact."""
    msg = Message.user("hi")
    with pytest.raises(ValidationError):
        msg.content = "changed"


def test_tool_spec_converters() -> None:
    """ToolSpec renders OpenAI function tools and Anthropic input_schema tools."""
    spec = ToolSpec(name="add", description="Add.", parameters={
        "type": "object", "properties": {"a": {"type": "number"}}})
    assert spec.to_openai() == {"type": "function", "function": {
        "name": "add", "description": "Add.", "parameters": spec.parameters}}
    assert spec.to_anthropic() == {"name": "add", "description": "Add.",
                                   "input_schema": spec.parameters}
    assert ToolSpec(name="noargs").parameters == {"type": "object", "properties": {}}
    with pytest.raises(ValidationError):
        ToolSpec(name="has space")


def test_request_validation_and_shorthand() -> None:
    """A request needs messages and unique tool names; of() wraps strings as user turns."""
    with pytest.raises(ValidationError):
        ModelRequest(messages=())
    with pytest.raises(ValidationError):
        ModelRequest.of("x", tools=[ToolSpec(name="t"), ToolSpec(name="t")])
    with pytest.raises(ValidationError):
        ModelOptions(temperature=3.0)
    request = ModelRequest.of(Message.system("s"), "u")
    assert [m.role for m in request.messages] == ["system", "user"]


def test_request_and_response_round_trip_json() -> None:
    """Requests and responses read back equal from their JSON form."""
    call = ToolCallRequest.create("c", "f", {"x": 1})
    request = ModelRequest(
        messages=(Message.system("s"), Message.user("u", name="ann"),
                  Message.assistant(tool_calls=[call]), Message.tool("r", tool_call_id="c")),
        tools=(ToolSpec(name="f"),), options=ModelOptions(stop=("a", "b"), max_tokens=5))
    assert ModelRequest.model_validate_json(request.model_dump_json()) == request
    response = ModelResponse(content=None, tool_calls=(call,), finish_reason="tool_calls",
                             usage=Usage(input_tokens=3, output_tokens=4), model="m",
                             provider="p", raw_id="r")
    assert ModelResponse.model_validate_json(response.model_dump_json()) == response
    assert response.usage.total_tokens == 7
    assert response.to_message() == Message.assistant(tool_calls=[call])
