"""An agent's context window end to end: policies act before the call, journaled and
traced; replay reproduces the decisions; bad configurations are refused early."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import stalwart as sw
from stalwart.cli._trace import build_trace, render_trace
from stalwart.engine._cost import PriceTable
from stalwart.models import ModelRequest, ToolCallRequest
from stalwart.store import Event

BIG = "lorem ipsum dolor sit amet " * 60


class Reader:
    """Fetches ``pages`` pages, one tool call per turn, then answers."""

    def __init__(self, pages: int) -> None:
        self.pages = pages
        self.requests: list[ModelRequest] = []
        self.summaries = 0

    def __call__(self, request: ModelRequest) -> object:
        if request.messages[0].content == sw.Summarize().instructions:
            self.summaries += 1
            return f"pages read so far; the code word is MAGENTA ({self.summaries})"
        self.requests.append(request)
        n = len(self.requests) - 1
        if n < self.pages:
            return ToolCallRequest.create(f"c{n}", "fetch", {"page": n})
        return "done"


async def fetch(page: int) -> str:
    return f"page {page}: {BIG}"


def reader_agent(model: Reader, window: sw.ContextWindow) -> sw.Agent[str]:
    return sw.Agent("reader", sw.FunctionModel(model, name="reader"), tools=[sw.Tool(fetch)],
                    instructions="Read the pages.", context=window, max_iterations=20)


def reader_app(tmp_path: Path, agent: sw.Agent[str]) -> tuple[sw.Runtime, Any]:
    app = sw.Runtime(tmp_path / "j.db")

    @app.workflow
    async def read(ctx: sw.Context) -> str:
        return await agent.run(ctx, "read every page")

    return app, read


async def run_reader(tmp_path: Path, agent: sw.Agent[str],
                     ) -> tuple[sw.RunRecord, list[Event]]:
    """Run the reader to its end; its run record and journal."""
    app, read = reader_app(tmp_path, agent)
    async with app:
        handle = await app.start(read)
        try:
            await handle.result()
        except sw.RunFailedError:
            pass
        rec = await app.store.get_run(handle.run_id)
        events = await app.store.load_events(handle.run_id)
    assert rec is not None
    return rec, events


def notes_of(events: list[Event]) -> list[dict[str, Any]]:
    return [json.loads(e.payload or "{}") for e in events if e.kind == "context_window"]


async def replay(tmp_path: Path, agent: sw.Agent[str], run_id: str) -> sw.ReplayReport:
    app, _ = reader_app(tmp_path, agent)
    async with app:
        return await app.replay(run_id)


async def test_evict_stubs_old_tool_results_first_and_journals_each(tmp_path: Path) -> None:
    """Over the limit, the oldest tool results become stubs (their calls keep an answer),
    each action journaled on the call it prepared, and runs trace shows them."""
    model = Reader(pages=6)
    window = sw.ContextWindow(1_500, reserve_output=200, policy=sw.Evict())
    rec, events = await run_reader(tmp_path, reader_agent(model, window))
    notes = notes_of(events)
    assert notes and {n["action"] for n in notes} == {"stub"}
    assert all(int(str(n["after"])) <= 1_300 < int(str(n["before"])) for n in notes)
    first = notes[0]["moved"]
    assert isinstance(first, list) and first[0]["role"] == "tool" and first[0]["index"] == 3
    last = model.requests[-1].messages
    stubs = [m for m in last if m.role == "tool" and "evicted" in (m.content or "")]
    assert stubs and all(m.tool_call_id for m in stubs)
    assert last[-1].content == f"page 5: {BIG}"  # the newest result is still whole
    out = io.StringIO()
    render_trace(Console(file=out, width=200), build_trace(rec, events, PriceTable()))
    assert "window stub 1 message" in out.getvalue()


async def test_evict_drops_whole_turns_when_stubs_are_not_enough(tmp_path: Path) -> None:
    """When stubbing every old result is not enough, whole old turns go (a call with
    its result), never the system prompt, the task or the latest user turn."""
    model = Reader(pages=12)
    window = sw.ContextWindow(500, reserve_output=100, policy=sw.Evict())
    _, events = await run_reader(tmp_path, reader_agent(model, window))
    notes = notes_of(events)
    assert "evict" in {n["action"] for n in notes}
    for request in model.requests:
        assert [m.role for m in request.messages[:2]] == ["system", "user"]
        assert request.messages[1].content == "read every page"


async def test_reject_refuses_before_the_call_with_the_numbers(tmp_path: Path) -> None:
    """Under reject, the request that would not fit is never sent: the run fails with
    ContextOverflowError carrying needed, limit, capacity, reserve and pinned."""
    model = Reader(pages=6)
    window = sw.ContextWindow(1_500, reserve_output=200)
    rec, events = await run_reader(tmp_path, reader_agent(model, window))
    assert rec.status == "failed" and rec.error is not None
    error = json.loads(rec.error)
    assert error["type"].endswith("ContextOverflowError")
    attrs = error["attributes"]
    assert attrs["capacity"] == 1_500 and attrs["reserve_output"] == 200
    assert attrs["limit"] == 1_300 and attrs["needed"] > 1_300
    assert all(sum(len(m.content or "") for m in r.messages) < 1_300 * 4
               for r in model.requests)
    assert [n["action"] for n in notes_of(events)] == ["reject"]


async def test_summarize_replaces_a_span_in_a_durable_step(tmp_path: Path) -> None:
    """Summarize writes the summary in a journaled model step and puts it in the span's
    place; runs replay reproduces every window decision."""
    model = Reader(pages=8)
    window = sw.ContextWindow(1_500, reserve_output=200,
                              policy=sw.Summarize(max_summary_tokens=64))
    agent = reader_agent(model, window)
    rec, events = await run_reader(tmp_path, agent)
    notes = notes_of(events)
    assert notes and {n["action"] for n in notes} == {"summarize"}
    assert model.summaries == len(notes)
    last = model.requests[-1].messages
    summary = next(m for m in last if "MAGENTA" in (m.content or ""))
    # It summarizes tool output, which the agent does not trust: so is the summary.
    assert summary.role == "user" and summary.provenance.label == "tool:fetch"
    report = await replay(tmp_path, agent, rec.run_id)
    assert any(e.name == "chat:reader/summary" and e.kind == "step_completed"
               for e in events)
    assert report.deterministic, report.divergences
    # A window that would decide otherwise is caught by the replay.
    agent.context = sw.ContextWindow(1_200, reserve_output=200,
                                     policy=sw.Summarize(max_summary_tokens=64))
    changed = await replay(tmp_path, agent, rec.run_id)
    assert not changed.deterministic


def test_capacity_below_the_pinned_prompt_is_refused_at_construction() -> None:
    """A window the system prompt alone overflows is a ConfigurationError, up front."""
    with pytest.raises(sw.ConfigurationError, match="system prompt"):
        sw.Agent("a", "sim:x", instructions="word " * 500,
                 context=sw.ContextWindow(300, reserve_output=50))
    with pytest.raises(sw.ConfigurationError, match="reserve_output"):
        sw.ContextWindow(100, reserve_output=100)
    with pytest.raises(sw.ConfigurationError, match="policy"):
        sw.ContextWindow(100, policy="drop-silently")


def test_unknown_model_without_a_limit_says_how_to_set_one() -> None:
    """No capacity and no table entry: the error names both ways to give one."""
    with pytest.raises(sw.ConfigurationError) as info:
        sw.Agent("a", sw.FunctionModel(lambda r: "x", name="mine"),
                 context=sw.ContextWindow())
    assert "ContextWindow(capacity=" in str(info.value)
    assert "limits=" in str(info.value) and "function:mine" in str(info.value)
    ok = sw.Agent("a", sw.FunctionModel(lambda r: "x", name="mine"), context=sw.ContextWindow(
        limits={"function:mine": sw.ModelLimits(8_000, 1_000)}))
    assert ok.context is not None
    assert sw.ContextWindow().resolve("openai:gpt-4o-mini").capacity == 128_000
