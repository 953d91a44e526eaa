"""Each ensemble SIGKILLed mid-way, on SQLite and PostgreSQL: resumed by a new process
it ends as a crash-free run does, and no model call whose answer was journaled is made
again (counted at the models, in the ledgers)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

APP = Path(__file__).with_name("ensemble_app.py")

CASES = {
    "voting": ({"winner": "42", "dissent": ["v3"]},
               {"model-v1": 1, "model-v2": 1, "model-v3": 1}),
    "moa": (None, {"model-p1": 2, "model-p2": 2, "model-agg": 1}),
    "refining": ({"output": "draft v2", "rounds": 2}, {"model-gen": 2, "model-critic": 2}),
    "reflecting": ({"output": "4", "memory": ["trial 1: 2+2 is 4"]},
                   {"model-actor": 2, "model-judge": 2}),
    "blackboard": ({"done": ["done a", "done c"], "left": [["job:1", "refuted"]]},
                   {"verifier": 3, "model-worker": 2}),
}


@pytest.mark.parametrize(("workflow", "crash_at"), [
    ("voting", "model-v2:1:after"),      # one voter answered, not journaled
    ("moa", "model-p2:2:before"),        # in the second layer
    ("moa", "model-agg:1:after"),        # the aggregator answered, not journaled
    ("refining", "model-critic:2:before"),
    ("reflecting", "model-actor:2:after"),
    ("blackboard", "verifier:2:after"),      # a verdict made, not journaled
    ("blackboard", "model-worker:1:after"),  # a taken job's work done, not journaled
])
def test_an_ensemble_killed_mid_way_resumes_without_repaying(child: Any, workflow: str,
                                                             crash_at: str) -> None:
    """The next process finishes with the same answer; only calls in flight at the kill
    (answered, not yet journaled) were made twice. Gathered members run at once, so a
    sibling's answer may be in flight too; every journaled one is never made again."""
    child.app = APP
    code, _, err = child.run(workflow, "e1", crash_at=crash_at)
    assert code == -9, err
    flying = child.in_flight()
    code, out, err = child.run(workflow, "e1")
    assert code == 0, err
    expected, effects = CASES[workflow]
    if expected is not None:
        assert json.loads(out) == expected
    else:
        assert json.loads(out)["output"] == "synthesis"
    assert Counter(label for label, _ in child.dedup_rows()) == effects
    executed = Counter(key for _, key in child.raw_lines())
    assert {k for k, n in executed.items() if n > 1} == flying
    assert len(flying) >= crash_at.endswith(":after")
    if workflow in ("refining", "reflecting", "blackboard"):  # one member at a time
        assert len(flying) == crash_at.endswith(":after")
