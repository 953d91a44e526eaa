"""A state graph's process SIGKILLed at several points, on SQLite and PostgreSQL:
resumed by a new process, the graph finishes with the crash-free final state, its
state rebuilt from the journaled deltas; only the effect in flight at the kill runs
again, and a deduplicating service applies every effect once."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

GRAPH_APP = Path(__file__).with_name("graph_app.py")
EXPECTED = {
    "messages": [f"thought {i}" for i in range(6)],
    "notes": ["found at 3", "reviewed at 3"],
    "n": 6,
}
EFFECTS = {"think": 6, "search": 1, "review": 1}


@pytest.mark.parametrize("crash_at", [
    "think:2:after",    # a plain node's effect applied, its delta not journaled
    "think:4:before",   # the first node after the join
    "search:1:after",   # one branch of the fan-out
    "review:1:after",   # a context node: its effect step, before its update's step
])
def test_a_graph_killed_at_a_point_resumes_to_the_same_state(child: Any,
                                                            crash_at: str) -> None:
    """Killed inside a node (before or after its effect), in a fan-out branch or in a
    node that takes the context: the next process finishes the graph with the same
    final state. Exactly the effects in flight at the kill (applied, their step not
    journaled: the armed one for an "after" kill, a parallel branch's maybe) ran
    again."""
    child.app = GRAPH_APP
    code, _, err = child.run("notes", "g1", crash_at=crash_at)
    assert code == -9, err
    flying = child.in_flight()
    code, out, err = child.run("notes", "g1")
    assert code == 0, err
    assert json.loads(out) == EXPECTED
    applied = Counter(label for label, _ in child.dedup_rows())
    assert applied == EFFECTS
    executed = Counter(key for _, key in child.raw_lines())
    twice = {key for key, n in executed.items() if n > 1}
    assert twice == flying and all(n <= 2 for n in executed.values())
    label, n, phase = crash_at.split(":")
    if phase == "after":
        keys = [key for lab, key in child.raw_lines() if lab == label]
        assert keys[int(n) - 1] in twice
