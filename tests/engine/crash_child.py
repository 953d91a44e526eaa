"""The process that ``test_crash.py`` kills: workflows whose steps leave side effects.

Run as ``python crash_child.py STORE LEDGER_DIR WORKFLOW RUN_ID`` it starts (or, when the
run already exists, resumes) one run, waits for it and prints its result as JSON. The
parent test SIGKILLs it at chosen points and starts it again on the same store.

Every step appends its idempotency key to two ledgers in ``LEDGER_DIR``:

* ``dedup.db`` — an SQLite table keyed by the idempotency key (``INSERT OR IGNORE``), the
  way an external service deduplicates: each key holds exactly one row;
* ``raw.log`` — one fsync'ed line per *execution*, so a step that ran twice shows twice.

Deterministic kill points come from ``$CRASH_AT = "LABEL:PHASE"``: the step with that
label kills its own process (``SIGKILL``) at ``before_effect`` (nothing written yet),
``after_effect`` (both ledgers written, the journal not yet) or ``between`` (the step's
outcome is committed, the next step has not begun). ``$CRASH_PARK_AFTER`` sets the
runtime's ``park_after``, ``$CRASH_LEASE`` its ``lease_seconds`` and
``$CRASH_STEP_DELAY`` how long a step lingers after its effect.

The module is also imported by the test process, which then resumes runs itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

from stalwart import (
    Context,
    Policy,
    RateLimitedError,
    Retry,
    Runtime,
    Tool,
    ToolCall,
    Workflow,
    current_step,
)

PHASES = ("before_effect", "after_effect", "between")

# The layout of ``pipeline``: 26 steps; two fan-outs.
SEQ_A = (1, 2, 3, 4, 5, 6)
GATHER_A = ((10,), (11,), (12,), (13,))          # four branches, one step each
SEQ_B = (20, 21, 22, 23, 24, 25)
GATHER_B = ((30, 31), (32, 33), (34, 35))        # three branches, two steps each
SEQ_C = (40, 41, 42, 43)
PIPELINE_LABELS = (*SEQ_A, *(x for b in GATHER_A for x in b), *SEQ_B,
                   *(x for b in GATHER_B for x in b), *SEQ_C)

PARENT_LABELS = (1, 2, 3, 4)
CHILD_LABELS = (50, 51, 52, 53, 54)

SLEEP_LABELS = (60, 61)


class _Config:
    ledger_dir: Path | None = None
    crash_at: tuple[int, str] | None = None
    dedup: sqlite3.Connection | None = None
    raw_fd: int | None = None
    step_delay: float = 0.001


config = _Config()


def configure(ledger_dir: str | os.PathLike[str], crash_at: str | None = None,
              step_delay: float = 0.001) -> None:
    """Point the steps at a ledger folder, arm (or disarm) a kill point, and set how long
    a step lingers after its effect (widening the window a random kill lands in)."""
    close()
    config.step_delay = step_delay
    config.ledger_dir = Path(ledger_dir)
    config.ledger_dir.mkdir(parents=True, exist_ok=True)
    config.crash_at = None
    if crash_at:
        label, phase = crash_at.split(":")
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        config.crash_at = (int(label), phase)


def close() -> None:
    if config.dedup is not None:
        config.dedup.close()
        config.dedup = None
    if config.raw_fd is not None:
        os.close(config.raw_fd)
        config.raw_fd = None


def _ledgers() -> tuple[sqlite3.Connection, int]:
    if config.ledger_dir is None:
        raise RuntimeError("crash_child.configure() was not called")
    if config.dedup is None:
        conn = sqlite3.connect(config.ledger_dir / "dedup.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, "
                     "label INTEGER NOT NULL)")
        config.dedup = conn
    if config.raw_fd is None:
        config.raw_fd = os.open(config.ledger_dir / "raw.log",
                                os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    return config.dedup, config.raw_fd


def maybe_die(label: int, phase: str) -> None:
    """SIGKILL this process if ``(label, phase)`` is the armed kill point."""
    if config.crash_at == (label, phase):
        os.kill(os.getpid(), signal.SIGKILL)


def value_of(label: int) -> int:
    return label * 7 + 3


def write_ledgers(key: str, label: int) -> None:
    dedup, raw = _ledgers()
    dedup.execute("INSERT OR IGNORE INTO effects (key, label) VALUES (?, ?)", (key, label))
    os.write(raw, f"{key}\t{label}\t{os.getpid()}\t{time.time():.6f}\n".encode())
    os.fsync(raw)


async def effect(label: int) -> int:
    """One step: both ledgers get the step's idempotency key, then a little latency."""
    key = current_step().idempotency_key
    maybe_die(label, "before_effect")
    write_ledgers(key, label)
    maybe_die(label, "after_effect")
    await asyncio.sleep(config.step_delay)
    return value_of(label)


async def do(ctx: Context, label: int) -> int:
    value = await ctx.step(effect, label)
    maybe_die(label, "between")
    return value


async def branch(ctx: Context, labels: tuple[int, ...]) -> list[int]:
    return [await do(ctx, label) for label in labels]


def fold(acc: int, value: int) -> int:
    """Order-sensitive, so a result in the wrong order shows."""
    return (acc * 31 + value) % 1_000_003


async def _pipeline(ctx: Context, seed: int) -> int:
    acc = seed
    for label in SEQ_A:
        acc = fold(acc, await do(ctx, label))
    for values in await ctx.gather(*(branch(ctx, b) for b in GATHER_A)):
        for v in values:
            acc = fold(acc, v)
    for label in SEQ_B:
        acc = fold(acc, await do(ctx, label))
    for values in await ctx.gather(*(branch(ctx, b) for b in GATHER_B)):
        for v in values:
            acc = fold(acc, v)
    for label in SEQ_C:
        acc = fold(acc, await do(ctx, label))
    return acc


async def _sub(ctx: Context, seed: int) -> int:
    acc = seed
    for label in CHILD_LABELS:
        acc = fold(acc, await do(ctx, label))
    return acc


sub = Workflow(_sub, name="sub")


async def _with_child(ctx: Context, seed: int) -> int:
    acc = seed
    for label in PARENT_LABELS[:2]:
        acc = fold(acc, await do(ctx, label))
    acc = fold(acc, await ctx.child(sub, seed + 1))
    for label in PARENT_LABELS[2:]:
        acc = fold(acc, await do(ctx, label))
    return acc


async def _sleeper(ctx: Context, seconds: float) -> int:
    first = await do(ctx, SLEEP_LABELS[0])
    await ctx.sleep(seconds)
    return first + await do(ctx, SLEEP_LABELS[1])


RETRY_AFTER = 2.0
"""What ``quota``'s first attempt is told to wait: short enough to wait in memory."""


async def _quota(call: ToolCall) -> str:
    """A tool whose provider answers the first attempt with a 429 and ``Retry-After``;
    the raw ledger gets one line per attempt, labelled with the attempt number."""
    write_ledgers(f"{call.idempotency_key}#{call.attempt}", call.attempt)
    if call.attempt == 1:
        raise RateLimitedError("slow down", retry_after=RETRY_AFTER)
    return "ok"


quota_tool = Tool(_quota, name="quota", policy=Policy(
    retry=Retry(max_attempts=3, initial=0.01, max_backoff=0.02)))


async def _quota_wf(ctx: Context) -> str:
    return await ctx.tool(quota_tool)


pipeline = Workflow(_pipeline, name="pipeline")
with_child = Workflow(_with_child, name="with_child")
sleeper = Workflow(_sleeper, name="sleeper")
quota = Workflow(_quota_wf, name="quota")
WORKFLOWS = {"pipeline": pipeline, "with_child": with_child, "sleeper": sleeper,
             "quota": quota}
# The sleeper's 3 s leave a loaded machine time to see it asleep and kill it before it
# wakes (test_crash asserts the kill landed during the sleep).
ARGS: dict[str, tuple[object, ...]] = {"pipeline": (17,), "with_child": (17,),
                                       "sleeper": (3.0,), "quota": ()}
"""The inputs of each workflow (``expected`` computes the pipelines' results from 17)."""


def expected(workflow: str) -> object:
    """The result of a crash-free run, computed without the runtime."""
    if workflow == "quota":
        return "ok"
    if workflow == "pipeline":
        acc = 17
        for label in PIPELINE_LABELS:
            acc = fold(acc, value_of(label))
        return acc
    if workflow == "with_child":
        seed = 17
        child = seed + 1
        for label in CHILD_LABELS:
            child = fold(child, value_of(label))
        acc = seed
        for label in PARENT_LABELS[:2]:
            acc = fold(acc, value_of(label))
        acc = fold(acc, child)
        for label in PARENT_LABELS[2:]:
            acc = fold(acc, value_of(label))
        return acc
    return value_of(SLEEP_LABELS[0]) + value_of(SLEEP_LABELS[1])


def make_runtime(store: str, *, park_after: float = 5.0,
                 lease_seconds: float = 30.0) -> Runtime:
    app = Runtime(store, poll_interval=0.1, park_after=park_after,
                  lease_seconds=lease_seconds)
    for wf in WORKFLOWS.values():
        app.register(wf)
    app.register(sub)
    return app


async def main(store: str, workflow: str, run_id: str) -> object:
    park_after = float(os.environ.get("CRASH_PARK_AFTER", "5.0"))
    lease = float(os.environ.get("CRASH_LEASE", "30.0"))
    app = make_runtime(store, park_after=park_after, lease_seconds=lease)
    try:
        handle = await app.start(WORKFLOWS[workflow], *ARGS[workflow], run_id=run_id)
        result: object = await handle.result(timeout=60)
    finally:
        await app.close()
        close()
    return result


if __name__ == "__main__":
    store_path, ledger_path, wf_name, rid = sys.argv[1:5]
    configure(ledger_path, os.environ.get("CRASH_AT"),
              float(os.environ.get("CRASH_STEP_DELAY", "0.001")))
    print(json.dumps(asyncio.run(main(store_path, wf_name, rid))), flush=True)
