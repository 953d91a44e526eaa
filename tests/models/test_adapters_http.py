"""Both SDK adapters over real HTTP against FaultServer: results and every failure mapping."""

from __future__ import annotations

import email.utils
import socket
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

import stalwart as sw
from stalwart import FakeClock
from stalwart.errors import (
    AuthenticationError,
    ContentFilterError,
    InvalidRequestError,
    MalformedResponseError,
    ModelConnectionError,
    ModelError,
    ModelTimeoutError,
    ProviderOverloadedError,
    RateLimitedError,
)
from stalwart.models import (
    AnthropicModel,
    Message,
    Model,
    ModelOptions,
    ModelRequest,
    ModelResponse,
    OpenAIModel,
    ToolCallRequest,
    ToolSpec,
)
from stalwart.testing import Fault, FaultServer, Reply

ModelFactory = Callable[..., Model]  # the make_model fixture (see conftest.py)

HELLO = ModelRequest.of(Message.system("Be brief."), "Say hello.")

WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather for a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"]},
)


async def test_text_reply_is_mapped(server: FaultServer, make_model: ModelFactory,
                                    provider: str) -> None:
    """A plain text completion becomes a ModelResponse with content, usage and ids."""
    server.enqueue_reply(Reply(content="Hello!", input_tokens=12, output_tokens=3))
    model = make_model(provider)

    response = await model.complete(HELLO)

    assert response.content == "Hello!"
    assert response.tool_calls == ()
    assert response.finish_reason == "stop"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (12, 3)
    assert response.provider == provider
    assert response.model == "test-model"
    assert response.raw_id
    assert len(server.requests) == 1


async def test_response_round_trips_through_json(server: FaultServer,
                                                 make_model: ModelFactory,
                                                 provider: str) -> None:
    """What an adapter returns survives the journal's JSON round trip unchanged."""
    server.enqueue_reply(Reply(content=None, tool_calls=[("c1", "get_weather",
                                                          {"city": "Oslo"})]))
    response = await make_model(provider).complete(ModelRequest.of("hi", tools=[WEATHER]))

    assert ModelResponse.model_validate_json(response.model_dump_json()) == response


async def test_tool_calls_come_back_parsed(server: FaultServer, make_model: ModelFactory,
                                           provider: str) -> None:
    """Tool calls in a reply become ToolCallRequests with raw and parsed arguments."""
    server.enqueue_reply(content=None, tool_calls=[
        ("call_1", "get_weather", {"city": "Oslo"}),
        ("call_2", "get_weather", {"city": "Lima"}),
    ])
    response = await make_model(provider).complete(
        ModelRequest.of("Weather in Oslo and Lima?", tools=[WEATHER]))

    assert response.finish_reason == "tool_calls"
    assert [(c.id, c.name, c.parsed) for c in response.tool_calls] == [
        ("call_1", "get_weather", {"city": "Oslo"}),
        ("call_2", "get_weather", {"city": "Lima"}),
    ]
    assert all(c.parse_error is None for c in response.tool_calls)


async def test_openai_invalid_tool_arguments_are_data_not_errors(
        server: FaultServer, make_model: ModelFactory) -> None:
    """Arguments that are not JSON reach the caller with a parse_error, not an exception."""
    server.enqueue_reply(content=None, tool_calls=[("c1", "get_weather", '{"city": "Os')])
    response = await make_model("openai").complete(ModelRequest.of("x", tools=[WEATHER]))

    call = response.tool_calls[0]
    assert call.arguments == '{"city": "Os'
    assert call.parsed is None
    assert call.parse_error is not None


async def test_openai_request_carries_tools_history_and_options(
        server: FaultServer, make_model: ModelFactory) -> None:
    """Tools, assistant tool calls, tool results and options are sent in OpenAI format."""
    call = ToolCallRequest.create("call_1", "get_weather", {"city": "Oslo"})
    request = ModelRequest(
        messages=(Message.system("sys"), Message.user("Weather?"),
                  Message.assistant(tool_calls=[call]),
                  Message.tool("sunny", tool_call_id="call_1", name="get_weather")),
        tools=(WEATHER,),
        options=ModelOptions(temperature=0.2, max_tokens=50, stop=("END",), seed=7,
                             tool_choice="auto"),
    )
    await make_model("openai", "gpt-x").complete(request)

    sent = server.requests[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer test-key"
    body = sent.body
    assert body["model"] == "gpt-x"
    assert body["tools"] == [WEATHER.to_openai()]
    assert body["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    assert (body["temperature"], body["max_completion_tokens"], body["stop"], body["seed"],
            body["tool_choice"]) == (0.2, 50, ["END"], 7, "auto")


async def test_anthropic_request_splits_system_and_uses_blocks(
        server: FaultServer, make_model: ModelFactory) -> None:
    """System goes top-level; tool calls/results become tool_use/tool_result blocks."""
    calls = [ToolCallRequest.create("toolu_1", "get_weather", {"city": "Oslo"}),
             ToolCallRequest.create("toolu_2", "get_weather", {"city": "Lima"})]
    request = ModelRequest(
        messages=(Message.system("sys"), Message.user("Weather?"),
                  Message.assistant("Checking.", tool_calls=calls),
                  Message.tool("sunny", tool_call_id="toolu_1"),
                  Message.tool("rain", tool_call_id="toolu_2"),
                  Message.user("Thanks. Summarise.")),
        tools=(WEATHER,),
        options=ModelOptions(temperature=0.5, stop=("END",), tool_choice="required"),
    )
    await make_model("anthropic", "claude-x", default_max_tokens=321).complete(request)

    sent = server.requests[0]
    assert sent.path == "/v1/messages"
    # SDK versions differ in how they send the key; one of the two headers carries it.
    assert "test-key" in sent.headers.get("x-api-key", sent.headers.get("authorization", ""))
    body = sent.body
    assert body["system"] == "sys"
    assert body["max_tokens"] == 321
    assert body["temperature"] == 0.5
    assert body["stop_sequences"] == ["END"]
    assert body["tools"] == [WEATHER.to_anthropic()]
    assert body["tool_choice"] == {"type": "any"}
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
             "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather",
             "input": {"city": "Lima"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "rain"},
            {"type": "text", "text": "Thanks. Summarise."}]},
    ]


FAULTS = [
    pytest.param(Fault.http(429, retry_after=2), RateLimitedError, 2.0, id="429"),
    pytest.param(Fault.http(429, retry_after="0.25"), RateLimitedError, 0.25, id="429-frac"),
    pytest.param(Fault.http(429), RateLimitedError, None, id="429-no-header"),
    pytest.param(Fault.http(500), ProviderOverloadedError, None, id="500"),
    pytest.param(Fault.http(502), ProviderOverloadedError, None, id="502"),
    pytest.param(Fault.http(503, retry_after=7), ProviderOverloadedError, 7.0, id="503"),
    pytest.param(Fault.http(529), ProviderOverloadedError, None, id="529"),
    pytest.param(Fault.http(408), ModelTimeoutError, None, id="408"),
    pytest.param(Fault.http(400), InvalidRequestError, None, id="400"),
    pytest.param(Fault.http(404), InvalidRequestError, None, id="404"),
    pytest.param(Fault.http(422), InvalidRequestError, None, id="422"),
    pytest.param(Fault.http(401), AuthenticationError, None, id="401"),
    pytest.param(Fault.http(403), AuthenticationError, None, id="403"),
    pytest.param(Fault.drop(), ModelConnectionError, None, id="drop"),
    pytest.param(Fault.reset(), ModelConnectionError, None, id="reset"),
    pytest.param(Fault.malformed(), MalformedResponseError, None, id="malformed-json"),
    pytest.param(Fault.missing_fields(), MalformedResponseError, None, id="missing-fields"),
    pytest.param(Fault.content_filter(), ContentFilterError, None, id="content-filter"),
]


@pytest.mark.parametrize(("fault", "error", "retry_after"), FAULTS)
async def test_fault_maps_to_error(server: FaultServer, make_model: ModelFactory,
                                   provider: str, fault: Fault, error: type[ModelError],
                                   retry_after: float | None) -> None:
    """Each injected fault raises exactly its stalwart error, once (no SDK retries)."""
    server.enqueue_fault(fault)
    model = make_model(provider)

    with pytest.raises(ModelError) as info:
        await model.complete(HELLO)

    assert type(info.value) is error
    assert info.value.retryable is error.retryable
    assert info.value.retry_after == retry_after
    assert getattr(info.value, "provider", None) == provider
    assert len(server.requests) == 1
    if fault.kind == "status":
        assert getattr(info.value, "status_code", None) == fault.status


def test_retryable_flags_follow_the_taxonomy() -> None:
    """Transient failures are retryable; request, auth and content problems are not."""
    retryable = {RateLimitedError, ProviderOverloadedError, ModelTimeoutError,
                 ModelConnectionError, MalformedResponseError}
    final = {InvalidRequestError, AuthenticationError, ContentFilterError}
    assert all(cls.retryable for cls in retryable)
    assert not any(cls.retryable for cls in final)


async def test_retry_after_http_date(server: FaultServer, make_model: ModelFactory,
                                     provider: str) -> None:
    """A Retry-After HTTP-date becomes seconds from the adapter clock's now()."""
    clock = FakeClock(start=1_700_000_000.0)
    when = email.utils.formatdate(clock.now() + 30, usegmt=True)
    server.enqueue_fault(Fault.http(429, retry_after=when))

    with pytest.raises(RateLimitedError) as info:
        await make_model(provider, clock=clock).complete(HELLO)

    assert info.value.retry_after == 30.0


async def test_openai_content_policy_400_is_content_filter(
        server: FaultServer, make_model: ModelFactory) -> None:
    """A 400 whose error code is content_filter is a ContentFilterError, not invalid input."""
    server.enqueue_fault(Fault.http(400, code="content_filter"))
    with pytest.raises(ContentFilterError) as info:
        await make_model("openai").complete(HELLO)
    assert not info.value.retryable


@pytest.mark.timeout(10)
async def test_stall_beyond_client_timeout_is_model_timeout(
        server: FaultServer, make_model: ModelFactory, provider: str) -> None:
    """A server that stalls past the client timeout raises a retryable ModelTimeoutError."""
    server.enqueue_fault(Fault.stall(1.0))
    with pytest.raises(ModelTimeoutError) as info:
        await make_model(provider, timeout=0.3).complete(HELLO)
    assert info.value.retryable
    assert len(server.requests) == 1


@pytest.mark.timeout(10)
async def test_stall_within_timeout_then_replies(server: FaultServer,
                                                 make_model: ModelFactory,
                                                 provider: str) -> None:
    """A short stall inside the client timeout is only slow, and the reply arrives."""
    server.enqueue_fault(Fault.stall(0.05))
    server.enqueue_reply(content="late but fine")
    response = await make_model(provider, timeout=5.0).complete(HELLO)
    assert response.content == "late but fine"


async def test_connection_refused_is_connection_error(provider: str) -> None:
    """Nothing listening on the port is a retryable ModelConnectionError."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    model: OpenAIModel | AnthropicModel
    if provider == "openai":
        model = OpenAIModel("m", api_key="k", base_url=f"http://127.0.0.1:{port}/v1")
    else:
        model = AnthropicModel("m", api_key="k", base_url=f"http://127.0.0.1:{port}")
    async with model:
        with pytest.raises(ModelConnectionError) as info:
            await model.complete(HELLO)
    assert info.value.retryable


async def test_outage_and_recovery(server: FaultServer, make_model: ModelFactory,
                                   provider: str) -> None:
    """During an outage every call is overloaded; after it, calls succeed again."""
    model = make_model(provider)
    server.set_outage(503)
    for _ in range(3):
        with pytest.raises(ProviderOverloadedError):
            await model.complete(HELLO)
    server.set_outage(None)
    assert (await model.complete(HELLO)).content == "ok"
    assert [r.outcome for r in server.requests] == ["outage:503"] * 3 + ["reply"]


@pytest.mark.parametrize(("provider", "key_headers"), [
    ("openai", {"authorization"}), ("anthropic", {"authorization", "x-api-key"})])
async def test_a_local_server_without_a_key_is_sent_no_key_header(
        server: FaultServer, monkeypatch: pytest.MonkeyPatch, provider: str,
        key_headers: set[str]) -> None:
    """With a base_url and no key anywhere, the request goes out with no key header at
    all (a local OpenAI-compatible server needs none); with a key, it carries it."""
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL",
                "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    keyless = (sw.OpenAIModel("local", base_url=server.openai_url) if provider == "openai"
               else sw.AnthropicModel("local", base_url=server.anthropic_url))
    keyed = (sw.OpenAIModel("local", base_url=server.openai_url, api_key="sk-1")
             if provider == "openai"
             else sw.AnthropicModel("local", base_url=server.anthropic_url, api_key="sk-1"))
    try:
        assert (await keyless.complete(HELLO)).content == "ok"
        assert key_headers.isdisjoint(server.requests[-1].headers)
        await keyed.complete(HELLO)
        sent = server.requests[-1].headers
        assert "sk-1" in (sent.get("authorization", "") + sent.get("x-api-key", ""))
    finally:
        await keyless.aclose()
        await keyed.aclose()


async def test_a_429s_rate_limit_headers_reach_the_error(
        server: FaultServer, make_model: ModelFactory, provider: str) -> None:
    """Over real HTTP, each provider's own rate-limit headers become the 429's quota;
    with no Retry-After, the reset of the exhausted quota stands in for one."""
    clock = FakeClock(start=1_700_000_000.0)
    if provider == "openai":
        headers = {"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0",
                   "x-ratelimit-reset-requests": "6m0s", "x-ratelimit-limit-tokens": "1000",
                   "x-ratelimit-remaining-tokens": "900", "x-ratelimit-reset-tokens": "6ms"}
    else:
        # RFC 3339, as Anthropic sends its resets
        iso = datetime.fromtimestamp(clock.now() + 360, UTC).isoformat()
        headers = {"anthropic-ratelimit-requests-limit": "60",
                   "anthropic-ratelimit-requests-remaining": "0",
                   "anthropic-ratelimit-requests-reset": iso.replace("+00:00", "Z"),
                   "anthropic-ratelimit-tokens-limit": "1000",
                   "anthropic-ratelimit-tokens-remaining": "900",
                   "anthropic-ratelimit-tokens-reset": iso.replace("+00:00", "Z")}
    server.enqueue_fault(Fault.http(429, headers=headers))

    with pytest.raises(RateLimitedError) as info:
        await make_model(provider, clock=clock).complete(HELLO)

    quota = info.value.quota
    assert quota is not None
    assert (quota.requests_limit, quota.requests_remaining, quota.requests_reset) == (
        60.0, 0.0, 360.0)
    assert (quota.tokens_limit, quota.tokens_remaining) == (1000.0, 900.0)
    assert info.value.retry_after == 360.0
