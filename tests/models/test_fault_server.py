"""FaultServer itself: routing, queues, modes, recording and prompt shutdown."""

from __future__ import annotations

import time

import httpx
import pytest

import stalwart.testing as testing
from stalwart.testing import Fault, FaultServer, Reply


def test_unknown_path_is_404_and_recorded(server: FaultServer) -> None:
    """Requests outside the two endpoints get a 404 and are still recorded."""
    with httpx.Client() as client:
        response = client.post(server.url + "/v1/embeddings", json={})
    assert response.status_code == 404
    assert [(r.path, r.outcome) for r in server.requests] == [("/v1/embeddings", "not_found")]


def test_faults_apply_in_order_then_replies(server: FaultServer) -> None:
    """Queued faults hit the next requests first-in-first-out, then scripted replies."""
    server.enqueue_fault(Fault.http(500), times=2)
    server.enqueue_fault(Fault.http(429, retry_after=1))
    server.enqueue_reply(Reply(content="one"))
    server.enqueue_reply(content="two")
    assert server.pending_faults == 3
    with httpx.Client(base_url=server.openai_url) as client:
        statuses = [client.post("/chat/completions", json={"model": "m"}) for _ in range(6)]
    assert [r.status_code for r in statuses] == [500, 500, 429, 200, 200, 200]
    assert statuses[2].headers["retry-after"] == "1"
    assert [r.json()["choices"][0]["message"]["content"] for r in statuses[3:]] == [
        "one", "two", "ok"]
    assert [r.outcome for r in server.requests] == [
        "status:500", "status:500", "status:429", "reply", "reply", "reply"]
    assert server.requests[0].body == {"model": "m"}


def test_error_rate_is_seeded(server: FaultServer) -> None:
    """The random error mode fails a reproducible, roughly configured share of requests."""
    def run() -> list[int]:
        server.set_error_rate(0.3, seed=11, status=502)
        with httpx.Client(base_url=server.anthropic_url) as client:
            return [client.post("/v1/messages", json={}).status_code for _ in range(60)]

    first, second = run(), run()
    assert first == second
    assert 8 <= first.count(502) <= 28
    assert set(first) == {200, 502}
    with pytest.raises(ValueError):
        server.set_error_rate(1.5)


@pytest.mark.timeout(10)
def test_close_wakes_stalled_handlers() -> None:
    """Closing the server does not wait out a long stall."""
    server = FaultServer()
    server.start()
    server.enqueue_fault(Fault.stall(30.0))
    with httpx.Client(timeout=0.2) as client, pytest.raises(httpx.ReadTimeout):
        client.post(server.openai_url + "/chat/completions", json={})
    started = time.monotonic()
    server.close()
    assert time.monotonic() - started < 2.0
    server.close()  # idempotent
    with pytest.raises(RuntimeError):
        _ = server.url


async def test_async_context_manager() -> None:
    """The server works as an async context manager too."""
    async with FaultServer() as server, httpx.AsyncClient() as client:
        response = await client.post(server.anthropic_url + "/v1/messages",
                                     json={"model": "claude-x"})
    body = response.json()
    assert (body["model"], body["stop_reason"], body["content"]) == (
        "claude-x", "end_turn", [{"type": "text", "text": "ok"}])


def test_public_names_are_pinned() -> None:
    """stalwart.testing exports the fault server names."""
    assert {"Fault", "FaultServer", "RecordedRequest", "Reply"} <= set(testing.__all__)
