"""A long agent's journal grows with its transcript, not with its square: each turn
journals the model's answer and the tool's result, never the whole request (a replay
rebuilds the conversation from them). bench/bench_journal_bytes.py measures the same at
200 turns beside LangGraph's SqliteSaver."""

from __future__ import annotations

from typing import Any

import stalwart as sw
from stalwart.testing import MemoryStore


def lookup(i: int) -> str:
    """Look an item up."""
    return f"result {i}: " + "observations of the system under load, " * 5


async def journal_and_transcript(turns: int) -> tuple[int, int]:
    def reply(request: sw.ModelRequest) -> Any:
        done = sum(1 for m in request.messages if m.role == "tool")
        if done < turns:
            return sw.ToolCallRequest.create(f"call-{done}", "lookup", {"i": done})
        return f"looked up {done} items"

    async with sw.Runtime(MemoryStore(), clock=sw.FakeClock(autojump=True)) as app:
        tool = app.tool(lookup)
        agent = sw.Agent("looker", sw.FunctionModel(reply), tools=[tool],
                         max_iterations=turns + 1)
        seen: list[tuple[sw.Message, ...]] = []

        @app.workflow
        async def look(ctx: sw.Context) -> str:
            result = await agent.run_result(ctx, "look everything up")
            seen.append(result.messages)
            return str(result.output)

        await app.run(look, run_id="long")
        journal = sum(len(e.payload or "") + len(e.name or "") + len(e.step_id or "")
                      for e in await app.events("long"))
    return journal, sum(len(m.model_dump_json()) for m in seen[-1])


async def test_the_journal_is_linear_in_the_conversation() -> None:
    short, short_transcript = await journal_and_transcript(20)
    long, long_transcript = await journal_and_transcript(80)
    assert long <= 2 * long_transcript, (long, long_transcript)
    # Four times the turns, about four times the bytes (a quadratic journal: ~16x).
    assert long / short <= 4.4, (short, long)
    assert long_transcript / short_transcript >= 3.6


async def llm_journal_and_transcript(turns: int) -> tuple[int, int]:
    """A conversation the workflow keeps itself, sending its whole history to
    ``ctx.llm`` every turn: the journal holds each answer once, never the history."""
    filler = "observations of the system under load, " * 5

    def reply(request: sw.ModelRequest) -> str:
        return f"answer {len(request.messages)}: {filler}"

    async with sw.Runtime(MemoryStore(), clock=sw.FakeClock(autojump=True)) as app:
        model = sw.FunctionModel(reply)
        seen: list[list[sw.Message]] = []

        @app.workflow
        async def chat(ctx: sw.Context) -> int:
            history: list[sw.Message] = []
            for i in range(turns):
                history.append(sw.Message.user(f"question {i}: {filler}"))
                history.append(sw.Message.assistant(await ctx.llm(model, list(history))))
            seen.append(history)
            return len(history)

        await app.run(chat, run_id="chat")
        journal = sum(len(e.payload or "") + len(e.name or "") + len(e.step_id or "")
                      for e in await app.events("chat"))
    return journal, sum(len(m.model_dump_json()) for m in seen[-1])


async def test_a_conversation_sent_whole_to_ctx_llm_is_journaled_once() -> None:
    short, short_transcript = await llm_journal_and_transcript(20)
    long, long_transcript = await llm_journal_and_transcript(80)
    assert long <= 2 * long_transcript, (long, long_transcript)
    assert long / short <= 4.4, (short, long)
    assert long_transcript / short_transcript >= 3.6
