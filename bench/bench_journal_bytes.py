"""Journal bytes of a long tool-using agent, beside the transcript and LangGraph.

A 200-turn agent (each turn a model call that asks for one tool call, then the tool's
result; a final answer at the end) runs on an offline scripted model. Three sizes are
printed, measured in the same run:

* the final transcript: every message of the conversation as JSON (the floor: what
  any durable record of the conversation must hold at least once);
* stalwart's journal: the bytes of every event row of the run (payload, name, ids) in
  the SQLite store, and the file's growth;
* LangGraph's ``SqliteSaver`` running the same conversation as a ``StateGraph`` whose
  state is an accumulating ``messages`` list (``add_messages``): the bytes of its
  checkpoint and write tables;
* the requests the model was sent, summed (each as JSON): what a layout that journals
  every turn's request would hold at least. stalwart's never did (a replay rebuilds the
  request from the recorded answers and results); the row shows the O(turns^2) it avoids.

Then the run is forked ``--forks`` times (5) at its last model turn, as ``stalwart runs
fork`` does: each fork's journal copies the events it reuses. Printed for the run and its
forks together: the bytes a journal that keeps every payload inline would hold
("before dedup": the same event rows with each reference replaced by its blob), and
what the journal holds (event rows, references included, plus the ``blobs`` table):
payloads over ``_blobs.BLOB_THRESHOLD`` (4096 characters) are stored once by content.
Measured twice: with the agent's ~210-char tool results (under the threshold: they stay
inline, so a fork copies them) and with ``--doc-chars`` (6000) tool results, a document
per turn (stored once however many forks copy it).

Target (exit 1 when missed): stalwart's journal <= 2x the transcript.

    python bench/bench_journal_bytes.py [--turns 200] [--forks 5] [--doc-chars 6000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import stalwart as sw

RESULT = "result {i}: " + "observations of the system under load, " * 5  # ~210 chars
FILLER = "observations of the system under load, "


def lookup(i: int) -> str:
    """Look an item up."""
    return RESULT.format(i=i)


def document(chars: int) -> Any:
    """A ``lookup`` tool that returns a document of about ``chars`` characters."""
    def lookup(i: int) -> str:
        """Read an item's document."""
        return f"document {i}: " + FILLER * (chars // len(FILLER))

    return lookup


def scripted(turns: int, sent: list[int]) -> Any:
    def reply(request: sw.ModelRequest) -> Any:
        sent.append(len(request.model_dump_json()))
        done = sum(1 for m in request.messages if m.role == "tool")
        if done < turns:
            return sw.ToolCallRequest.create(f"call-{done}", "lookup", {"i": done})
        return f"looked up {done} items"

    return reply


def _size(path: Path) -> int:
    """The file's size (read between runs, never while the loop has work)."""
    return path.stat().st_size


def transcript_bytes(messages: tuple[sw.Message, ...]) -> int:
    return sum(len(m.model_dump_json()) for m in messages)


async def stalwart_run(folder: Path, turns: int) -> tuple[int, int, int, float, int]:
    path = folder / "journal.db"
    app = sw.Runtime(str(path))
    tool = app.tool(lookup)
    return await _run(app, path, tool, turns)


async def _run(app: sw.Runtime, path: Path, tool: Any, turns: int
               ) -> tuple[int, int, int, float, int]:
    sent: list[int] = []
    agent = sw.Agent("looker", sw.FunctionModel(scripted(turns, sent)), tools=[tool],
                     max_iterations=turns + 1)
    messages: list[tuple[sw.Message, ...]] = []

    @app.workflow
    async def look(ctx: sw.Context) -> str:
        result = await agent.run_result(ctx, "look everything up")
        messages.append(result.messages)
        return str(result.output)

    async with app:
        await app.run(look, run_id="long")  # warm-up of the file's first pages
        before = _size(path)
        sent.clear()
        start = time.perf_counter()
        await app.run(look, run_id="long-2")
        took = time.perf_counter() - start
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT COALESCE(SUM(LENGTH(payload)), 0) + COALESCE(SUM(LENGTH(name)), 0) + "
            "COALESCE(SUM(LENGTH(step_id)), 0) + COALESCE(SUM(LENGTH(kind)), 0), COUNT(*) "
            "FROM events WHERE run_id = 'long-2'").fetchone()
    finally:
        conn.close()
    growth = _size(path) - before
    return transcript_bytes(messages[-1]), int(rows[0]), growth, took, sum(sent)


_FIELDS = ("COALESCE(LENGTH(e.name), 0) + COALESCE(LENGTH(e.step_id), 0) + "
           "LENGTH(e.kind)")


async def forked_run(path: Path, tool: Any, turns: int, forks: int
                     ) -> tuple[int, int, int]:
    """A ``turns``-turn run and ``forks`` forks of it at its last model turn: the
    transcript, and the journal's bytes for all of them before and after dedup."""
    app = sw.Runtime(str(path))
    tool = app.tool(tool)
    agent = sw.Agent("looker", sw.FunctionModel(scripted(turns, [])), tools=[tool],
                     max_iterations=turns + 1)
    messages: list[tuple[sw.Message, ...]] = []

    @app.workflow
    async def look(ctx: sw.Context) -> str:
        result = await agent.run_result(ctx, "look everything up")
        messages.append(result.messages)
        return str(result.output)

    async with app:
        await app.run(look, run_id="origin")
        events = await app.events("origin")
        last_turn = [e.step_id for e in events if e.step_id is not None][-1]
        for i in range(forks):
            fork = await app.fork("origin", at=last_turn, run_id_for_fork=f"fork-{i}")
            await fork.result()
    conn = sqlite3.connect(path)
    try:
        inline = conn.execute(
            f"SELECT SUM({_FIELDS} + LENGTH(COALESCE(e.payload, b.content, ''))) FROM events e "
            "LEFT JOIN blobs b ON b.hash = e.payload_ref").fetchone()[0]
        rows = conn.execute(
            f"SELECT SUM({_FIELDS} + COALESCE(LENGTH(e.payload), 0) + "
            "COALESCE(LENGTH(e.payload_ref), 0)) FROM events e").fetchone()[0]
        blobs = conn.execute("SELECT COALESCE(SUM(LENGTH(hash) + LENGTH(content)), 0) "
                             "FROM blobs").fetchone()[0]
    finally:
        conn.close()
    return transcript_bytes(messages[0]), int(inline), int(rows) + int(blobs)


def langgraph_run(folder: Path, turns: int) -> tuple[int, float] | None:
    try:
        from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
        from langgraph.checkpoint.sqlite import SqliteSaver
        from langgraph.graph import END, START, MessagesState, StateGraph
    except ImportError:
        return None

    def model(state):  # type: ignore[no-untyped-def]  (LangGraph reads the hints at run time)
        done = sum(1 for m in state["messages"] if isinstance(m, ToolMessage))
        if done < turns:
            return {"messages": [AIMessage(content="", tool_calls=[
                {"id": f"call-{done}", "name": "lookup", "args": {"i": done}}])]}
        return {"messages": [AIMessage(content=f"looked up {done} items")]}

    def tools(state):  # type: ignore[no-untyped-def]
        call = state["messages"][-1].tool_calls[0]  # type: ignore[union-attr]
        return {"messages": [ToolMessage(content=lookup(call["args"]["i"]),
                                         tool_call_id=call["id"])]}

    def route(state):  # type: ignore[no-untyped-def]
        return "tools" if state["messages"][-1].tool_calls else END  # type: ignore[union-attr]

    graph = StateGraph(MessagesState)
    graph.add_node("model", model)
    graph.add_node("tools", tools)
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", route, ["tools", END])
    graph.add_edge("tools", "model")
    path = folder / "langgraph.db"
    conn = sqlite3.connect(path, check_same_thread=False)
    start = time.perf_counter()
    with conn:
        saver = SqliteSaver(conn)
        app = graph.compile(checkpointer=saver)
        app.invoke({"messages": [HumanMessage(content="look everything up")]},
                   {"configurable": {"thread_id": "long"}, "recursion_limit": 4 * turns + 10})
    took = time.perf_counter() - start
    size = 0
    for table in ("checkpoints", "writes"):
        cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
        expr = " + ".join(f"COALESCE(LENGTH({c}), 0)" for c in cols)
        size += int(conn.execute(f"SELECT COALESCE(SUM({expr}), 0) FROM {table}").fetchone()[0])
    conn.close()
    return size, took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--forks", type=int, default=5)
    parser.add_argument("--doc-chars", type=int, default=6000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        floor, journal, growth, took, requests = asyncio.run(stalwart_run(folder, args.turns))
        lang = langgraph_run(folder, args.turns)
        forked = {
            f"~{len(lookup(0))}-char results": asyncio.run(forked_run(
                folder / "forks-small.db", lookup, args.turns, args.forks)),
            f"{args.doc_chars:,}-char documents": asyncio.run(forked_run(
                folder / "forks-docs.db", document(args.doc_chars), args.turns,
                args.forks)),
        }
    print(f"stalwart bench_journal_bytes  {args.turns}-turn tool-using agent "
          f"(each turn: a tool call and its ~{len(lookup(0))}-char result)")
    print(f"  {'':38}{'bytes':>12}  {'x transcript':>12}  {'wall s':>7}")
    print(f"  {'FLOOR final transcript (JSON)':38}{floor:>12,}  {1.0:>12.2f}")
    print(f"  {'stalwart journal (event rows)':38}{journal:>12,}  {journal / floor:>12.2f}  "
          f"{took:>7.2f}")
    print(f"  {'stalwart journal (file growth)':38}{growth:>12,}  {growth / floor:>12.2f}")
    print(f"  {'requests, summed (per-turn layout)':38}{requests:>12,}  "
          f"{requests / floor:>12.2f}")
    if lang is None:
        print("  LangGraph SqliteSaver: not installed (pip install -e '.[bench]')")
    else:
        print(f"  {'LangGraph SqliteSaver (checkpoints)':38}{lang[0]:>12,}  "
              f"{lang[0] / floor:>12.2f}  {lang[1]:>7.2f}")
    print(f"with {args.forks} forks at the last model turn (the run and its forks together)")
    print(f"  {'':38}{'transcript':>12}  {'before dedup':>12}  {'after dedup':>12}  "
          f"{'after/before':>12}  {'after x transcript':>18}")
    for label, (one, before, after) in forked.items():
        print(f"  {label:38}{one:>12,}  {before:>12,}  {after:>12,}  "
              f"{after / before:>12.2f}  {after / one:>18.2f}")
    ok = journal <= 2 * floor
    print(f"journal {journal / floor:.2f}x the transcript (target <= 2x)  "
          f"{'ok' if ok else 'MISS'}")
    print(json.dumps({"transcript": floor, "journal": journal, "file_growth": growth,
                      "requests": requests,
                      "langgraph": None if lang is None else lang[0],
                      "forks": {k: {"transcript": v[0], "before_dedup": v[1],
                                    "after_dedup": v[2]} for k, v in forked.items()}}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
