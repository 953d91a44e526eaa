"""A mixture's aggregator with a context window reads the proposers' answers as a
fan-in: each answer its own unpinned message after the (pinned) task, so its window
policy acts on them before the call (journaled) instead of refusing a prompt that pins
them all. Without a window the aggregator is asked as before: one prompt, the answers
in it, the journal unchanged."""

from __future__ import annotations

import json
from typing import Any

import pytest

import stalwart as sw
from stalwart.models import get_tokenizer
from stalwart.patterns import MixtureInput
from stalwart.store import EventKind
from stalwart.testing import MemoryStore

T0 = 1_700_000_000.0
TOK = get_tokenizer("sim:x")
TASK = "Why do agents need a durable runtime?"
ANSWER = ("proposer {i}: because agents crash, retry and spend money, and a journal of "
          "every step lets a new process resume where the old one died. ") * 12


def proposer(i: int) -> sw.Agent[str]:
    return sw.Agent(f"p{i}", sw.FunctionModel(lambda _r: ANSWER.format(i=i), name=f"p{i}"))


PROPOSERS = [proposer(i) for i in range(3)]


def aggregator(seen: list[sw.ModelRequest], window: sw.ContextWindow | None,
               ) -> sw.Agent[str]:
    def write(request: sw.ModelRequest) -> str:
        seen.append(request)
        return "one answer"

    return sw.Agent("editor", sw.FunctionModel(write, name="editor"), context=window)


async def _mix(agg: sw.Agent[str], layers: int = 1) -> tuple[Any, list[Any]]:
    app = sw.Runtime(MemoryStore(), clock=sw.FakeClock(T0, autojump=True))

    @app.workflow
    async def moa(ctx: sw.Context) -> str:
        return (await sw.mixture(ctx, PROPOSERS, agg, TASK, layers=layers)).output

    async with app:
        handle = await app.start(moa, run_id="m")
        try:
            out: Any = await handle.result(timeout=30)
        except sw.RunFailedError as exc:
            out = exc.__cause__
        events = await app.events("m")
        report = await app.replay("m")
        assert report.deterministic, report.divergences
    return out, events


def _window_notes(events: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(e.payload or "{}") for e in events
            if e.kind == EventKind.CONTEXT_WINDOW]


async def test_a_windowed_aggregator_evicts_answers_that_would_overflow_it() -> None:
    """Three answers of ~300 tokens each into an aggregator of 600 (100 kept for its
    answer): Evict drops the oldest before the call (journaled), the call happens with
    the task pinned on its own and the newest answer kept."""
    per_answer = TOK.count(ANSWER.format(i=0))
    assert 3 * per_answer > 500  # together they overflow the window
    seen: list[sw.ModelRequest] = []
    window = sw.ContextWindow(600, reserve_output=100, tokenizer=TOK, policy=sw.Evict())
    out, events = await _mix(aggregator(seen, window))
    assert out == "one answer"
    [request] = seen
    contents = [m.content for m in request.messages]
    assert contents[0] == MixtureInput(task=TASK, layer=2).fan_in_prompt()
    assert contents[-1].startswith("[p2]\nproposer 2:")  # the newest answer kept
    assert sum(TOK.count(c) for c in contents) <= 500
    [note] = _window_notes(events)
    assert note["action"] == "evict"
    assert note["moved"][0]["preview"].startswith("[p0]")  # the oldest first


async def test_under_reject_the_numbers_say_the_answers_were_movable() -> None:
    """Reject refuses before the call, and the pinned part (the task) fits: only the
    answers, which a policy could have moved, overflow."""
    seen: list[sw.ModelRequest] = []
    window = sw.ContextWindow(600, reserve_output=100, tokenizer=TOK, policy=sw.Reject())
    out, events = await _mix(aggregator(seen, window))
    assert isinstance(out, sw.ContextOverflowError), out
    assert out.pinned < out.limit < out.needed
    assert seen == []
    assert [n["action"] for n in _window_notes(events)] == ["reject"]


async def test_windowed_proposers_of_a_later_layer_get_the_answers_apart() -> None:
    """Layer 2's proposers, windowed, read layer 1's answers as a fan-in too: each
    evicts what does not fit, journaled, and answers."""
    seen: list[sw.ModelRequest] = []
    window = sw.ContextWindow(600, reserve_output=100, tokenizer=TOK, policy=sw.Evict())

    def windowed(i: int) -> sw.Agent[str]:
        def say(request: sw.ModelRequest) -> str:
            seen.append(request)
            return ANSWER.format(i=i)
        return sw.Agent(f"w{i}", sw.FunctionModel(say, name=f"w{i}"), context=window)

    app = sw.Runtime(MemoryStore(), clock=sw.FakeClock(T0, autojump=True))

    @app.workflow
    async def moa(ctx: sw.Context) -> list[float]:
        r = await sw.mixture(ctx, [windowed(i) for i in range(3)], None, TASK, layers=2,
                             strategy="vote")
        return list(r.divergences)

    async with app:
        await app.run(moa, run_id="v")
        events = await app.events("v")
    layer2 = seen[3:]
    assert len(layer2) == 3
    assert all(r.messages[0].content == MixtureInput(task=TASK, layer=2).fan_in_prompt()
               for r in layer2)
    notes = _window_notes(events)
    assert len(notes) == 3 and {n["action"] for n in notes} == {"evict"}


@pytest.mark.parametrize("layers", [1, 2])
async def test_without_a_window_the_aggregator_gets_one_prompt_as_before(
        layers: int) -> None:
    """No window: the answers pasted into one prompt (``MixtureInput.prompt``), the
    journal's steps as they were."""
    seen: list[sw.ModelRequest] = []
    out, events = await _mix(aggregator(seen, None), layers=layers)
    assert out == "one answer"
    [request] = seen
    answers = [ANSWER.format(i=i) for i in range(3)]
    assert [m.content for m in request.messages] == [
        MixtureInput(task=TASK, layer=layers + 1, previous=answers).prompt()]
    assert _window_notes(events) == []
