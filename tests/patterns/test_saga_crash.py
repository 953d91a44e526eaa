"""Sagas whose process is SIGKILLed mid-flight, on SQLite and PostgreSQL: a new process
resumes compensating; no compensation runs twice (only one in flight at the kill runs
again, under the same idempotency key), and they run in reverse order."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import pytest

import stalwart as sw
from stalwart.store import EventKind, RunStatus

pytestmark = pytest.mark.slow


async def unrecorded(store: str, keys: list[str]) -> set[str]:
    """The effects whose step has no outcome journaled: in flight at the kill."""
    app = sw.Runtime(store, worker=False)
    out = set()
    try:
        for key in keys:
            run_id, _, step_id = key.rpartition(":")
            if not [e for e in await app.events(run_id) if e.step_id == step_id
                    and e.kind in (EventKind.STEP_COMPLETED, EventKind.STEP_FAILED)]:
                out.add(key)
    finally:
        await app.close()
    return out


def check(child: Any, *, labels: list[str], in_flight: set[str]) -> None:
    applied = child.dedup_rows()
    assert [label for label, _ in applied] == labels  # each once, in this order
    executed = Counter(key for _, key in child.raw_lines())
    assert {k for k, n in executed.items() if n > 1} == in_flight
    assert max(executed.values()) <= 2


@pytest.mark.parametrize("crash_at", ["c:1:after", "undo_c:1:after", "undo_b:1:before",
                                      "undo_a:1:after"])
def test_a_saga_killed_mid_compensation_resumes_compensating(
        child: Any, crash_at: str) -> None:
    """Killed while a forward step's effect is applied but not journaled, or in the
    middle of the compensations: the next process finishes undoing c, b and a (in that
    order), and the run fails with d's error. Only the effects in flight at the kill ran
    twice."""
    code, _, err = child.run("trip", "s1", crash_at=crash_at)
    assert code == -9, err
    in_flight = asyncio.run(unrecorded(child.store, [k for _, k in child.raw_lines()]))
    label, _, phase = crash_at.split(":")
    if phase == "after":
        assert next(k for lab, k in child.raw_lines() if lab == label) in in_flight
    code, out, err = child.run("trip", "s1")
    assert code == 0, err
    assert json.loads(out)["error"] == "builtins.ValueError"
    check(child, labels=["a", "b", "c", "d", "undo_c", "undo_b", "undo_a"],
          in_flight=in_flight)


async def _status(store: str, run_id: str) -> RunStatus | None:
    app = sw.Runtime(store, worker=False)
    try:
        await app.open()
        rec = await app.store.get_run(run_id)
        return rec.status if rec is not None else None
    except sw.NotAStalwartStoreError:  # the child has not created the journal yet
        return None
    finally:
        await app.close()


async def _cancel(store: str, run_id: str) -> RunStatus:
    app = sw.Runtime(store, worker=False)
    try:
        return (await app.cancel(run_id)).status
    finally:
        await app.close()


def test_a_parked_saga_cancelled_from_another_process_compensates_across_a_crash(
        child: Any) -> None:
    """A saga parked on a signal is cancelled by another process: the store wakes it
    (pending) rather than ending it; the worker that takes it is killed in the middle of
    the compensations; the next one finishes them and the run ends cancelled."""
    park = {"PATTERNS_PARK_AFTER": "0.1"}
    proc = child.spawn("trip_wait", "w1", extra_env=park)
    deadline = time.monotonic() + 60
    while asyncio.run(_status(child.store, "w1")) != RunStatus.WAITING:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    child.kill(proc)
    assert asyncio.run(_cancel(child.store, "w1")) == RunStatus.PENDING
    code, _, err = child.run("trip_wait", "w1", crash_at="undo_b:1:after", extra_env=park)
    assert code == -9, err
    code, out, err = child.run("trip_wait", "w1", extra_env=park)
    assert code == 0, err
    assert json.loads(out) == {"cancelled": True}
    undo_b = [k for lab, k in child.raw_lines() if lab == "undo_b"]
    check(child, labels=["a", "b", "undo_b", "undo_a"], in_flight={undo_b[0]})
