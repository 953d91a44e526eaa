"""Workflows the blackboard fleet test's ``stalwart worker`` processes execute: a
producer posts jobs to a board, consumers take them until none is left."""

from __future__ import annotations

import os

from stalwart import Blackboard, Context, Workflow

jobs = Blackboard("jobs")


async def _produce(ctx: Context, n: int) -> int:
    for i in range(n):
        await jobs.post(ctx, f"job:{i:03d}", {"n": i}, agent="producer")
    return n


def pid() -> int:
    return os.getpid()


async def _consume(ctx: Context) -> dict[str, object]:
    me = await ctx.step(pid)
    taken = []
    while (entry := await jobs.take(ctx, "job:*")) is not None:
        taken.append(entry.key)
    return {"pid": me, "taken": taken}


produce = Workflow(_produce, name="produce")
consume = Workflow(_consume, name="consume")
