"""The processes the actor crash tests (and ``bench/bench_actors.py``) kill: a counter
actor whose state proves order and exactly-once, and a workflow that asks it.

``python actor_app.py STORE worker`` executes runs until killed.
``python actor_app.py STORE ask KEY RUN_ID N`` starts (or resumes) a run of ``asker``,
which asks instance ``KEY`` ``N`` times, and prints its result as JSON.
``python actor_app.py STORE app-ask KEY ASK_ID N`` asks instance ``KEY`` ``N`` times from
outside a workflow (``app.ask``, ask ids ``ASK_ID-0``...) and prints the replies as JSON.

The counter's state keeps, per key: how many messages it applied, the sum of their
sequence numbers, the last sequence number and every one that came out of order. A
message applied twice shows in the count and the sum; one lost, in both; one out of
order, in ``disorder``.

``$CRASH_AT = "KEY:SEQ"`` SIGKILLs the process inside the handler of message ``SEQ`` of
instance ``KEY`` (between its step and its commit), the first time only (a marker file
in ``$CRASH_MARKERS``, default the working directory, remembers it).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from pydantic import BaseModel

import stalwart as sw


class Count(BaseModel):
    count: int = 0
    total: int = 0
    last: int = -1
    disorder: list[int] = []


class Msg(BaseModel):
    seq: int


def _maybe_die(key: str, seq: int) -> None:
    armed = os.environ.get("CRASH_AT")
    if armed != f"{key}:{seq}":
        return
    marker = Path(os.environ.get("CRASH_MARKERS", ".")) / f"crashed-{key}-{seq}"
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def build(store: str, **kw: object) -> tuple[sw.Runtime, sw.Actor[Count, Msg, int],
                                              sw.Workflow[[str, int], list[int]]]:
    app = sw.Runtime(store, poll_interval=0.1, lease_seconds=10.0, **kw)  # type: ignore[arg-type]

    @app.actor(state=Count)
    async def counter(ctx: sw.ActorContext[Count], msg: Msg) -> int:
        # A step inside the handler: replayed, not run again, after a crash before commit.
        doubled = await ctx.ctx.step(lambda: msg.seq * 2, name="double")
        _maybe_die(ctx.key, msg.seq)
        if msg.seq != ctx.state.last + 1:
            ctx.state.disorder.append(msg.seq)
        ctx.state.last = msg.seq
        ctx.state.count += 1
        ctx.state.total += doubled // 2
        return ctx.state.count

    @app.workflow
    async def asker(ctx: sw.Context, key: str, n: int) -> list[int]:
        return [await ctx.ask(counter, key, Msg(seq=i)) for i in range(n)]

    return app, counter, asker


async def _worker(store: str) -> None:
    app, _, _ = build(store)
    async with app:
        await asyncio.Event().wait()


async def _ask(store: str, key: str, run_id: str, n: int) -> None:
    app, _, asker = build(store)
    async with app:
        handle = await app.start(asker, key, n, run_id=run_id, if_exists="return")
        print(json.dumps(await handle.result()))


async def _app_ask(store: str, key: str, ask_id: str, n: int) -> None:
    app, counter, _ = build(store)
    async with app:
        print(json.dumps([await app.ask(counter, key, Msg(seq=i), ask_id=f"{ask_id}-{i}")
                          for i in range(n)]))


if __name__ == "__main__":
    if sys.argv[2] == "worker":
        asyncio.run(_worker(sys.argv[1]))
    elif sys.argv[2] == "app-ask":
        asyncio.run(_app_ask(sys.argv[1], sys.argv[3], sys.argv[4], int(sys.argv[5])))
    else:
        asyncio.run(_ask(sys.argv[1], sys.argv[3], sys.argv[4], int(sys.argv[5])))
