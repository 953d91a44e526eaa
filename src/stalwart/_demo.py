"""The workflow behind ``stalwart demo``: plan, a fan-out of researcher agents, a writer
agent, a durable sleep, publish — on flaky simulated models.

The agents run on ``sim:`` models with injected faults, so the resilience policies have
work to do: each researcher has its own model (its own seeded fault sequence, so the
demo tells the same story every time, whichever branch finishes first) that returns
500s and 429 bursts with a ``Retry-After``; the writer's primary model is in a hard
outage, so its circuit breaker opens and a fallback model answers.

Every plain step writes one row per *execution* to a ledger (an SQLite file beside the
journal), so the demo can show which steps ran in which process. ``publish_report`` also
applies an external effect keyed by its idempotency key, the way a payment or mail API
deduplicates: a second call with the same key applies nothing and returns the original
receipt. The process running the workflow copies its runtime's ``policy_log`` into the
ledger too, since a ``SIGKILL`` takes its memory with it. Nothing here needs a network
or an API key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

from ._agent import Agent
from ._clock import Clock
from ._context import Context, current_step
from ._runtime import PolicyNote
from .engine._policy import Policy
from .engine._tools import Tool
from .engine._workflow import Workflow
from .models import (
    Latency,
    Model,
    ModelRequest,
    ScriptedReply,
    SimFaults,
    SimulatedModel,
    ToolCallRequest,
)
from .policies import CircuitBreakerConfig, Retry, Timeout

__all__ = [
    "ANGLES",
    "CONFIRM_SECONDS",
    "DEMO_POLICY",
    "LedgerEffect",
    "LedgerExecution",
    "LedgerPolicyNote",
    "RETRY_AFTER",
    "WRITER_BACKUP",
    "WRITER_PRIMARY",
    "demo_models",
    "ensure_ledger",
    "ledger_effects",
    "ledger_executions",
    "ledger_policy_notes",
    "record_policy_notes",
    "research_report",
]

P = ParamSpec("P")
R = TypeVar("R")

ANGLES = ("prior art", "failure modes", "open questions")
CONFIRM_SECONDS = 1.0
"""How long the publisher takes to confirm a *new* report: the window the demo crashes in."""

RETRY_AFTER = 0.3
"""The ``Retry-After`` the researchers' models send with a 429, in seconds."""
WRITER_PRIMARY = "sim:writer"
WRITER_BACKUP = "sim:writer-backup"

_RESEARCHER_SEEDS = (14, 3, 0)
"""Chosen so that, between them, the researchers meet 500s and a 429 burst and still
succeed within their attempts (each model's fault sequence depends only on its seed)."""

DEMO_POLICY = Policy(
    retry=Retry(max_attempts=5, initial=0.05, max_backoff=0.5),
    timeout=Timeout(per_attempt=5.0),
)
"""The runtime-level policy of the demo: small backoffs, so it stays a few seconds long."""

_WRITER_BREAKER = CircuitBreakerConfig(window_size=5, minimum_calls=3, wait_in_open=60.0,
                                       permitted_calls_in_half_open=1)

_LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, step_id TEXT NOT NULL,
    name TEXT NOT NULL, key TEXT NOT NULL, pid INTEGER NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS effects (
    key TEXT PRIMARY KEY, run_id TEXT NOT NULL, report TEXT NOT NULL,
    pid INTEGER NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS policy_notes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT, step_id TEXT, action TEXT NOT NULL,
    key TEXT NOT NULL, pid INTEGER NOT NULL, at REAL NOT NULL);
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


@dataclass(frozen=True, slots=True)
class LedgerPolicyNote:
    """One entry of a runtime's ``policy_log``, copied out by the process that made it."""

    run_id: str | None
    step_id: str | None
    action: str
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


def record_policy_notes(path: str, notes: Iterable[PolicyNote]) -> None:
    """Append a runtime's policy notes (retries, breaker transitions, fallbacks)."""
    rows = [(n.run_id, n.step_id, n.action, n.key, os.getpid(), n.at) for n in notes]
    if not rows:
        return
    with _ledger(path) as conn:
        conn.executemany("INSERT INTO policy_notes (run_id, step_id, action, key, pid, at) "
                         "VALUES (?, ?, ?, ?, ?, ?)", rows)


def ledger_policy_notes(path: str, pid: int | None = None) -> list[LedgerPolicyNote]:
    """The recorded policy notes, oldest first (of one process, when ``pid`` is given)."""
    with _ledger(path) as conn:
        rows = conn.execute(
            "SELECT run_id, step_id, action, key, pid, at FROM policy_notes "
            "WHERE ? IS NULL OR pid = ? ORDER BY id", (pid, pid)).fetchall()
    return [LedgerPolicyNote(*row) for row in rows]


def _log_execution(ledger: str) -> str:
    step = current_step()
    with _ledger(ledger) as conn:
        conn.execute("INSERT INTO executions (run_id, step_id, name, key, pid, at) "
                     "VALUES (?, ?, ?, ?, ?, ?)",
                     (step.run_id, step.step_id, step.name, step.idempotency_key,
                      os.getpid(), time.time()))
    return step.idempotency_key


# -- the models ----------------------------------------------------------------------


def _writer_script(request: ModelRequest) -> ScriptedReply:
    """The backup writer: first asks for an outline (a tool call), then writes."""
    outline = next((m.content for m in request.messages if m.role == "tool"), None)
    if outline is None:
        return ToolCallRequest.create("outline-1", "outline", {"sections": len(ANGLES)})
    notes = next((m.content for m in request.messages if m.role == "user"), "[]")
    try:
        count = len(json.loads(notes or "[]"))
    except ValueError:
        count = 0
    return (f"Report, in the outline {outline}: {count} researchers' findings merged; "
            "every claim carries its source.")


def demo_models(clock: Clock | None = None) -> dict[str, Model]:
    """The demo's simulated models by spec, on ``clock`` (pass the runtime's).

    - ``sim:researcher-1..3``: 10-30 ms latency, 20 % 500s, 15 % chance of a burst of
      three 429s with ``Retry-After: 0.3``;
    - ``sim:writer``: in a hard outage (every call a 503);
    - ``sim:writer-backup``: healthy; asks for an outline, then writes the report.
    """
    flaky = SimFaults(error_rate=0.2, rate_limit_rate=0.15, rate_limit_burst=3,
                      rate_limit_retry_after=RETRY_AFTER)
    models: dict[str, Model] = {
        f"sim:researcher-{i + 1}": SimulatedModel(
            f"researcher-{i + 1}", seed=seed, clock=clock,
            latency=Latency.uniform(0.01, 0.03), faults=flaky)
        for i, seed in enumerate(_RESEARCHER_SEEDS)
    }
    models[WRITER_PRIMARY] = SimulatedModel(
        "writer", clock=clock, faults=SimFaults(outages=((0.0, 1e9),)))
    models[WRITER_BACKUP] = SimulatedModel(
        "writer-backup", seed=1, clock=clock, latency=Latency.fixed(0.02),
        script=_writer_script)
    return models


# -- the agents ----------------------------------------------------------------------


def outline(sections: int) -> str:
    """Propose the report's sections."""
    return " / ".join(["summary", *(f"finding {i + 1}" for i in range(sections)), "risks"])


_OUTLINE = Tool(outline)

RESEARCHERS = tuple(
    Agent(f"researcher-{i + 1}", f"sim:researcher-{i + 1}", pool="research",
          instructions="Research one angle of the topic. Cite sources.")
    for i in range(len(ANGLES))
)
WRITER = Agent(
    "writer", WRITER_PRIMARY, tools=[_OUTLINE],
    instructions="Merge the researchers' findings into one report. Outline first.",
    policy=Policy(fallback=(WRITER_BACKUP,), breaker=_WRITER_BREAKER),
)


# -- the steps -----------------------------------------------------------------------


async def make_plan(ledger: str, topic: str) -> list[str]:
    """Decide what to research."""
    _log_execution(ledger)
    await asyncio.sleep(0.1)
    return [f"{topic}: {angle}" for angle in ANGLES]


async def publish_report(ledger: str, topic: str, report: str) -> dict[str, Any]:
    """Publish the report: an external effect, deduplicated by the idempotency key."""
    key = _log_execution(ledger)
    with _ledger(ledger) as conn:
        applied = conn.execute(
            "INSERT OR IGNORE INTO effects (key, run_id, report, pid, at) "
            "VALUES (?, ?, ?, ?, ?)",
            (key, current_step().run_id, f"# {topic}\n{report}", os.getpid(),
             time.time())).rowcount == 1
    if applied:
        await asyncio.sleep(CONFIRM_SECONDS)  # the publisher confirms a new report slowly
    return {"receipt": key, "deduplicated": not applied}


def _workflow(fn: Callable[Concatenate[Context, P], Awaitable[R]]) -> Workflow[P, R]:
    return Workflow(fn)


@_workflow
async def research_report(ctx: Context, topic: str, ledger: str,
                          pause: float = 2.0) -> dict[str, Any]:
    """Plan; three researcher agents at once; the writer joins; wait durably; publish."""
    plan = await ctx.step(make_plan, ledger, topic)
    notes = await ctx.gather(*(agent.run(ctx, question)
                               for agent, question in zip(RESEARCHERS, plan, strict=True)))
    written = await WRITER.run_result(ctx, notes)
    await ctx.sleep(pause)
    receipt = await ctx.step(publish_report, ledger, topic, written.output)
    return {"topic": topic, "notes": notes, "report": written.output,
            "written_by": sorted(set(written.models)), **receipt}
