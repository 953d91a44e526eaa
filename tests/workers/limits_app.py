"""What the cluster-limit tests run in their worker processes.

``stalwart worker --import limits_app`` (run with this folder as the working directory)
registers ``stamp_once``: one call of the ``stamp`` tool under a rate limit of
``$LIMITS_RPM`` requests per minute with a burst of ``$LIMITS_BURST``. The tool writes its
idempotency key, the worker's pid and its start time (``time.time()``, taken first thing)
to the ``limits_calls`` table of ``$LIMITS_LEDGER_URL``.

``python limits_app.py bulkhead STORE LEDGER TASKS`` is a process that makes ``TASKS``
concurrent calls through ``Runtime(STORE).bulkheads.get("narrow", max_concurrent=2)``;
each call writes its pid, start and end (taken inside the slot) to ``limits_slots``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from stalwart import Context, Policy, RateLimit, Runtime, Tool, ToolCall, Workflow

_pool: Any = None


async def _ledger(sql: str, args: tuple[object, ...]) -> None:
    global _pool
    from psycopg_pool import AsyncConnectionPool

    if _pool is None:
        _pool = AsyncConnectionPool(os.environ["LIMITS_LEDGER_URL"], min_size=1, max_size=4,
                                    open=False, kwargs={"autocommit": True}, timeout=10)
        await _pool.open()
    from psycopg_pool import PoolTimeout

    for _ in range(20):  # no connection yet (a server busy with other clients): nothing ran
        try:
            async with _pool.connection() as conn:
                await conn.execute(sql, args)
            return
        except PoolTimeout:
            await asyncio.sleep(0.5)
    raise RuntimeError("no connection to the ledger database")


async def _stamp(call: ToolCall) -> str:
    started = time.time()
    await _ledger("INSERT INTO limits_calls (key, pid, started_at) VALUES (%s, %s, %s)",
                  (call.idempotency_key, os.getpid(), started))
    return call.idempotency_key


stamp = Tool(_stamp, name="stamp", policy=Policy(rate_limit=RateLimit(
    requests_per_minute=float(os.environ.get("LIMITS_RPM", "240")),
    burst=int(os.environ.get("LIMITS_BURST", "2")))))


async def _stamp_once(ctx: Context) -> str:
    return await ctx.tool(stamp)


stamp_once = Workflow(_stamp_once, name="stamp_once")


async def _bulkhead(store: str, tasks: int) -> None:
    from stalwart.policies import BulkheadConfig

    app = Runtime(store, worker=False)
    await app.open()
    bulkhead = app.bulkheads.get("narrow", BulkheadConfig(max_concurrent=2, max_queue=100))

    async def call() -> None:
        async with bulkhead:
            started = time.time()
            await asyncio.sleep(0.05)
            ended = time.time()
            await _ledger("INSERT INTO limits_slots (pid, started_at, ended_at) "
                          "VALUES (%s, %s, %s)", (os.getpid(), started, ended))

    try:
        await asyncio.gather(*(call() for _ in range(tasks)))
    finally:
        await app.close()
        if _pool is not None:
            await _pool.close()


if __name__ == "__main__":
    if sys.argv[1:2] != ["bulkhead"] or len(sys.argv) != 5:
        sys.exit("usage: limits_app.py bulkhead STORE LEDGER TASKS")
    os.environ["LIMITS_LEDGER_URL"] = sys.argv[3]
    asyncio.run(_bulkhead(sys.argv[2], int(sys.argv[4])))
