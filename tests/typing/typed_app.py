"""A user's program as a type checker sees it: checked by ``test_public_types.py`` with
mypy (strict, unused ignores reported). Every ``assert_type`` must hold, and every
``# type: ignore[code]`` marks a deliberate error that mypy must report there: if it
stops reporting one (the check got weaker), the ignore is unused and the test fails.
Never run: only type-checked."""

from __future__ import annotations

from typing import Any, assert_type

from pydantic import BaseModel

import stalwart as sw

app = sw.Runtime()


class Brief(BaseModel):
    topic: str


def search(query: str, limit: int = 3) -> list[str]:
    return [query] * limit


async def summarize(texts: list[str]) -> Brief:
    return Brief(topic=texts[0])


@app.workflow
async def research(ctx: sw.Context, topic: str, depth: int = 1) -> Brief:
    found = await ctx.step(search, topic)
    assert_type(found, list[str])
    brief = await ctx.step(summarize, found)
    assert_type(brief, Brief)
    named = await ctx.step(search, topic, name="search:named")
    assert_type(named, list[str])
    checked = await ctx.step(summarize, found, check=lambda b: bool(b.topic))
    assert_type(checked, Brief)
    await ctx.step(search, 42)  # type: ignore[call-overload]
    await ctx.step(search)  # type: ignore[call-overload]
    both = await ctx.gather(ctx.step(search, "a"), ctx.step(search, "b"))
    assert_type(both, list[list[str]])
    collected = await ctx.gather(ctx.step(search, "a"), on_error="collect")
    assert_type(collected, list[list[str] | BaseException])
    child = await ctx.child(outline, "x")
    assert_type(child, list[str])
    await ctx.child(outline, 1)  # type: ignore[arg-type]
    handle = await ctx.start_child(outline, "y")
    assert_type(handle, sw.ChildRun)
    await ctx.start_child(outline)  # type: ignore[call-arg]
    answer = await ctx.llm("sim:m", "hi", output_type=Brief)
    assert_type(answer, Brief)
    text = await ctx.llm("sim:m", "hi")
    assert_type(text, str)
    return brief


@app.workflow(name="outline", pool="small")
async def outline(ctx: sw.Context, topic: str) -> list[str]:
    return [topic]


as_declared: sw.Workflow[[str, int], Brief] = research
other_result: sw.Workflow[[str, int], str] = research  # type: ignore[assignment]
other_input: sw.Workflow[[int], list[str]] = outline  # type: ignore[assignment]


async def main() -> None:
    handle = await app.start(research, "gpus", 2)
    assert_type(handle, sw.RunHandle[Brief])
    assert_type(await handle.result(), Brief)
    assert_type(await app.run(research, "gpus"), Brief)
    assert_type(await app.run(research, topic="gpus", depth=3), Brief)
    again = await app.start(research, "gpus", run_id="order-42")
    assert_type(again, sw.RunHandle[Brief])
    await app.start(research, 42)  # type: ignore[call-overload]
    await app.start(research)  # type: ignore[call-overload]
    await app.run(research, "gpus", colour="red")  # type: ignore[call-arg]
    await app.start(research, "a", 1, 2)  # type: ignore[call-overload]
    by_name = await app.start("research", "gpus")
    assert_type(by_name, sw.RunHandle[Any])


def sync_main() -> None:
    assert_type(app.run_sync(outline, "x"), list[str])
    app.run_sync(outline, 3)  # type: ignore[call-overload]


@app.workflow  # type: ignore[arg-type]
async def no_context() -> str:
    return ""


@app.workflow  # type: ignore[arg-type]
def not_async(ctx: sw.Context) -> str:
    return ""


class Tally(BaseModel):
    count: int = 0


@app.actor(state=Tally)
async def tally(ctx: sw.ActorContext[Tally], n: int) -> int:
    assert_type(ctx.state, Tally)
    ctx.state.count += n
    ctx.remind("again", 5.0, n)
    return ctx.state.count


assert_type(tally, sw.Actor[Tally, int, int])


@app.workflow
async def uses_actors(ctx: sw.Context, key: str) -> int:
    sent = await ctx.send(tally, key, 1)
    assert_type(sent, str)
    await ctx.send(tally, key, "one")  # type: ignore[misc]
    reply = await ctx.ask(tally, key, 2, timeout=10)
    assert_type(reply, int)
    return reply


async def client_sends() -> None:
    assert_type(await app.send(tally, "k", 3, message_id="m-1"), str)
    await app.send(tally, 1.5, 3)  # type: ignore[arg-type]
    assert_type(await app.actor_state(tally, "k"), Tally)
    assert_type(await app.ask(tally, "k", 3, ask_id="q-1", timeout=5), int)
    await app.ask(tally, "k", "three")  # type: ignore[misc]
