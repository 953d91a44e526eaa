"""The workflow behind ``stalwart demo``: plan, research fan-out, durable sleep, publish.

Every step writes one row per *execution* to a ledger (an SQLite file beside the
journal), so the demo can show which steps ran in which process. ``publish_report`` also
applies an external effect keyed by its idempotency key, the way a payment or mail API
deduplicates: a second call with the same key applies nothing and returns the original
receipt. Nothing here needs a network or an API key.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

from ._context import Context, current_step
from ._workflow import Workflow

__all__ = [
    "ANGLES",
    "CONFIRM_SECONDS",
    "LedgerEffect",
    "LedgerExecution",
    "ensure_ledger",
    "ledger_effects",
    "ledger_executions",
    "research_report",
]

P = ParamSpec("P")
R = TypeVar("R")

ANGLES = ("prior art", "failure modes", "open questions")
CONFIRM_SECONDS = 1.0
"""How long the publisher takes to confirm a *new* report: the window the demo crashes in."""

_LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, step_id TEXT NOT NULL,
    name TEXT NOT NULL, key TEXT NOT NULL, pid INTEGER NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS effects (
    key TEXT PRIMARY KEY, run_id TEXT NOT NULL, report TEXT NOT NULL,
    pid INTEGER NOT NULL, at REAL NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class LedgerExecution:
    """One execution of a step, as the step itself logged it."""

    step_id: str
    name: str
    key: str
    pid: int
    at: float


@dataclass(frozen=True, slots=True)
class LedgerEffect:
    """One applied effect; the key is the publishing step's idempotency key."""

    key: str
    pid: int
    at: float


@contextlib.contextmanager
def _ledger(path: str) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    try:
        yield conn
    finally:
        conn.close()


def ensure_ledger(path: str) -> None:
    """Create the ledger file and its tables if they are missing."""
    with _ledger(path) as conn:
        conn.executescript(_LEDGER_SCHEMA)


def ledger_executions(path: str, run_id: str) -> list[LedgerExecution]:
    with _ledger(path) as conn:
        rows = conn.execute("SELECT step_id, name, key, pid, at FROM executions "
                            "WHERE run_id = ? ORDER BY id", (run_id,)).fetchall()
    return [LedgerExecution(*row) for row in rows]


def ledger_effects(path: str, run_id: str) -> list[LedgerEffect]:
    with _ledger(path) as conn:
        rows = conn.execute("SELECT key, pid, at FROM effects WHERE run_id = ? ORDER BY at",
                            (run_id,)).fetchall()
    return [LedgerEffect(*row) for row in rows]


def _log_execution(ledger: str) -> str:
    step = current_step()
    with _ledger(ledger) as conn:
        conn.execute("INSERT INTO executions (run_id, step_id, name, key, pid, at) "
                     "VALUES (?, ?, ?, ?, ?, ?)",
                     (step.run_id, step.step_id, step.name, step.idempotency_key,
                      os.getpid(), time.time()))
    return step.idempotency_key


# -- the steps -----------------------------------------------------------------------


async def make_plan(ledger: str, topic: str) -> list[str]:
    """Decide what to research (a model call in a real agent)."""
    _log_execution(ledger)
    await asyncio.sleep(0.1)
    return [f"{topic}: {angle}" for angle in ANGLES]


async def research(ledger: str, question: str) -> str:
    """Research one question, with a model call's unpredictable latency."""
    _log_execution(ledger)
    await asyncio.sleep(random.uniform(0.2, 0.8))
    return f"3 findings on {question}"


async def publish_report(ledger: str, topic: str, notes: list[str]) -> dict[str, Any]:
    """Publish the report: an external effect, deduplicated by the idempotency key."""
    key = _log_execution(ledger)
    report = f"# {topic}\n" + "\n".join(f"- {note}" for note in notes)
    with _ledger(ledger) as conn:
        applied = conn.execute(
            "INSERT OR IGNORE INTO effects (key, run_id, report, pid, at) "
            "VALUES (?, ?, ?, ?, ?)",
            (key, current_step().run_id, report, os.getpid(), time.time())).rowcount == 1
    if applied:
        await asyncio.sleep(CONFIRM_SECONDS)  # the publisher confirms a new report slowly
    return {"receipt": key, "lines": len(notes) + 1, "deduplicated": not applied}


def _workflow(fn: Callable[Concatenate[Context, P], Awaitable[R]]) -> Workflow[P, R]:
    return Workflow(fn)


@_workflow
async def research_report(ctx: Context, topic: str, ledger: str,
                          pause: float = 2.0) -> dict[str, Any]:
    """Plan, research three angles at once, wait durably, publish once."""
    plan = await ctx.step(make_plan, ledger, topic)
    notes = await ctx.gather(*(ctx.step(research, ledger, question) for question in plan))
    await ctx.sleep(pause)
    receipt = await ctx.step(publish_report, ledger, topic, notes)
    return {"topic": topic, "notes": notes, **receipt}
