"""Context windows: the bookkeeping per call beside a simulated model call, and a needle.

    python bench/bench_context.py            # full: 100k tokens, 500 turns
    python bench/bench_context.py --quick    # a smoke run with tiny numbers

1. Bookkeeping. A window holding ~100k tokens of history takes two new messages per
   call (a tool call and its ~250-token result), counts only those, checks the total
   and builds the request's message tuple. Printed beside a simulated 10 ms model call
   (``asyncio.sleep(0.01)``, measured in the same run) and beside recounting the whole
   history every call (what incremental counting avoids). Target: <= 5 % of the call.
2. Needle. A simulated agent reads a fact in its first tool result, then makes 500 more
   tool calls through a window of 8,000 tokens. Under ``Summarize`` (a fact-keeping
   simulated summarizer) the fact is still in the last request; under ``Evict`` it is
   gone from the request and the journal says so (a ``context_window`` event that moved
   that message). Under ``Page`` old turns move to warm memory (the store) and the
   simulated agent (``sim:`` with a scripted reply function) calls ``recall("vault
   code")`` after the last read: the fact is in the last request, fetched through the
   tool, and the journal lists the page writes.

Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time

import stalwart as sw
from stalwart.memory import WindowState
from stalwart.memory._window import message_tokens
from stalwart.models import Message, ModelRequest, ToolCallRequest, get_tokenizer
from stalwart.testing import MemoryStore

RESULT = ("row {i}: order {i:05d} shipped to warehouse {w} with {n} items; carrier "
          "reference ZX-{i:06d}; status delivered; notes: none. ") * 6
NEEDLE = "For the record: the vault code is 7341."


def bookkeeping(history_tokens: int, calls: int) -> tuple[float, float, float]:
    """Seconds per call: incremental bookkeeping, a full recount, a simulated call."""
    tok = get_tokenizer("sim:bench")
    state = WindowState(tok, 100)
    state.add(Message.system("You read orders."))
    state.add(Message.user("Read every order."))
    transcript: list[Message] = []
    i = 0

    def turn(i: int) -> list[Message]:
        call = ToolCallRequest.create(f"c{i}", "read_order", {"i": i})
        return [Message.assistant(tool_calls=[call]),
                Message.tool(RESULT.format(i=i, w=i % 7, n=i % 13), tool_call_id=f"c{i}",
                             name="read_order")]

    while state.total < history_tokens:
        for m in turn(i):
            state.add(m)
            transcript.append(m)
        i += 1
    limit = 10 ** 9
    t0 = time.perf_counter()
    for _ in range(calls):
        for m in turn(i):
            state.add(m)
        i += 1
        assert state.total <= limit
        state.messages()
    incremental = (time.perf_counter() - t0) / calls
    t0 = time.perf_counter()
    for _ in range(max(1, calls // 20)):
        sum(message_tokens(tok, m) for m in transcript)
    recount = (time.perf_counter() - t0) / max(1, calls // 20)

    async def sleep_calls() -> float:
        t = time.perf_counter()
        for _ in range(20):
            await asyncio.sleep(0.01)
        return (time.perf_counter() - t) / 20

    return incremental, recount, asyncio.run(sleep_calls())


class Reader:
    """Reads order after order (``turns`` tool calls), then answers."""

    def __init__(self, turns: int) -> None:
        self.turns = turns
        self.made = 0
        self.last: ModelRequest | None = None

    def __call__(self, request: ModelRequest) -> object:
        if request.messages[0].content == sw.Summarize().instructions:
            # A fact-keeping summarizer (simulated): the sentences that state a code.
            facts = re.findall(r"the \w+ code is \d+", request.messages[-1].content or "")
            return "Earlier: " + "; ".join(dict.fromkeys(facts)) + "."
        self.last = request
        if self.made >= self.turns:
            return "done"
        self.made += 1
        return ToolCallRequest.create(f"c{self.made}", "read_order", {"i": self.made})


class Recaller:
    """The ``page`` agent (a ``sim:`` model's script): reads order after order, then
    recalls the vault code through the tool, then answers."""

    def __init__(self, turns: int) -> None:
        self.turns = turns
        self.made = 0
        self.last: ModelRequest | None = None

    def __call__(self, request: ModelRequest) -> object:
        self.last = request
        if self.made < self.turns:
            self.made += 1
            return ToolCallRequest.create(f"c{self.made}", "read_order", {"i": self.made})
        if self.made == self.turns:
            self.made += 1
            return ToolCallRequest.create("recall-1", "recall", {"query": "vault code"})
        return "done"


async def needle_page(turns: int) -> tuple[bool, int, int]:
    """(the fact is in the last request, page writes journaled, memory entries)."""

    async def read_order(i: int) -> str:
        body = RESULT.format(i=i, w=i % 7, n=i % 13)
        return f"{NEEDLE} {body}" if i == 1 else body

    model = Recaller(turns)
    memory = sw.Memory("bench")
    agent = sw.Agent("reader", sw.SimulatedModel("reader", script=model),
                     tools=[sw.Tool(read_order)], instructions="Read every order.",
                     context=sw.ContextWindow(8_000, reserve_output=500,
                                              policy=sw.Page(memory=memory)),
                     max_iterations=turns + 5)
    app = sw.Runtime(MemoryStore())

    @app.workflow
    async def read(ctx: sw.Context) -> str:
        return await agent.run(ctx, "Read every order, then say done.")

    async with app:
        handle = await app.start(read)
        await handle.result()
        events = await app.store.load_events(handle.run_id)
        entries = await memory.entries(app.store, key="reader")
    assert model.last is not None
    present = any("7341" in (m.content or "") for m in model.last.messages)
    pages = [json.loads(e.payload or "{}") for e in events if e.kind == "context_window"]
    return present, sum(1 for p in pages if p.get("action") == "page"), len(entries)


async def needle(policy: sw.Summarize | sw.Evict, turns: int) -> tuple[bool, bool]:
    """(the fact is in the last request, the journal reports its message moved)."""

    async def read_order(i: int) -> str:
        body = RESULT.format(i=i, w=i % 7, n=i % 13)
        return f"{NEEDLE} {body}" if i == 1 else body

    model = Reader(turns)
    agent = sw.Agent("reader", sw.FunctionModel(model, name="reader"),
                     tools=[sw.Tool(read_order)], instructions="Read every order.",
                     context=sw.ContextWindow(8_000, reserve_output=500, policy=policy),
                     max_iterations=turns + 5)
    app = sw.Runtime(MemoryStore())

    @app.workflow
    async def read(ctx: sw.Context) -> str:
        return await agent.run(ctx, "Read every order, then say done.")

    async with app:
        handle = await app.start(read)
        await handle.result()
        events = await app.store.load_events(handle.run_id)
    assert model.last is not None
    present = any("7341" in (m.content or "") for m in model.last.messages)
    reported = any("vault code" in json.dumps(json.loads(e.payload or "{}").get("moved"))
                   for e in events if e.kind == "context_window")
    return present, reported


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    history, calls, turns = (5_000, 50, 40) if args.quick else (100_000, 500, 500)
    ok = True
    inc, recount, call = bookkeeping(history, calls)
    ratio = inc / call
    print(f"bookkeeping per call at {history:,} tokens of history: {inc * 1e6:.1f} us "
          f"(recounting the history: {recount * 1e6:.0f} us); simulated model call "
          f"{call * 1e3:.2f} ms; ratio {ratio:.2%} (target <= 5%)")
    ok &= ratio <= 0.05
    present, reported = asyncio.run(needle(sw.Summarize(max_summary_tokens=128), turns))
    print(f"needle after {turns} turns under summarize: "
          f"{'answerable (in the request)' if present else 'LOST'}")
    ok &= present
    present, reported = asyncio.run(needle(sw.Evict(), turns))
    print(f"needle after {turns} turns under evict: "
          f"{'still in the request' if present else 'gone from the request'}, "
          f"{'reported evicted in the journal' if reported else 'NOT REPORTED'}")
    ok &= reported and not present
    present, pages, entries = asyncio.run(needle_page(turns))
    print(f"needle after {turns} turns under page: "
          f"{'answerable (recalled through the tool)' if present else 'LOST'}; "
          f"{pages} page decisions journaled, {entries} turns in warm memory")
    ok &= present and pages > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
