"""The process that the pattern crash tests kill: supervisors, sagas and approvals whose
steps leave side effects in ledgers, and a blackboard wait.

Run as ``python crash_app.py STORE LEDGER_DIR WORKFLOW RUN_ID`` it starts (or, when the
run exists, resumes) one run, waits for it and prints its result as JSON (or
``{"error": ...}``). The test SIGKILLs it, or it kills itself at an armed point, and the
test starts it again on the same store (a SQLite path or a PostgreSQL URL).

Every effect writes its idempotency key to two ledgers in ``LEDGER_DIR``: ``dedup.db``
(keyed, ``INSERT OR IGNORE``: what a deduplicating service applies) and ``raw.log`` (one
fsync'ed line per execution: an effect that ran twice shows twice).

``$CRASH_AT = "LABEL:N:PHASE"`` kills the process (SIGKILL) when the effect labelled
``LABEL`` runs for the ``N``-th time over all processes (counted in ``raw.log``), at
``before`` (nothing written) or ``after`` (both ledgers written, the journal not yet).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import stalwart as sw

LEDGER = Path(os.environ.get("PATTERNS_LEDGER", "."))


def _raw_path() -> Path:
    return LEDGER / "raw.log"


def raw_lines(ledger: Path) -> list[tuple[str, str]]:
    """(label, key) for every execution of an effect, in order."""
    path = ledger / "raw.log"
    if not path.exists():
        return []
    return [tuple(line.split("\t")[:2]) for line in path.read_text().splitlines()]  # type: ignore[misc]


def dedup_rows(ledger: Path) -> list[tuple[str, str]]:
    """(label, key) of every effect a deduplicating service applied."""
    path = ledger / "dedup.db"
    if not path.exists():
        return []
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute("SELECT label, key FROM effects ORDER BY rowid"))
    finally:
        conn.close()


def _maybe_die(label: str, phase: str) -> None:
    armed = os.environ.get("CRASH_AT")
    if not armed:
        return
    want_label, n, want_phase = armed.split(":")
    if want_label != label or want_phase != phase:
        return
    runs = sum(1 for lab, _ in raw_lines(LEDGER) if lab == label)
    # before: this is execution runs + 1; after: the line just written is execution runs.
    if (runs + 1 if phase == "before" else runs) == int(n):
        os.kill(os.getpid(), signal.SIGKILL)


def effect(label: str) -> int:
    """Apply one effect under the calling step's idempotency key; returns how many
    distinct keys the deduplicating ledger holds for ``label`` (this one included)."""
    key = sw.current_step().idempotency_key
    _maybe_die(label, "before")
    LEDGER.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(LEDGER / "dedup.db", isolation_level=None, timeout=30)
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, "
                     "label TEXT NOT NULL)")
        conn.execute("INSERT OR IGNORE INTO effects (key, label) VALUES (?, ?)", (key, label))
        count = conn.execute("SELECT count(*) FROM effects WHERE label = ?",
                             (label,)).fetchone()[0]
    finally:
        conn.close()
    fd = os.open(_raw_path(), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{label}\t{key}\t{os.getpid()}\t{time.time():.6f}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    _maybe_die(label, "after")
    return int(count)


# -- supervisors --------------------------------------------------------------------


TREE = ("a", "b", "c")
"""The tree's children, whose effects a failing child waits for (:func:`round_done`)."""


def round_done(name: str, n: int) -> None:
    """Return when every sibling of ``name`` has applied its effect ``n`` times (``n``
    distinct keys in the deduplicating ledger): the failing child ends its round only
    after its siblings did their work in it. Without this the answer depended on
    scheduling: ``one_for_all`` stops the siblings when the failing child ends, and one
    that had not reached its effect yet (on a loaded machine, or after a resume, where the
    failing child's journaled effect replays at once while a sibling's runs for real)
    lost that round's effect, finishing as ``a#2`` instead of ``a#3``. A wait on the
    ledger (progress), bounded: past a minute the step fails."""
    deadline = time.monotonic() + 60
    while True:
        applied = Counter(label for label, _ in dedup_rows(LEDGER))
        if all(applied[label] >= n for label in TREE if label != name):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: its siblings never applied effect {n}: {applied}")
        time.sleep(0.01)


async def _worker(ctx: sw.Context, name: str, fails: int, hold: float) -> str:
    """Fails its first ``fails`` runs (counted by distinct runs in the ledger), each time
    after its siblings applied their effect of that round (see :func:`round_done`).
    ``$PATTERNS_LATE = "LABEL"`` makes that child reach its effect a second late, as a
    starved one does on a loaded machine."""
    if os.environ.get("PATTERNS_LATE") == name:
        await asyncio.sleep(1.0)  # fault injection: the scheduler's delay, not a wait
    n = await ctx.step(effect, name, name=f"work:{name}")
    if n <= fails:
        await ctx.step(round_done, name, n, name=f"round:{name}")
        raise ValueError(f"{name}: run {n} fails")
    await ctx.sleep(hold)
    return f"{name}#{n}"


worker = sw.Workflow(_worker, name="worker")


async def _tree(ctx: sw.Context) -> dict[str, Any]:
    out = await ctx.supervise([
        sw.ChildSpec(worker, ("a", 0, 0.5), id="a", restart="transient"),
        sw.ChildSpec(worker, ("b", 2, 0.0), id="b", restart="transient"),
        sw.ChildSpec(worker, ("c", 0, 0.5), id="c", restart="transient"),
    ], strategy="one_for_all", max_restarts=5, within=3600)
    return {k: [str(v.status), v.result] for k, v in out.items()}


tree = sw.Workflow(_tree, name="tree")

# -- sagas ---------------------------------------------------------------------------


def _undo(ref: str) -> None:
    """A compensation: its own effect, under its own step's key."""
    effect(f"undo_{ref}")


undo = sw.Tool(_undo, name="undo",
               policy=sw.Policy(retry=sw.Retry(max_attempts=3, initial=0.01, max_backoff=0.05)))


def _book(label: str) -> str:
    effect(label)
    if label == "d":
        raise ValueError("d cannot be booked")
    return label


async def _trip(ctx: sw.Context) -> list[str]:
    """Books a, b and c, then fails on d: c, b and a are undone, in that order."""
    async with ctx.saga() as saga:
        return [await saga.step(_book, x, name=f"book:{x}", compensate=undo)
                for x in "abcd"]


async def _trip_wait(ctx: sw.Context) -> list[str]:
    """Books a and b, then waits for a signal (parked) inside the saga."""
    async with ctx.saga() as saga:
        done = [await saga.step(_book, x, name=f"book:{x}", compensate=undo) for x in "ab"]
        await ctx.wait_for_signal("go")
        return done


trip = sw.Workflow(_trip, name="trip")
trip_wait = sw.Workflow(_trip_wait, name="trip_wait")

async def _refund(ctx: sw.Context) -> dict[str, Any]:
    await ctx.step(effect, "prepare", name="prepare")
    decision = await ctx.approval("refund", {"order": "A-17", "amount": 30})
    await ctx.step(effect, "pay" if decision.approved else "void",
                   name="pay" if decision.approved else "void")
    return {"approved": decision.approved, "by": decision.by}


refund = sw.Workflow(_refund, name="refund")

# -- blackboard waits ------------------------------------------------------------------


async def _board_wait(ctx: sw.Context) -> dict[str, Any]:
    """Takes the first ``go:*`` entry of the board ``crash``, waiting for it (an hour's
    poll: only a post's wake-up makes it return within the test)."""
    e = await sw.Blackboard("crash").wait(ctx, "go:*", take=True, poll=3600, max_poll=3600)
    return {"key": e.key, "value": e.value}


board_wait = sw.Workflow(_board_wait, name="board_wait")

WORKFLOWS: dict[str, sw.Workflow[Any, Any]] = {"tree": tree, "trip": trip,
                                               "trip_wait": trip_wait, "refund": refund,
                                               "board_wait": board_wait}
CHILDREN: list[sw.Workflow[Any, Any]] = [worker]


def make_runtime(store: str) -> sw.Runtime:
    park_after = float(os.environ.get("PATTERNS_PARK_AFTER", "5.0"))
    app = sw.Runtime(store, poll_interval=0.1, park_after=park_after, lease_seconds=30.0)
    for wf in (*WORKFLOWS.values(), *CHILDREN):
        app.register(wf)
    return app


async def main(store: str, workflow: str, run_id: str) -> Any:
    app = make_runtime(store)
    try:
        handle = await app.start(WORKFLOWS[workflow], run_id=run_id)
        try:
            return await handle.result(timeout=120)
        except sw.RunFailedError as exc:
            return {"error": exc.error_type, "message": str(exc)}
        except sw.RunCancelledError:
            return {"cancelled": True}
    finally:
        await app.close()


if __name__ == "__main__":
    store_arg, ledger_arg, wf_name, rid = sys.argv[1:5]
    LEDGER = Path(ledger_arg)
    print(json.dumps(asyncio.run(main(store_arg, wf_name, rid))), flush=True)
