"""A chain of handoffs SIGKILLed at several points, on SQLite and PostgreSQL: resumed by
a new process it ends as a crash-free run does; no model turn, transform or tool call
whose outcome was journaled runs again."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

HANDOFF_APP = Path(__file__).with_name("handoff_app.py")
EXPECTED = {"output": "done: refunded c-42", "chain": ["triage", "billing"],
            "transfers": [{"customer_id": "c-42", "issue": "[billing] double charge"}]}
EFFECTS = {"model-triage": 1, "transform": 1, "model-billing": 2, "refund": 1}


@pytest.mark.parametrize("crash_at", [
    "model-triage:1:after",   # the sender's turn asked for the handoff, not journaled
    "transform:1:after",      # inside the handoff step
    "model-billing:1:before", # the receiver's first turn
    "refund:1:after",         # the receiver's tool
])
def test_a_handoff_chain_killed_at_a_point_resumes(child: Any, crash_at: str) -> None:
    """The next process finishes with the same answer and transfer; exactly the effect
    in flight at the kill ran twice (none for a "before" kill)."""
    child.app = HANDOFF_APP
    code, _, err = child.run("desk", "h1", crash_at=crash_at)
    assert code == -9, err
    flying = child.in_flight()
    code, out, err = child.run("desk", "h1")
    assert code == 0, err
    assert json.loads(out) == EXPECTED
    assert Counter(label for label, _ in child.dedup_rows()) == EFFECTS
    executed = Counter(key for _, key in child.raw_lines())
    assert {k for k, n in executed.items() if n > 1} == flying
    assert len(flying) == (crash_at.endswith(":after"))
