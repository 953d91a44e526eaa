"""The workflows whose journals the dashboard tests look at, and a journal filled with
one run of each kind (completed, a model call, an agent with a tool, dead-lettered,
failed, waiting for a signal, waiting for an approval, a parent with a child).

Run as ``python dash_app.py STORE RUN_ID MARKER`` it starts (or resumes) a ``crashy``
run whose second step SIGKILLs its own process the first time it runs (``MARKER`` does
not exist yet): a real crash, for the waterfall's crash mark.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import stalwart as sw


def add(a: int, b: int) -> int:
    return a + b


async def adder(ctx: sw.Context, a: int, b: int) -> int:
    first = await ctx.step(add, a, b)
    return await ctx.step(add, first, 1)


adder = sw.Workflow(adder, name="adder")  # type: ignore[assignment]


async def writer(ctx: sw.Context, topic: str) -> str:
    return await ctx.llm("sim:writer", f"Write about {topic}")


writer = sw.Workflow(writer, name="writer")  # type: ignore[assignment]


def lookup(query: str, call: sw.ToolCall, marker: str) -> str:
    if not Path(marker).exists():
        raise TimeoutError(f"lookup service down (attempt {call.attempt})")
    return f"found {query}"


lookup_tool = sw.Tool(lookup, policy=sw.Policy(
    retry=sw.Retry(max_attempts=3, initial=0.001, max_backoff=0.002)))


def forecast(city: str) -> str:
    return f"{city}: sunny, 21C"


def weather_bot(request: sw.ModelRequest) -> Any:
    """Asks for the forecast once, then answers with what the tool said."""
    said = next((m.content for m in request.messages if m.role == "tool"), None)
    if said is None:
        return sw.ToolCallRequest.create("c1", "forecast", {"city": "Oslo"})
    return f"Pack sunglasses: {said}"


helper = sw.Agent("helper", sw.FunctionModel(weather_bot, name="weather-bot"),
                  tools=[sw.Tool(forecast)])


async def assistant(ctx: sw.Context, question: str) -> str:
    return await helper.run(ctx, question)


assistant = sw.Workflow(assistant, name="assistant")  # type: ignore[assignment]


async def fragile(ctx: sw.Context, query: str, marker: str) -> str:
    first = await ctx.step(add, 1, 2)
    return f"{first}:{await ctx.tool(lookup_tool, query=query, marker=marker)}"


fragile = sw.Workflow(fragile, name="fragile")  # type: ignore[assignment]


async def boom(ctx: sw.Context) -> None:
    await ctx.step(add, 1, 1)
    raise ValueError("kaboom")


boom = sw.Workflow(boom, name="boom")  # type: ignore[assignment]


async def waiter(ctx: sw.Context, item: str) -> str:
    decision = await ctx.wait_for_signal("approve")
    return f"{item}: {decision['by']}"


waiter = sw.Workflow(waiter, name="waiter")  # type: ignore[assignment]


async def gate(ctx: sw.Context, order: int) -> str:
    decision = await ctx.approval("ship", {"order": order, "to": "Oslo"})
    return f"{'shipped' if decision.approved else 'held'} by {decision.by}"


gate = sw.Workflow(gate, name="gate")  # type: ignore[assignment]


async def child(ctx: sw.Context, x: int) -> int:
    return await ctx.step(add, x, 1)


child = sw.Workflow(child, name="child")  # type: ignore[assignment]


async def parent(ctx: sw.Context, x: int) -> int:
    return await ctx.child(child, x)


parent = sw.Workflow(parent, name="parent")  # type: ignore[assignment]


def die_once(marker: str) -> str:
    if not Path(marker).exists():
        Path(marker).write_text("crashed once")
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


async def crashy(ctx: sw.Context, marker: str) -> str:
    first = await ctx.step(add, 1, 2)
    return f"{first}:{await ctx.step(die_once, marker)}"


crashy = sw.Workflow(crashy, name="crashy")  # type: ignore[assignment]

WORKFLOWS = (adder, writer, assistant, fragile, boom, waiter, gate, child, parent, crashy)


def runtime(store: str) -> sw.Runtime:
    rt = sw.Runtime(store, poll_interval=0.05, park_after=0.05)
    for wf in WORKFLOWS:
        rt.register(wf)
    return rt


async def _settle(rt: sw.Runtime, run_id: str, status: sw.RunStatus) -> None:
    """Until ``run_id`` is at ``status``, its end in this journal (bounded in real time:
    the runs go on in this runtime's tasks and threads)."""
    rec = await rt.get_run(run_id)
    deadline = time.monotonic() + 60
    while rec.status != status:
        assert time.monotonic() < deadline, f"{run_id} is {rec.status}, not {status}"
        await asyncio.sleep(0.01)
        rec = await rt.get_run(run_id)


# Each kind's run ends here: the parent only once its child has (a parent merely waiting
# for it would leave the child's run pending, for the next runtime on a copy of the journal
# to claim: a live page's test would see those runs change, not the one it started).
ENDS = {"ok": sw.RunStatus.COMPLETED, "llm": sw.RunStatus.COMPLETED,
        "agent": sw.RunStatus.COMPLETED, "dead": sw.RunStatus.DEAD_LETTERED,
        "failed": sw.RunStatus.FAILED, "waiting": sw.RunStatus.WAITING,
        "approval": sw.RunStatus.WAITING, "parent": sw.RunStatus.COMPLETED}


async def populate(store: str, marker_dir: Path) -> dict[str, Any]:
    """One run of each kind, each at its end (:data:`ENDS`); returns their ids by kind."""
    rt = runtime(store)
    try:
        ids = {"ok": "ok-1", "llm": "llm-1", "agent": "agent-1", "dead": "dead-1",
               "failed": "boom-1", "waiting": "wait-1", "approval": "gate-1",
               "parent": "parent-1"}
        await rt.start(adder, 1, 2, run_id=ids["ok"])
        await rt.start(writer, "durability", run_id=ids["llm"])
        await rt.start(assistant, "What to pack for Oslo?", run_id=ids["agent"])
        await rt.start(fragile, "gpus", str(marker_dir / "service.up"), run_id=ids["dead"])
        await rt.start(boom, run_id=ids["failed"])
        await rt.start(waiter, "invoice", run_id=ids["waiting"])
        await rt.start(gate, 7, run_id=ids["approval"])
        await rt.start(parent, 41, run_id=ids["parent"])
        for kind, run_id in ids.items():
            await _settle(rt, run_id, ENDS[kind])
        return ids
    finally:
        await rt.close()


async def _main(store: str, run_id: str, marker: str) -> None:
    rt = runtime(store)
    try:
        await rt.open()
        if await rt.store.get_run(run_id) is None:
            await rt.start(crashy, marker, run_id=run_id)
        else:
            await rt.resume(run_id)
        await rt.wait_for_end(run_id, timeout=60)
    finally:
        await rt.close()


if __name__ == "__main__":
    asyncio.run(_main(*sys.argv[1:4]))
