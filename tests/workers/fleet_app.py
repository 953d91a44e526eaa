"""Workflows that ``stalwart worker`` processes execute in the fleet tests.

``stalwart worker --import fleet_app`` (run with this folder as the working directory)
registers every workflow below. When ``$FLEET_LEDGER_URL`` names a PostgreSQL database,
every ``effect`` step writes its idempotency key to two ledger tables there, the way an
external service would see it:

* ``fleet_dedup`` — keyed by the idempotency key (``ON CONFLICT DO NOTHING``): each key
  holds exactly one row however often the step runs;
* ``fleet_raw`` — one row per *execution*, with the worker's pid and the execution's
  start and end (PostgreSQL's clock), so re-executions and overlaps show.

Each ledger write is retried while the database is unreachable (a restart), as a
client of a real service would; it is idempotent per execution.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

from stalwart import Context, Workflow, current_step

STEPS = 5
_pool: Any = None


async def _ledger(*statements: tuple[str, tuple[object, ...]]) -> None:
    """Run ``statements`` in one ledger transaction, retrying through a database restart
    (for up to about a minute)."""
    global _pool
    url = os.environ.get("FLEET_LEDGER_URL")
    if not url:
        return
    import psycopg
    from psycopg_pool import AsyncConnectionPool

    if _pool is None:
        _pool = AsyncConnectionPool(url, min_size=1, max_size=4, open=False,
                                    kwargs={"autocommit": True}, timeout=5)
        await _pool.open()
    delay = 0.05
    for _ in range(200):
        try:
            async with _pool.connection() as conn, conn.transaction():
                for sql, args in statements:
                    await conn.execute(sql, args)
            return
        except (psycopg.OperationalError, psycopg.InterfaceError):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
    raise RuntimeError("the ledger database stayed unreachable")


def value_of(label: int) -> int:
    return label * 7 + 3


async def effect(label: int) -> int:
    """One step with an effect on the ledgers, and a little latency."""
    key = current_step().idempotency_key
    execution = uuid.uuid4().hex
    pid = os.getpid()
    await _ledger(
        ("INSERT INTO fleet_raw (execution, key, pid, started_at) VALUES "
         "(%s, %s, %s, extract(epoch from clock_timestamp())) ON CONFLICT DO NOTHING",
         (execution, key, pid)),
        ("INSERT INTO fleet_dedup (key, pid) VALUES (%s, %s) ON CONFLICT DO NOTHING",
         (key, pid)))
    await asyncio.sleep(float(os.environ.get("FLEET_STEP_DELAY", "0.005")))
    await _ledger(("UPDATE fleet_raw SET ended_at = extract(epoch from clock_timestamp()) "
                   "WHERE execution = %s", (execution,)))
    return value_of(label)


def fold(acc: int, value: int) -> int:
    return (acc * 31 + value) % 1_000_003


async def _chain(ctx: Context, seed: int) -> int:
    acc = seed
    for label in range(STEPS):
        acc = fold(acc, await ctx.step(effect, label))
    return acc


def expected(seed: int) -> int:
    """The result of a run of ``chain`` with ``seed``, computed without the runtime."""
    acc = seed
    for label in range(STEPS):
        acc = fold(acc, value_of(label))
    return acc


async def _linger(ctx: Context, seconds: float) -> str:
    """One step that takes ``seconds``: long enough to be caught by a shutdown."""
    return str(await ctx.step(_sleep_then_answer, seconds))


async def _sleep_then_answer(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "done"


def _blocking_step(marker: str, seconds: float) -> str:
    """A synchronous step (it runs in a thread): writes ``start`` to its marker file,
    blocks, then appends ``end``, so a test sees whether a run of it finished."""
    with open(marker, "a") as out:
        out.write(f"start {os.getpid()}\n")
    time.sleep(seconds)
    with open(marker, "a") as out:
        out.write(f"end {os.getpid()}\n")
    return "done"


async def _blocking(ctx: Context, marker: str, seconds: float) -> str:
    return str(await ctx.step(_blocking_step, marker, seconds))


chain = Workflow(_chain, name="chain")
linger = Workflow(_linger, name="linger")
blocking = Workflow(_blocking, name="blocking")
gpu_chain = Workflow(_chain, name="gpu_chain", pool="gpu")
