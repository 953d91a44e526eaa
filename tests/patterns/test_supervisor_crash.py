"""A supervisor's process SIGKILLed mid-flight, on SQLite and PostgreSQL: resumed by a
new process, it finishes with the crash-free result; no child run is started twice, no
effect is applied twice, and its restart counts survive."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from typing import Any

import pytest

import stalwart as sw
from stalwart.store import EventKind

pytestmark = pytest.mark.slow

EXPECTED = {"a": ["completed", "a#3"], "b": ["completed", "b#3"], "c": ["completed", "c#3"]}


async def journal_facts(store: str, run_id: str) -> tuple[list[int], int]:
    """(restart counts of the supervisor's restart records, its child runs)."""
    app = sw.Runtime(store, worker=False)
    try:
        events = await app.events(run_id)
        kids = await app.store.list_runs(parent_run_id=run_id, limit=1000)
    finally:
        await app.close()
    counts = [json.loads(e.payload or "{}")["restarts_in_window"] for e in events
              if e.kind == EventKind.STEP_COMPLETED and e.name == "supervisor:restart"]
    return counts, len(kids)


async def unrecorded(store: str, keys: list[str]) -> set[str]:
    """The effects (idempotency keys ``run:step``) whose step has no outcome journaled:
    in flight when the process died."""
    app = sw.Runtime(store, worker=False)
    out = set()
    try:
        for key in keys:
            run_id, _, step_id = key.rpartition(":")
            outcomes = [e for e in await app.events(run_id) if e.step_id == step_id
                        and e.kind in (EventKind.STEP_COMPLETED, EventKind.STEP_FAILED)]
            if not outcomes:
                out.add(key)
    finally:
        await app.close()
    return out


def check_ledgers(child: Any, *, twice: set[str]) -> None:
    applied = child.dedup_rows()
    assert Counter(label for label, _ in applied) == {"a": 3, "b": 3, "c": 3}
    executed = Counter(key for _, key in child.raw_lines())
    assert {k for k, n in executed.items() if n > 1} == twice
    assert all(n <= 2 for n in executed.values())
    assert set(executed) == {key for _, key in applied}


@pytest.mark.parametrize("crash_at", ["b:1:after", "b:2:before", "a:2:after", "c:3:before"])
def test_supervisor_killed_at_a_point_resumes_without_repeating(
        child: Any, crash_at: str) -> None:
    """Killed while the failing child's effect is applied but not journaled, while a
    restarted child starts, or while a sibling restarted by one_for_all runs: the next
    process finishes the tree. Exactly the effects in flight at the kill (applied, their
    step's outcome not journaled) ran again, the armed one among them for an "after"
    kill; the deduplicating ledger applied each once."""
    code, _, err = child.run("tree", "t1", crash_at=crash_at)
    assert code == -9, err
    in_flight = asyncio.run(unrecorded(child.store, [k for _, k in child.raw_lines()]))
    label, n, phase = crash_at.split(":")
    if phase == "after":
        keys = [key for lab, key in child.raw_lines() if lab == label]
        assert keys[int(n) - 1] in in_flight
    code, out, err = child.run("tree", "t1")
    assert code == 0, err
    assert json.loads(out) == EXPECTED
    check_ledgers(child, twice=in_flight)
    assert asyncio.run(journal_facts(child.store, "t1")) == ([1, 2], 9)


@pytest.mark.parametrize("late", ["a", "c"])
def test_a_sibling_late_to_its_effect_still_does_it_every_round(child: Any, late: str) -> None:
    """A sibling that reaches its effect after the failing child ended (a loaded machine,
    a resume where the failing child's effect replays at once): the failing child waits
    for its siblings' effects of the round, so the answer does not depend on scheduling."""
    code, out, err = child.run("tree", "t3", extra_env={"PATTERNS_LATE": late})
    assert code == 0, err
    assert json.loads(out) == EXPECTED
    check_ledgers(child, twice=set())


def test_supervisor_killed_at_random_times_finishes_exactly_once(child: Any) -> None:
    """SIGKILLed three times at random moments (a random delay after the ledger shows a
    chosen number of effects), then left to finish: the same tree, two restarts counted
    1 and 2, nine child runs, every effect applied once."""
    rng = random.Random(16)
    for threshold in sorted(rng.sample(range(1, 9), 3)):
        proc = child.spawn("tree", "t2")
        deadline = time.monotonic() + 60
        while len(child.raw_lines()) < threshold and proc.poll() is None:
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))
        assert proc.poll() is None, proc.communicate()
        child.kill(proc)
    code, out, err = child.run("tree", "t2")
    assert code == 0, err
    assert json.loads(out) == EXPECTED
    applied = child.dedup_rows()
    assert Counter(label for label, _ in applied) == {"a": 3, "b": 3, "c": 3}
    assert asyncio.run(journal_facts(child.store, "t2")) == ([1, 2], 9)
