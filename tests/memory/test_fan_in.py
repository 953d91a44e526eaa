"""Fan-in with backpressure: sub-agents' results gathered into an aggregator enter its
history as separate, unpinned messages, so its window policy acts on them before the
call — against a real HTTP server that answers 400 ``context_length_exceeded`` to any
prompt over its limit, no request over the limit is ever sent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stalwart as sw
from stalwart.memory import WindowState
from stalwart.memory._fanin import result_messages
from stalwart.memory._window import message_tokens
from stalwart.models import Message, OpenAIModel, get_tokenizer
from stalwart.testing import FaultServer, MemoryStore

TOK = get_tokenizer("sim:x")  # cl100k, exact: the server counts with it too
LIMIT = 1500  # the server's context limit, and the window's (capacity - reserve)
TASK = "Write the market report from the researchers' findings."
NOTE = ("finding {i}: the market for durable agents grows as teams need retries, "
        "journals and budgets they can audit. ") * 24


def researcher(i: int) -> sw.Agent[str]:
    return sw.Agent(f"r{i}", sw.FunctionModel(lambda _r: NOTE.format(i=i), name=f"r{i}"))


RESEARCHERS = [researcher(i) for i in range(4)]


def aggregator(policy: sw.Reject | sw.Evict | sw.Summarize | None, *,
               limit: int = LIMIT) -> sw.Agent[str]:
    window = None if policy is None else sw.ContextWindow(
        limit + 200, reserve_output=200, tokenizer=TOK, policy=policy)
    return sw.Agent("editor", "openai:agg", instructions="You write market reports.",
                    context=window)


Served = tuple[sw.Runtime, Any]
"""The runtime and its workflow ``report(mode)``."""

AGGREGATORS = {
    "none": aggregator(None), "reject": aggregator(sw.Reject()),
    "evict": aggregator(sw.Evict()), "tiny": aggregator(sw.Evict(), limit=300),
    "summarize": aggregator(sw.Summarize(max_summary_tokens=64, max_span_tokens=1000)),
}


@pytest.fixture
async def served() -> AsyncIterator[tuple[Served, FaultServer]]:
    with FaultServer() as server:
        server.set_context_limit(LIMIT, count=TOK.count)
        model = OpenAIModel("agg", base_url=server.openai_url, api_key="k", timeout=5.0)
        app = sw.Runtime(store=MemoryStore(), models={"openai:agg": model},
                         policy=sw.Policy(retry=sw.Retry(max_attempts=2, initial=0.001)))

        @app.workflow
        async def report(ctx: sw.Context, mode: str) -> str:
            notes = await ctx.gather(*(r.run(ctx, "Research the market.")
                                       for r in RESEARCHERS))
            if mode.startswith("glued"):  # the results pasted into the (pinned) task
                agent = AGGREGATORS[mode.split(":")[1]]
                return await agent.run(ctx, TASK + "\n\n" + "\n\n".join(notes))
            return await sw.fan_in(ctx, AGGREGATORS[mode], TASK,
                                   {r.name: n for r, n in zip(RESEARCHERS, notes,
                                                              strict=True)})

        try:
            async with app:
                yield (app, report), server
        finally:
            await model.aclose()


async def _run(served: Served, mode: str) -> tuple[Any, list[dict[str, Any]]]:
    app, report = served
    handle = await app.start(report, mode)
    try:
        outcome: Any = await handle.result(timeout=30)
    except sw.RunFailedError as exc:
        outcome = exc.__cause__
    events = await app.events(handle.run_id)
    notes = [json.loads(e.payload or "{}") for e in events if e.kind == "context_window"]
    report = await app.replay(handle.run_id)  # the same window decisions, nothing called
    assert report.deterministic, report.divergences
    return outcome, notes


async def test_the_server_answers_400_to_a_prompt_over_its_limit(
        served: tuple[Served, FaultServer]) -> None:
    """The control: the results glued into the task of an aggregator with no window
    reach the provider, which refuses them with a 400."""
    app, server = served
    outcome, _ = await _run(app, "glued:none")
    assert isinstance(outcome, sw.StalwartError), outcome
    assert "context_length_exceeded" in str(outcome) or "maximum context" in str(outcome)
    over = [r for r in server.requests if (r.prompt_tokens or 0) > LIMIT]
    assert over and all(r.outcome == "status:400" for r in over)


@pytest.mark.parametrize("mode", ["evict", "summarize"])
async def test_the_aggregators_policy_acts_before_the_call(
        served: tuple[Served, FaultServer], mode: str) -> None:
    """Evict drops the oldest results, Summarize replaces them by a summary: journaled,
    before the call; the server never sees a prompt over its limit (zero 400s)."""
    app, server = served
    outcome, notes = await _run(app, mode)
    assert outcome == "ok"
    assert server.requests and all(r.outcome == "reply" for r in server.requests)
    assert all(r.prompt_tokens is not None and r.prompt_tokens <= LIMIT
               for r in server.requests)
    assert {n["action"] for n in notes} == {mode if mode == "evict" else "summarize"}
    moved = [m for n in notes for m in n["moved"]]
    assert moved and all(m["role"] == "user" and m["preview"].startswith(("[r", "[Summ"))
                         for m in moved)  # results (and, summarizing again, a summary)
    assert moved[0]["preview"].startswith("[r0]")  # the oldest result first
    final = server.requests[-1].body["messages"]
    assert final[0]["content"] == "You write market reports."
    assert final[1]["content"] == TASK  # the task kept, pinned, on its own
    assert "finding 3" in final[-1]["content"]  # the newest result kept


async def test_every_result_may_go_the_task_stays(
        served: tuple[Served, FaultServer]) -> None:
    """A window too small for any result: all four go (none is the "latest user turn"),
    the task and the system prompt stay."""
    app, server = served
    outcome, notes = await _run(app, "tiny")
    assert outcome == "ok"
    assert [m["preview"][:4] for n in notes for m in n["moved"]] == [
        "[r0]", "[r1]", "[r2]", "[r3]"]
    assert [m["content"] for m in server.requests[-1].body["messages"]] == [
        "You write market reports.", TASK]


async def test_reject_raises_before_any_request(
        served: tuple[Served, FaultServer]) -> None:
    """Under Reject the run fails with a typed ContextOverflowError, with the numbers,
    and the server got no request at all."""
    app, server = served
    outcome, notes = await _run(app, "reject")
    assert isinstance(outcome, sw.ContextOverflowError), outcome
    assert outcome.limit == LIMIT and outcome.needed > LIMIT
    assert outcome.pinned < LIMIT  # the results were movable: only the policy refused
    assert server.requests == []
    assert [n["action"] for n in notes] == ["reject"]


async def test_results_glued_into_the_task_are_pinned_with_it(
        served: tuple[Served, FaultServer]) -> None:
    """What fan-in avoids: pasted into the task, the results are pinned, so even Evict
    can only refuse (pinned alone needs more than the limit)."""
    app, server = served
    outcome, _ = await _run(app, "glued:evict")
    assert isinstance(outcome, sw.ContextOverflowError), outcome
    assert outcome.pinned > LIMIT
    assert server.requests == []


async def test_fan_in_needs_an_aggregator_with_a_window() -> None:
    app = sw.Runtime(store=MemoryStore())

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        return await sw.fan_in(ctx, sw.Agent("a", "sim:a"), "task", ["x"])

    async with app:
        with pytest.raises(sw.RunFailedError) as info:
            await (await app.start(wf)).result()
    assert isinstance(info.value.__cause__, sw.ConfigurationError)
    assert "context window" in str(info.value.__cause__)


def test_results_are_supporting_messages_never_pinned() -> None:
    """Each result is its own message, labelled, from ``agent:<label>``; in the window
    the task and the latest user turn stay pinned, the results do not."""
    msgs = result_messages({"web": "a", "papers": {"n": 2}})
    assert [m.content for m in msgs] == ["[web]\na", '[papers]\n{"n": 2}']
    assert [m.provenance.label for m in msgs] == ["agent:web", "agent:papers"]
    assert [m.content for m in result_messages(["x", "y"])] == ["[result 1]\nx",
                                                                 "[result 2]\ny"]
    with pytest.raises(sw.ConfigurationError):
        result_messages("not a list")
    with pytest.raises(sw.ConfigurationError):
        result_messages([Message.system("no")])
    state = WindowState(TOK, 0)
    state.add(Message.system("sys"))
    task = state.add(Message.user(TASK))
    added = [state.add(m, supporting=True) for m in msgs]
    assert task.pinned and not any(e.pinned for e in added)
    later = state.add(Message.user("and be brief"))
    assert later.pinned and task.pinned


WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(1, 300), min_size=1, max_size=8),
       policy=st.sampled_from(["reject", "evict", "summarize"]))
def test_no_fan_in_request_is_over_the_limit_and_the_task_is_always_there(
        sizes: list[int], policy: str) -> None:
    """Any number and sizes of results: every request the aggregator's model gets fits
    its window, holds the system prompt and the task, and every result it lacks was
    journaled as moved; Reject refuses exactly when the results do not fit."""
    limit = 600
    seen: list[sw.ModelRequest] = []

    def model(request: sw.ModelRequest) -> str:
        if request.messages[0].content == sw.Summarize().instructions:
            return "summary"
        seen.append(request)
        return "done"

    window_policy = {"reject": sw.Reject(), "evict": sw.Evict(),
                     "summarize": sw.Summarize(max_summary_tokens=32,
                                               max_span_tokens=2000)}[policy]
    agent = sw.Agent("agg", sw.FunctionModel(model, name="agg"), instructions="Merge.",
                     context=sw.ContextWindow(limit + 100, reserve_output=100,
                                              tokenizer=TOK, policy=window_policy))
    results = {f"s{i}": " ".join(WORDS[(i + j) % 8] for j in range(n))
               for i, n in enumerate(sizes)}
    app = sw.Runtime(store=MemoryStore())

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        return await sw.fan_in(ctx, agent, TASK, results)

    async def go() -> tuple[Any, list[dict[str, Any]]]:
        async with app:
            h = await app.start(wf)
            try:
                out: Any = await h.result()
            except sw.RunFailedError as exc:
                out = exc.__cause__
            events = await app.events(h.run_id)
        return out, [json.loads(e.payload or "{}") for e in events
                     if e.kind == "context_window"]

    out, notes = asyncio.run(go())
    everything = sum(message_tokens(TOK, m) for m in (
        Message.system("Merge."), Message.user(TASK), *result_messages(results))) + 3
    if isinstance(out, sw.ContextOverflowError):
        assert policy == "reject" and everything > limit
        assert seen == []
        return
    assert out == "done" and len(seen) == 1
    assert everything <= limit or (policy != "reject" and notes)
    moved = {m["preview"].split("\n")[0] for n in notes for m in n["moved"]}
    for request in seen:
        assert sum(message_tokens(TOK, m) for m in request.messages) + 3 <= limit
        assert [m.content for m in request.messages[:2]] == ["Merge.", TASK]
        shown = {(m.content or "").split("\n")[0] for m in request.messages[2:]}
        for label in results:
            assert f"[{label}]" in shown or f"[{label}]" in moved or any(
                s.startswith("[Summary") for s in shown)
