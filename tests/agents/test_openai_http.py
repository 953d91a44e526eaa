"""An agent on the real ``openai`` adapter, over real HTTP, against a FaultServer that
misbehaves: the policy stack retries every fault and the conversation completes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import stalwart as sw
from stalwart.models import OpenAIModel
from stalwart.store import EventKind
from stalwart.testing import Fault, FaultServer

TINY = sw.Retry(max_attempts=6, initial=0.001, max_backoff=0.01)

BURST = [
    Fault.http(429, retry_after="0", message="slow down"),
    Fault.http(500, message="upstream broke"),
    Fault.http(500, message="upstream broke again"),
    Fault.malformed(),
    Fault.drop(),
]


@pytest.fixture
def server() -> Iterator[FaultServer]:
    """A FaultServer on 127.0.0.1, closed after the test."""
    with FaultServer() as srv:
        yield srv


@pytest.mark.parametrize("configured_by", ["instance", "environment"])
async def test_an_agent_survives_a_burst_of_http_faults_and_finishes_its_tool_call(
        tmp_path: Path, server: FaultServer, monkeypatch: pytest.MonkeyPatch,
        configured_by: str) -> None:
    """429 (Retry-After: 0), two 500s, a malformed body and a dropped connection are each
    retried; the tool runs once; the answer comes back; the journal shows every fault."""
    for fault in BURST:
        server.enqueue_fault(fault)
    server.enqueue_reply(content=None, tool_calls=[("call_1", "get_weather", {"city": "Oslo"})])
    server.enqueue_reply(content="It is sunny in Oslo.")

    tool_calls: list[sw.ToolCall] = []

    def get_weather(city: str, call: sw.ToolCall) -> str:
        """Current weather for a city."""
        tool_calls.append(call)
        return f"sunny in {city}"

    models: dict[str, OpenAIModel] = {}
    if configured_by == "instance":
        models["openai:test-model"] = OpenAIModel(
            "test-model", base_url=server.openai_url, api_key="any-key", timeout=5.0)
    else:
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_url)
        monkeypatch.setenv("OPENAI_API_KEY", "any-key")
    app = sw.Runtime(tmp_path / "j.db", models=models, policy=sw.Policy(retry=TINY))
    agent = sw.Agent("weather", "openai:test-model", tools=[sw.Tool(get_weather)],
                     instructions="Answer with the weather.")

    @app.workflow
    async def ask(ctx: sw.Context, question: str) -> dict[str, Any]:
        res = await agent.run_result(ctx, question)
        return {"output": res.output, "iterations": res.iterations,
                "tool_calls": res.tool_calls, "models": list(res.models),
                "tokens": [res.usage.input_tokens, res.usage.output_tokens]}

    try:
        async with app:
            handle = await app.start(ask, "Weather in Oslo?")
            result = await handle.result(timeout=30)
            events = await app.events(handle.run_id)
            counts = dict(app.policy_counts)
    finally:
        for model in models.values():
            await model.aclose()

    assert result == {"output": "It is sunny in Oslo.", "iterations": 2, "tool_calls": 1,
                      "models": ["openai:test-model"] * 2, "tokens": [20, 10]}
    assert [(c.tool, c.attempt) for c in tool_calls] == [("get_weather", 1)]
    assert tool_calls[0].idempotency_key == f"{handle.run_id}:2"

    requests = server.requests
    assert [r.outcome for r in requests] == [
        "status:429", "status:500", "status:500", "malformed", "drop", "reply", "reply"]
    assert all(r.path == "/v1/chat/completions" for r in requests)
    assert all(r.headers["authorization"] == "Bearer any-key" for r in requests)
    first = requests[0].body
    assert all(r.body == first for r in requests[:6])  # a retry resends the same turn
    assert first["tools"][0]["function"]["name"] == "get_weather"
    assert requests[6].body["messages"][-1] == {
        "role": "tool", "tool_call_id": "call_1", "content": "sunny in Oslo"}

    failed = [json.loads(e.payload or "{}") for e in events
              if e.kind == EventKind.ATTEMPT_FAILED]
    assert [(f["attempt"], f["next"], f["key"]) for f in failed] == [
        (n, "retry", "openai:test-model") for n in range(1, 6)]
    assert [f["error"]["type"].rpartition(".")[2] for f in failed] == [
        "RateLimitedError", "ProviderOverloadedError", "ProviderOverloadedError",
        "MalformedResponseError", "ModelConnectionError"]
    assert failed[0]["retry_at"] >= failed[0]["at"]
    assert counts.get("retried") == 5
    assert not any(k.startswith(("breaker_", "fallback")) for k in counts)
    chats = [e for e in events if e.kind == EventKind.STEP_COMPLETED
             and (e.name or "").startswith("chat:")]
    assert [e.step_id for e in chats] == ["1", "3"]
