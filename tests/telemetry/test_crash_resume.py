"""A run SIGKILLed mid-way and resumed by a new process continues the same trace, and
the steps the new process replays emit no second span."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from stalwart.telemetry import span_id_for, trace_id_for

CHILD = Path(__file__).with_name("trace_child.py")


def run_child(store: Path, spans: Path, run_id: str,
              kill_at: str = "b1") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, str(CHILD), str(store), str(spans), run_id,
                           kill_at],
                          capture_output=True, text=True, timeout=90, env=env, check=False)


@pytest.mark.slow
def test_sigkill_and_resume_keep_one_trace_without_duplicate_spans(tmp_path: Path) -> None:
    """Process 1 dies in step b1; process 2 replays a1..a3 and the agent silently."""
    store, spans, run_id = tmp_path / "j.db", tmp_path / "spans.jsonl", "crash-trace-1"
    first = run_child(store, spans, run_id)
    assert first.returncode == -signal.SIGKILL, first.stderr
    second = run_child(store, spans, run_id)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == "A1 A2 A3 the moon is bright B1 B2"

    rows = [json.loads(line) for line in spans.read_text().splitlines()]
    pids = sorted({r["pid"] for r in rows}, key=[r["pid"] for r in rows].index)
    assert len(pids) == 2  # both processes exported spans
    by_pid = {pid: sorted(r["name"] for r in rows if r["pid"] == pid) for pid in pids}
    assert by_pid[pids[0]] == sorted([
        "step a1", "step a2", "step a3", "invoke_agent scout", "step chat:scout",
        "chat scout", "step tool:lookup", "execute_tool lookup", "step chat:scout",
        "chat scout"])
    # The resumed process replays a1..a3 and the agent: only b1, b2 and the run are new.
    assert by_pid[pids[1]] == sorted(["step b1", "step b2", "workflow traced"])

    assert {r["trace_id"] for r in rows} == {trace_id_for(run_id)}
    ids = Counter(r["span_id"] for r in rows)
    assert max(ids.values()) == 1  # no span emitted twice
    run_span = span_id_for(run_id, "run")
    (run,) = [r for r in rows if r["name"] == "workflow traced"]
    assert run["span_id"] == run_span and run["parent"] is None
    assert run["attributes"]["stalwart.resumed"] is True
    top = {r["name"] for r in rows if r["parent"] == run_span}
    assert top == {"step a1", "step a2", "step a3", "invoke_agent scout", "step b1",
                   "step b2"}  # spans of both processes hang under the one run span
    known = set(ids)
    assert all(r["parent"] in known for r in rows if r["parent"] is not None)


@pytest.mark.slow
def test_an_agent_resumed_mid_loop_keeps_its_start_and_its_parent(tmp_path: Path) -> None:
    """Process 1 dies inside the agent's tool call; process 2 replays the first model turn
    and finishes the agent. The agent's span (emitted once, by process 2) starts when the
    agent's first model call began in process 1, not when process 2 resumed it."""
    store, spans, run_id = tmp_path / "j.db", tmp_path / "spans.jsonl", "crash-trace-2"
    first = run_child(store, spans, run_id, kill_at="lookup")
    assert first.returncode == -signal.SIGKILL, first.stderr
    second = run_child(store, spans, run_id, kill_at="lookup")
    assert second.returncode == 0, second.stderr

    rows = [json.loads(line) for line in spans.read_text().splitlines()]
    pids = sorted({r["pid"] for r in rows}, key=[r["pid"] for r in rows].index)
    first_pid, second_pid = pids
    assert sorted(r["name"] for r in rows if r["pid"] == first_pid) == sorted([
        "step a1", "step a2", "step a3", "step chat:scout", "chat scout"])
    (agent,) = [r for r in rows if r["name"] == "invoke_agent scout"]
    assert agent["pid"] == second_pid
    first_turn = next(r for r in rows if r["name"] == "step chat:scout")
    assert first_turn["pid"] == first_pid and first_turn["parent"] == agent["span_id"]
    # It starts with its first model call as journaled (the journal has no earlier
    # mark of the agent), inside the first turn's span and before the resume.
    assert first_turn["start"] <= agent["start"] < first_turn["end"]
    resumed = [r for r in rows if r["pid"] == second_pid and r is not agent]
    assert agent["start"] < min(r["start"] for r in resumed if r["name"] != "workflow traced")
    assert agent["end"] >= max(r["end"] for r in rows if r["parent"] == agent["span_id"])
    assert max(Counter(r["span_id"] for r in rows).values()) == 1
