"""A model turn's token estimate (the rate limiter's draw) is kept incrementally: a turn
counts its new messages, never the whole history again (it used to: 40,401 tokenizer
calls for a 200-turn agent, quadratic CPU)."""

from __future__ import annotations

from typing import Any

import pytest

import stalwart as sw
import stalwart.models._tokens as tokens
from stalwart.models import ModelRequest, Tokenizer, ToolCallRequest, get_tokenizer
from stalwart.models._replies import _cached_part, request_tokens
from stalwart.testing import MemoryStore

TURNS = 60


class Counting:
    """A tokenizer that counts its calls (wrapping the real one)."""

    def __init__(self, inner: Tokenizer) -> None:
        self.inner = inner
        self.calls = 0
        self.name = inner.name
        self.exact = inner.exact

    def count(self, text: str) -> int:
        self.calls += 1
        return self.inner.count(text)


def _reader(calls_per_turn: list[int], counting: Counting) -> Any:
    """A model that reads TURNS pages, one tool call a turn; it records how many
    tokenizer calls the turn before it cost. Its responses carry their usage, so the
    model itself counts nothing."""
    last = [0]

    def model(request: ModelRequest) -> sw.ModelResponse:
        calls_per_turn.append(counting.calls - last[0])
        last[0] = counting.calls
        k = sum(1 for m in request.messages if m.role == "tool")
        usage = sw.Usage(input_tokens=1, output_tokens=1)
        if k < TURNS:
            return sw.ModelResponse(
                tool_calls=(ToolCallRequest.create(f"c{k}", "page", {"n": k}),),
                finish_reason="tool_calls", usage=usage)
        return sw.ModelResponse(content="read", usage=usage)

    return model


async def page(n: int) -> str:
    """Page ``n``."""
    return f"page {n}: " + "the quick brown fox jumps over the lazy dog. " * 20


@pytest.mark.parametrize("window", [False, True])
async def test_tokenizer_calls_per_turn_are_bounded_by_the_new_messages(
        monkeypatch: pytest.MonkeyPatch, window: bool) -> None:
    """Every tokenizer the turn could use (the global count and the window's) counts
    calls: each turn after the first costs a constant few (the two new messages and
    their tool call), not the history. Broken (recount per turn), turn 60 costs 120+."""
    counting = Counting(get_tokenizer("sim:x"))
    monkeypatch.setattr(tokens, "_cached", lambda model: counting)
    per_turn: list[int] = []
    context = (sw.ContextWindow(10**7, reserve_output=100, tokenizer=counting,
                                policy=sw.Evict()) if window else None)
    agent = sw.Agent("reader", sw.FunctionModel(_reader(per_turn, counting), name="m"),
                     instructions="Read every page.", tools=[sw.Tool(page)],
                     max_iterations=TURNS + 2, loop_limit=TURNS + 2, context=context)
    app = sw.Runtime(store=MemoryStore())

    @app.workflow
    async def read(ctx: sw.Context) -> str:
        return await agent.run(ctx, "Read them all.")

    async with app:
        assert await (await app.start(read)).result() == "read"
    assert len(per_turn) == TURNS + 1
    assert max(per_turn[1:]) <= 6, per_turn


def test_a_simulated_model_counts_its_usage_incrementally(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A scripted model without its own usage estimates its input from the request; a
    request that repeats the history costs the new parts only (broken: 2 x turns)."""
    counting = Counting(get_tokenizer("sim:x"))
    monkeypatch.setattr(tokens, "_cached", lambda model: counting)
    _cached_part.cache_clear()
    history: list[sw.Message] = [sw.Message.user("Read them all.")]
    per_turn: list[int] = []
    totals: list[int] = []
    for k in range(TURNS):
        history += [sw.Message.user(f"page {k}: " + "the lazy dog. " * 20),
                    sw.Message.assistant(f"read page {k}")]
        before = counting.calls
        totals.append(request_tokens(ModelRequest(messages=tuple(history))))
        per_turn.append(counting.calls - before)
    assert per_turn[0] == 3 and max(per_turn[1:]) == 2, per_turn
    assert totals == sorted(totals) and totals[-1] > totals[0]  # still the whole request
