"""Properties of every window policy, on whole agent runs (hypothesis): no request the
model sees is over the window's limit, no pinned message is ever missing from one, and
every message missing from one was journaled as moved (under Page: to memory entries
that exist)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stalwart as sw
from stalwart import FakeClock
from stalwart.memory import Evict, Page, Reject, Summarize
from stalwart.memory._window import fixed_tokens, message_tokens
from stalwart.models import Message, ModelRequest, ToolCallRequest, get_tokenizer
from stalwart.testing import MemoryStore

TOK = get_tokenizer("function:script")
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
         "juliet", "kilo", "lima"]
SUMMARIZER = Summarize(max_summary_tokens=24, max_span_tokens=2_000)
PAGER = Page(memory=sw.Memory("p"), max_page_tokens=400, recall_tokens=64)


def text(n: int, salt: int) -> str:
    return " ".join(WORDS[(salt + i) % len(WORDS)] for i in range(n))


@dataclass
class Script:
    """The model: tool calls with results of the drawn sizes (``None``: an answer that
    fails its check, so the agent asks again in a new user turn), then an answer."""

    results: list[int | None]
    requests: list[ModelRequest] = field(default_factory=list)
    summaries: int = 0

    def __call__(self, request: ModelRequest) -> object:
        if request.messages[0].content == SUMMARIZER.instructions:
            self.summaries += 1
            return "summary: " + text(40, self.summaries)  # over its limit: it is cut
        self.requests.append(request)
        done = len(self.requests) - 1
        if done < len(self.results):
            size = self.results[done]
            if size is None:
                return f"not yet {done}"
            return ToolCallRequest.create(f"c{done}", "fetch", {"n": size, "salt": done})
        return "finished"


async def fetch(n: int, salt: int) -> str:
    return text(n, salt)


POLICIES = st.sampled_from([Reject(), Evict(), Evict(order="lru"),
                            Evict(order="priority", priority=lambda m: len(m.content or "")),
                            Evict(ttl=2), SUMMARIZER, PAGER])


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(results=st.lists(st.none() | st.integers(0, 200), max_size=8),
       capacity=st.integers(250, 1_500), task=st.integers(1, 60), policy=POLICIES)
def test_no_policy_sends_over_the_limit_drops_a_pin_or_moves_silently(
        results: list[int | None], capacity: int, task: int,
        policy: Reject | Evict | Summarize | Page) -> None:
    """Over any conversation: each request fits, holds the system prompt, the task and
    the latest user turn, and everything it lacks was journaled as moved."""
    asyncio.run(_check(results, capacity, task, policy))


async def _check(results: list[int | None], capacity: int, task: int,
                 policy: Reject | Evict | Summarize | Page) -> None:
    script = Script(results)
    window = sw.ContextWindow(capacity, reserve_output=50, policy=policy)
    try:
        agent = sw.Agent("a", sw.FunctionModel(script, name="script"),
                         instructions="Fetch as told.", tools=[sw.Tool(fetch)],
                         context=window, max_iterations=12, loop_limit=20,
                         max_reasks=8, check=lambda out: out == "finished")
    except sw.ConfigurationError:
        return  # the system prompt alone is over the limit: refused at construction
    app = sw.Runtime(MemoryStore(), clock=FakeClock(1000.0, autojump=True))

    @app.workflow
    async def wf(ctx: sw.Context) -> list[Message] | None:
        try:
            return list((await agent.run_result(ctx, text(task, 7))).messages)
        except sw.ContextOverflowError:
            return None

    async with app:
        handle = await app.start(wf)
        transcript = await handle.result()
        events = await app.store.load_events(handle.run_id)
        paged = await PAGER.memory.entries(app.store, key="a") if PAGER.memory else []
    notes = [json.loads(e.payload or "{}") for e in events if e.kind == "context_window"]
    moved = {m["index"] for n in notes for m in n["moved"]}
    limit = window.resolve("function:script").limit
    for request in script.requests:
        size = (fixed_tokens(TOK, request.tools, None)
                + sum(message_tokens(TOK, m) for m in request.messages))
        assert size <= limit
        roles = [m.role for m in request.messages]
        assert roles[:2] == ["system", "user"]
        assert request.messages[1].content == text(task, 7)
    if transcript is None:  # rejected: journaled with the numbers, nothing sent over
        assert notes and notes[-1]["action"] == "reject"
        assert notes[-1]["before"] > limit
        return
    assistant_at = [i for i, m in enumerate(transcript) if m.role == "assistant"]
    for k, request in enumerate(script.requests):
        before = transcript[:assistant_at[k]]
        latest_user = [m for m in before if m.role == "user"][-1]
        assert latest_user in request.messages
        for i, m in enumerate(before):
            if m not in request.messages:
                assert i in moved, (i, m.role)
    if isinstance(policy, Reject):
        assert notes == []
    if isinstance(policy, Page):  # what moved is in memory, one entry per key journaled
        keys = [k for n in notes if n["action"] == "page" for k in n["keys"]]
        assert sorted(keys) == sorted(h.key for h in paged)
        assert {n["action"] for n in notes} <= {"page", "reject"}


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(results=st.lists(st.none() | st.integers(0, 200), min_size=2, max_size=8),
       capacity=st.integers(300, 1_200), task=st.integers(1, 60))
def test_page_never_sends_over_the_limit_moves_a_pin_or_moves_unjournaled(
        results: list[int | None], capacity: int, task: int) -> None:
    """The same properties under Page alone (every example pages or rejects): what moved
    is journaled and in memory under the journaled keys."""
    asyncio.run(_check(results, capacity, task, PAGER))
