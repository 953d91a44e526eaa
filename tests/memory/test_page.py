"""Page and warm memory end to end: turns move to memory (durably, journaled, a stub in
their place), the recall tool finds them, memory outlives a run for its key and only
for it, replay reproduces the decisions, cold entries are searched when warm has no
match, and bad input is refused with typed errors."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import stalwart as sw
from stalwart.cli._timeline import window_line
from stalwart.cli._trace import build_trace, render_trace
from stalwart.engine._cost import PriceTable
from stalwart.models import ModelRequest, ToolCallRequest
from stalwart.store import Event

BIG = "lorem ipsum dolor sit amet " * 60
FACT = "The vault code is 7341."


class Reader:
    """Fetches ``pages`` pages (the first states the fact), then, if ``ask``, recalls
    the vault code, then answers with what the last tool result said."""

    def __init__(self, pages: int, *, ask: str | None = "vault code") -> None:
        self.pages = pages
        self.ask = ask
        self.requests: list[ModelRequest] = []

    def __call__(self, request: ModelRequest) -> object:
        self.requests.append(request)
        n = len(self.requests) - 1
        if n < self.pages:
            return ToolCallRequest.create(f"c{n}", "fetch", {"page": n})
        if n == self.pages and self.ask is not None:
            return ToolCallRequest.create("r1", "recall", {"query": self.ask, "k": 2})
        return "answer: " + (request.messages[-1].content or "")


async def fetch(page: int) -> str:
    return f"page {page}: {FACT if page == 0 else ''} {BIG}"


def agent_of(model: Reader, *, memory: sw.Memory | None = None, key: str | None = None,
             policy: sw.Page | None = None, capacity: int = 1_500) -> sw.Agent[str]:
    return sw.Agent("reader", sw.FunctionModel(model, name="reader"), tools=[sw.Tool(fetch)],
                    instructions="Read the pages.", max_iterations=30, memory=memory,
                    memory_key=key, context=sw.ContextWindow(
                        capacity, reserve_output=200, policy=policy or sw.Page()))


def app_of(store: Any, agent: sw.Agent[str]) -> tuple[sw.Runtime, Any]:
    app = sw.Runtime(store)

    @app.workflow
    async def read(ctx: sw.Context) -> str:
        return await agent.run(ctx, "read every page")

    return app, read


async def run(store: Any, agent: sw.Agent[str]) -> tuple[str, sw.RunRecord, list[Event]]:
    app, read = app_of(store, agent)
    async with app:
        handle = await app.start(read)
        out = await handle.result()
        rec = await app.store.get_run(handle.run_id)
        events = await app.store.load_events(handle.run_id)
    assert rec is not None
    return out, rec, events


def notes_of(events: list[Event]) -> list[dict[str, Any]]:
    return [json.loads(e.payload or "{}") for e in events if e.kind == "context_window"]


async def test_page_moves_turns_to_memory_with_a_stub_and_journals_each(tmp_path: Path,
                                                                        ) -> None:
    """Over the limit, the oldest turns are written to warm memory (one entry per turn,
    a call with its result) and a stub naming recall takes their place; each page is a
    context_window event with the keys, shown by runs trace; no request is over."""
    model = Reader(8, ask=None)
    memory = sw.Memory("notes")
    _, rec, events = await run(tmp_path / "j.db", agent_of(model, memory=memory))
    notes = notes_of(events)
    assert notes and {n["action"] for n in notes} == {"page"}
    keys = [k for n in notes for k in n["keys"]]
    assert keys and all(k.startswith("reader/") for k in keys)
    assert all(n["memory"] == "notes:reader" and n["after"] <= n["limit"] < n["before"]
               for n in notes)
    first = notes[0]["moved"]
    assert [m["role"] for m in first] == ["assistant", "tool"]  # one unit, whole
    async with sw.Runtime(tmp_path / "j.db") as app:
        stored = await memory.entries(app.store, key="reader")
    assert sorted(h.key for h in stored) == sorted(keys)
    assert any(FACT in h.text and h.source["kind"] == "page" for h in stored)
    last = model.requests[-1].messages
    assert [m.role for m in last[:2]] == ["system", "user"]
    stub = last[2]
    assert "paged out" in (stub.content or "") and "recall" in (stub.content or "")
    assert all(FACT not in (m.content or "") for m in last)
    assert "recall" in {t.name for t in model.requests[0].tools}
    out = io.StringIO()
    render_trace(Console(file=out, width=250), build_trace(rec, events, PriceTable()))
    assert "window page 2 messages" in out.getvalue()
    page = next(e for e in events if e.kind == "context_window")
    assert "to memory notes:reader (1 entries)" in window_line(page.payload)
    assert any(e.name == "memory:reader/page" and e.kind == "step_completed" for e in events)


async def test_recall_finds_a_paged_fact_within_its_token_bound(tmp_path: Path) -> None:
    """The model calls recall("vault code") after the fact was paged out: the tool's
    answer holds it, best first, and stays within the recall bound."""
    model = Reader(8)
    out, _, events = await run(tmp_path / "j.db", agent_of(model, policy=sw.Page(
        recall_tokens=120)))
    assert FACT in out
    answer = model.requests[-1].messages[-1]
    assert answer.role == "tool" and answer.name == "recall"
    assert sw.count_tokens(answer.content or "", "sim:x") <= 120
    assert any(e.name == "tool:recall" and e.kind == "step_completed" for e in events)


async def test_memory_outlives_the_run_for_its_key_and_only_for_it(tmp_path: Path) -> None:
    """A second run of an agent with the same memory key recalls what the first paged
    out; an agent with another key finds nothing (and says so)."""
    db = tmp_path / "j.db"
    await run(db, agent_of(Reader(8, ask=None), key="team-a"))
    again = Reader(0)  # no reading: straight to recall
    out, _, _ = await run(db, agent_of(again, key="team-a"))
    assert FACT in out
    other = Reader(0)
    out, _, _ = await run(db, agent_of(other, key="team-b"))
    assert "No memory matches 'vault code'" in out
    # A key is never a prefix of another's entries ("a/b" is quoted).
    from stalwart.memory._warm import memory_prefix

    assert not memory_prefix("team-a/x").startswith(memory_prefix("team-a"))


async def test_remember_and_recall_through_the_agent(tmp_path: Path) -> None:
    """agent.remember(ctx, text) writes a note under its key (a journaled step, once on
    replay); its recall tool finds it; an agent with memory but no window is offered
    recall too."""
    model = Reader(0, ask="anniversary")
    agent = sw.Agent("clerk", sw.FunctionModel(model, name="clerk"),
                     memory=sw.Memory("m"), max_iterations=5)
    app = sw.Runtime(tmp_path / "j.db")

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        await agent.remember(ctx, "Our anniversary is on the 12th of May.")
        return await agent.run(ctx, "when is it?")

    async with app:
        handle = await app.start(wf)
        out = await handle.result()
        assert (await app.replay(handle.run_id)).deterministic
        stored = await sw.Memory("m").entries(app.store, key="clerk")
    assert "12th of May" in out
    assert [h.source["kind"] for h in stored] == ["note"]
    with pytest.raises(sw.ConfigurationError, match="no memory"):
        await sw.Agent("y", "sim:y").remember(None, "x")  # type: ignore[arg-type]


async def test_replay_reproduces_page_decisions_and_catches_a_change(tmp_path: Path,
                                                                     ) -> None:
    """runs replay finds the same page decisions (the page steps read back, not
    rewritten); a window that would page otherwise is reported as a divergence."""
    model = Reader(8)
    agent = agent_of(model)
    _, rec, _ = await run(tmp_path / "j.db", agent)
    app, _ = app_of(tmp_path / "j.db", agent)
    async with app:
        report = await app.replay(rec.run_id)
        before = await sw.Memory().entries(app.store, key="reader")
        assert report.deterministic, report.divergences
        agent.context = sw.ContextWindow(1_200, reserve_output=200, policy=sw.Page())
        changed = await app.replay(rec.run_id)
        assert not changed.deterministic
        after = await sw.Memory().entries(app.store, key="reader")
    assert before == after


async def test_archive_moves_to_cold_and_auto_searches_cold_only_without_a_warm_match(
        tmp_path: Path) -> None:
    """archive(keep=1) moves all but the newest warm entry to the cold tier (once, on
    replay too); "auto" answers from warm when warm matches, else from cold;
    tier="warm" does not look in cold."""
    memory = sw.Memory("m")
    app = sw.Runtime(tmp_path / "j.db", clock=sw.FakeClock(1_000.0, autojump=True))

    @app.workflow
    async def wf(ctx: sw.Context) -> dict[str, Any]:
        await memory.remember(ctx, "the boiler was serviced in March", key="house")
        await ctx.sleep(5)
        await memory.remember(ctx, "the roof leaks above the boiler room", key="house")
        moved = await memory.archive(ctx, key="house", keep=1)
        boiler = await memory.search(ctx, "boiler", key="house")
        march = await memory.search(ctx, "March", key="house")
        warm_only = await memory.search(ctx, "March", key="house", tier="warm")
        recent = await memory.recent(ctx, key="house", k=5)
        return {"moved": len(moved), "boiler": [h.tier for h in boiler],
                "march": [(h.tier, h.text) for h in march], "warm_only": len(warm_only),
                "recent": [h.text for h in recent]}

    async with app:
        handle = await app.start(wf)
        got = await handle.result()
        assert (await app.replay(handle.run_id)).deterministic
        cold = await memory.entries(app.store, key="house", tier="cold")
    assert got == {"moved": 1, "boiler": ["warm"],
                   "march": [["cold", "the boiler was serviced in March"]],
                   "warm_only": 0, "recent": ["the roof leaks above the boiler room"]}
    assert len(cold) == 1


def test_keyword_ranking_is_bm25_with_recency_tie_break() -> None:
    """Rarer terms weigh more; equal scores go to the newer entry; no shared term is no
    match."""
    from stalwart.memory._search import Candidate, rank

    cands = [Candidate("a", "invoice 4471 charged twice", 1.0),
             Candidate("b", "the invoice was paid", 2.0),
             Candidate("c", "the invoice was paid", 3.0),
             Candidate("d", "weather is fine", 4.0)]
    ranked = rank("m", "invoice 4471", cands)
    assert [s.candidate.key for s in ranked[:3]] == ["a", "c", "b"]
    assert [s.match for s in ranked] == [True, True, True, False]


async def test_embedding_search_and_its_errors(tmp_path: Path) -> None:
    """With embed=, entries rank by cosine similarity; an embedding of other dimensions
    than the stored ones is an EmbeddingError naming both; a non-vector too."""
    def embed(text: str) -> list[float]:
        return [float(text.count(c)) for c in "aeiou"]

    memory = sw.Memory("e", embed=embed, min_similarity=0.1)
    app = sw.Runtime(tmp_path / "j.db")

    @app.workflow
    async def wf(ctx: sw.Context, query: str) -> list[str]:
        if not await memory.recent(ctx, key="k"):
            await memory.remember(ctx, "aaaa", key="k")
            await memory.remember(ctx, "uuuu", key="k")
        return [h.text for h in await memory.search(ctx, query, key="k", k=1)]

    async with app:
        assert await (await app.start(wf, "a")).result() == ["aaaa"]
        memory.embed = lambda text: [1.0, 2.0]
        with pytest.raises(sw.RunFailedError) as info:
            await (await app.start(wf, "a")).result()
        assert "EmbeddingError" in info.value.message and "2 dimensions" in str(info.value)
        memory.embed = lambda text: "nope"  # type: ignore[assignment,return-value]
        with pytest.raises(sw.RunFailedError, match="non-empty sequence of floats"):
            await (await app.start(wf, "u")).result()


async def test_bad_queries_are_typed_errors_and_the_model_is_told(tmp_path: Path) -> None:
    """An empty query, k < 1 or an unknown tier is a MemoryQueryError (a ValueError)
    before anything is read; a model that sends one gets the message as a tool error."""
    memory = sw.Memory()
    store = sw.SQLiteStore(tmp_path / "j.db")
    try:
        for query, k, tier in (("  ", 3, "auto"), ("x", 0, "auto"), ("x", 2, "hot")):
            with pytest.raises(sw.MemoryQueryError) as info:
                await memory.find(store, key="k", query=query, k=k, tier=tier)  # type: ignore[arg-type]
            assert isinstance(info.value, ValueError)
    finally:
        await store.close()
    model = Reader(0, ask="")
    out, _, _ = await run(tmp_path / "j2.db", agent_of(model))
    assert "tool_failed" in out and "non-empty query" in out


def test_bad_configuration_is_refused_up_front() -> None:
    """Page and Agent memories that differ, a tool named recall beside memory, bad
    Page sizes, a bad memory or key: ConfigurationError when the agent is made."""
    with pytest.raises(sw.ConfigurationError, match="differ"):
        sw.Agent("a", "sim:a", memory=sw.Memory("x"), context=sw.ContextWindow(
            8_000, policy=sw.Page(memory=sw.Memory("y"))))

    async def recall(query: str) -> str:
        return query

    with pytest.raises(sw.ConfigurationError, match="recall"):
        sw.Agent("a", "sim:a", tools=[sw.Tool(recall)], memory=sw.Memory())
    with pytest.raises(sw.ConfigurationError, match="recall_tokens"):
        sw.Page(recall_tokens=3)
    with pytest.raises(sw.ConfigurationError):
        sw.Memory("")
    with pytest.raises(sw.ConfigurationError, match="memory key"):
        sw.Agent("a", "sim:a", memory_key="")
    assert sw.ContextWindow(8_000, policy="page").window_policy == sw.Page()


@pytest.mark.skipif(not os.environ.get("STALWART_TEST_POSTGRES_URL"),
                    reason="set STALWART_TEST_POSTGRES_URL=postgresql://... to run this test")
async def test_page_and_recall_on_postgres() -> None:
    """The same on PostgreSQL: the paged fact is recalled, in this run and the next."""
    import uuid

    url = os.environ["STALWART_TEST_POSTGRES_URL"]
    key = f"pg-{uuid.uuid4().hex[:8]}"
    out, _, events = await run(url, agent_of(Reader(8), key=key))
    assert FACT in out and {n["action"] for n in notes_of(events)} == {"page"}
    out, _, _ = await run(url, agent_of(Reader(0), key=key))
    assert FACT in out
