"""The live pages' Server-Sent Events, from a real server (uvicorn in a thread): a
fragment when the journal changes, nothing when it does not, ``end`` when a run has
finished."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from conftest import Dash, Journal, Served


def _events(response: httpx.Response) -> Iterator[tuple[str, str]]:
    """``(event, data)`` of each server-sent event (comments and pings skipped)."""
    event, data = "message", []
    for line in response.iter_lines():
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


def _start(dash: Dash, journal: Journal, run_id: str) -> None:
    async def go() -> None:
        rt = dash.app.runtime(journal.store)
        try:
            await rt.run(dash.app.adder, 20, 22, run_id=run_id)
        finally:
            await rt.close()

    asyncio.run(go())


def _approve(dash: Dash, journal: Journal, run_id: str) -> str:
    async def go() -> str:
        rt = dash.app.runtime(journal.store)
        try:
            await rt.signal(run_id, "approve", {"by": "ana"})
            await rt.resume(run_id)
            return str((await rt.wait_for_end(run_id, timeout=30)).status)
        finally:
            await rt.close()

    return asyncio.run(go())


def test_the_runs_stream_sends_the_table_when_a_run_appears(
        dash: Dash, served: tuple[Served, Journal]) -> None:
    server, journal = served
    with httpx.Client(timeout=20) as client, client.stream(
            "GET", f"{server.url}/runs/stream") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response)
        kind, first = next(events)
        assert kind == "runs" and 'data-run="ok-1"' in first
        assert 'data-run="live-1"' not in first
        _start(dash, journal, "live-1")
        kind, second = next(events)  # the next fragment is sent because the run appeared
        assert kind == "runs" and 'data-run="live-1"' in second
        row = second.split('data-run="live-1"')[1].split("</tr>")[0]
        while "s-completed" not in row:  # seen while running: a later fragment ends it
            kind, later = next(events)
            row = later.split('data-run="live-1"')[1].split("</tr>")[0]


def test_the_runs_stream_keeps_its_filter(dash: Dash,
                                          served: tuple[Served, Journal]) -> None:
    server, _ = served
    with httpx.Client(timeout=20) as client, client.stream(
            "GET", f"{server.url}/runs/stream?status=dead_lettered") as response:
        kind, rows = next(_events(response))
    assert kind == "runs" and 'data-run="dead-1"' in rows and 'data-run="ok-1"' not in rows


def test_a_run_stream_follows_the_run_to_its_end(dash: Dash,
                                                 served: tuple[Served, Journal]) -> None:
    """A waiting run: its fragment, then (signalled and resumed) the completed one, then
    ``end`` and the stream closes."""
    server, journal = served
    with httpx.Client(timeout=20) as client, client.stream(
            "GET", f"{server.url}/runs/wait-1/stream") as response:
        events = _events(response)
        kind, first = next(events)
        assert kind == "run" and "s-waiting" in first and "Waterfall" in first
        assert _approve(dash, journal, "wait-1") == "completed"
        seen = list(events)  # until the server closes the stream
    kinds = [k for k, _ in seen]
    assert kinds[-1] == "end"
    assert "s-completed" in [d for k, d in seen if k == "run"][-1]


def test_an_ended_run_stream_says_so_at_once(served: tuple[Served, Journal]) -> None:
    server, _ = served
    with httpx.Client(timeout=20) as client, client.stream(
            "GET", f"{server.url}/runs/ok-1/stream") as response:
        seen = list(_events(response))
    assert [k for k, _ in seen] == ["run", "end"]


def test_a_stream_of_an_unknown_run_is_a_404(served: tuple[Served, Journal]) -> None:
    server, _ = served
    response = httpx.get(f"{server.url}/runs/nope/stream", timeout=20)
    assert response.status_code == 404
