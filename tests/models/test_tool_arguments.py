"""The one reader of a model's tool-call arguments: size and depth capped before parsing,
for every adapter's calls."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable
from typing import Any

import pytest

from stalwart.errors import MalformedResponseError
from stalwart.models import (
    MAX_ARGUMENT_BYTES,
    MAX_ARGUMENT_DEPTH,
    Model,
    ModelRequest,
    ToolCallRequest,
    ToolSpec,
    parse_tool_arguments,
)
from stalwart.models._anthropic import AnthropicModel
from stalwart.models._openai import OpenAIModel
from stalwart.testing import FaultServer

ModelFactory = Callable[..., Model]

DEEP = "[" * 1000 + "]" * 1000
TOOL = ToolSpec(name="t", description="", parameters={"type": "object"})


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(("text", "reason"), [
    (DEEP, "nest 1000 levels deep, over the limit of 64"),
    ('{"a": ' + DEEP + "}", "nest 1001 levels deep"),
    ('{"a": "' + "x" * MAX_ARGUMENT_BYTES + '"}', f"over the limit of {MAX_ARGUMENT_BYTES}"),
    ('{"a": "' + "é" * (MAX_ARGUMENT_BYTES // 2) + '"}', "bytes, over the limit"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object, got list"),
])
def test_arguments_over_the_limits_or_malformed_are_refused_with_a_reason(
        text: str, reason: str) -> None:
    """Too deep, too big (in UTF-8 bytes) or malformed: (None, reason), never an exception."""
    value, problem = parse_tool_arguments(text)
    assert value is None
    assert problem is not None and reason in problem


def test_the_limits_are_exact_and_brackets_in_strings_do_not_count() -> None:
    """Depth 64 passes and 65 does not; "[[[" inside a string is not nesting."""
    at_limit = '{"a": ' + "[" * (MAX_ARGUMENT_DEPTH - 1) + "]" * (MAX_ARGUMENT_DEPTH - 1) + "}"
    assert parse_tool_arguments(at_limit)[1] is None
    over = '{"a": ' + "[" * MAX_ARGUMENT_DEPTH + "]" * MAX_ARGUMENT_DEPTH + "}"
    assert parse_tool_arguments(over)[0] is None
    assert parse_tool_arguments('{"a": "[[[[\\"[[[", "b": "}}}"}', max_depth=1) == (
        {"a": '[[[["[[[', "b": "}}}"}, None)
    assert parse_tool_arguments('{"a": "xyz"}', max_bytes=12)[1] is None
    assert parse_tool_arguments('{"a": "xyz"}', max_bytes=11)[0] is None


def test_empty_arguments_are_an_empty_object() -> None:
    """Providers send "" for a call without arguments."""
    assert parse_tool_arguments("") == ({}, None)


def test_a_tool_call_request_reads_its_arguments_through_the_same_limits() -> None:
    """ToolCallRequest.parsed / parse_error use the default limits."""
    call = ToolCallRequest(id="c", name="t", arguments=DEEP)
    assert call.parsed is None
    assert "levels deep" in (call.parse_error or "")


async def test_deep_arguments_from_either_adapter_are_data_not_a_crash(
        server: FaultServer, make_model: ModelFactory, provider: str) -> None:
    """OpenAI sends arguments as text, Anthropic as a JSON object: a deeply nested one
    reaches the caller as a call whose parse_error names the depth."""
    args: Any = DEEP if provider == "openai" else {"a": nested(200)}
    server.enqueue_reply(content=None, tool_calls=[("c1", "t", args)])
    response = await make_model(provider).complete(ModelRequest.of("x", tools=[TOOL]))
    call = response.tool_calls[0]
    assert call.parsed is None
    assert "levels deep, over the limit of 64" in (call.parse_error or "")


class _DeepBody(http.server.BaseHTTPRequestHandler):
    """Answers every POST with 200 and a JSON body nested 5,000 levels deep."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        data = ('{"a": ' + "[" * 5000 + "]" * 5000 + "}").encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_body_too_deep_to_parse_is_a_malformed_response(provider: str) -> None:
    """A response nested past the JSON parser's recursion limit is MalformedResponseError
    (retryable), not a RecursionError that fails the run."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DeepBody)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    model: OpenAIModel | AnthropicModel = (
        OpenAIModel("m", api_key="k", base_url=url + "/v1", timeout=5.0)
        if provider == "openai" else AnthropicModel("m", api_key="k", base_url=url,
                                                    timeout=5.0))
    try:
        with pytest.raises(MalformedResponseError):
            await model.complete(ModelRequest.of("x"))
    finally:
        await model.aclose()
        server.shutdown()
        server.server_close()
