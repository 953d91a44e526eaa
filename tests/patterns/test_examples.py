"""The runnable examples of the coordination patterns run offline, as documented."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "STALWART_STORE"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / name)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_supervisor_example(tmp_path: Path) -> None:
    """examples/supervisor.py: the flaky researcher is restarted twice, all three report."""
    out = run_example("supervisor.py", tmp_path)
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["history", "risks", "tooling"]
    assert lines[3].startswith("restart 1 of risks: failed: builtins.ConnectionError")
    assert lines[4].startswith("restart 2 of risks: failed: builtins.ConnectionError")
    assert lines[5].startswith("inspect it: stalwart runs show ")
    assert (tmp_path / ".stalwart" / "stalwart.db").exists()


def test_saga_booking_example(tmp_path: Path) -> None:
    """examples/saga_booking.py: Lisbon rolls back in reverse, Oslo books past the pivot."""
    lines = run_example("saga_booking.py", tmp_path).splitlines()
    assert lines == [
        "Lisbon: rolled back (no cars left in Lisbon); still booked: nothing",
        "  steps: book flight, book hotel, tool:cancel, tool:cancel",
        "Oslo: booked flight-oslo, hotel-oslo, car-oslo",
        "  steps: book flight, book hotel, book car, charge, confirm",
    ]


def test_graph_example(tmp_path: Path) -> None:
    """examples/graph_agent.py: the two research nodes join, two drafts, each node step
    journals only its delta."""
    out = run_example("graph_agent.py", tmp_path)
    assert out.startswith("flowchart TD\n")
    assert "notes: ['web: three recent posts on durable agents', 'papers: a 2024 survey" in out
    assert "drafts: 2, verdict: good" in out
    assert "step 1/0/1 node:web: journaled ['notes']" in out
    assert "step 7 node:critique: journaled ['verdict']" in out


def test_handoff_example(tmp_path: Path) -> None:
    """examples/handoff_support.py: the leaking handoff is refused with its reasons, the
    corrected one transfers the contract only, redacted."""
    lines = run_example("handoff_support.py", tmp_path).splitlines()
    assert lines[0] == (
        "refused transfer_to_billing: the handoff transfer_to_billing does not satisfy its "
        "contract: field 'card_number' is local to triage and must not be handed off; "
        "field 'issue': Field required. Fix the arguments and call it again.")
    assert lines[1] == "chain: triage -> billing"
    assert lines[2] == (
        'billing received: {"customer_id": "c-42", "issue": "charged twice for order 1009", '
        '"summary": "Customer ([email]) says the second charge came a day later."}')
    assert lines[3].startswith("answer from billing: [sim:billing]")


def test_ensembles_example(tmp_path: Path) -> None:
    """examples/ensembles.py: the vote outvotes the broken annotator, the mixture's
    second layer converges, the critic asks for a source once, the solver learns."""
    lines = run_example("ensembles.py", tmp_path).splitlines()
    assert lines[0] == "vote: ham (3 of 5; dissent: annotator2, annotator4)"
    assert lines[1] == ("mixture: Demand grows ~40% a year as inference gets cheaper; "
                        "margins shrink. (divergence 1.00 -> 0.39, 7 calls)")
    assert lines[2] == ("refine: GPUs are scarce (source: TSMC Q3 report). (round 2; "
                        "asked: cite a source)")
    assert lines[3] == "reflexion: 17 (trial 2; memory: trial 1: 8+9 is not 15: carry the one)"
    assert lines[4].startswith("inspect it: stalwart runs show ")


def test_blackboard_example(tmp_path: Path) -> None:
    """examples/blackboard.py: the made-up fact is refuted, the others verified, and the
    summary built on everything is flagged with its chain; `stalwart board facts`
    shows it."""
    lines = run_example("blackboard.py", tmp_path).splitlines()
    assert lines == [
        "fact:h100:launch: refuted by fact_checker (the atlas says nothing)",
        "fact:h100:memory: verified by fact_checker",
        "fact:h100:process: verified by fact_checker",
        "poisoned: summary:careless via summary:careless -> fact:h100:launch",
        "inspect it: stalwart board facts",
    ]
    env = {k: v for k, v in os.environ.items() if k != "STALWART_STORE"}
    shown = subprocess.run([sys.executable, "-m", "stalwart.cli", "board", "facts",
                            "--plain"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    rows = {r.split("\t")[0]: r.split("\t") for r in shown.stdout.splitlines()[1:]}
    assert rows["summary:careless"][7] == "summary:careless -> fact:h100:launch"
    assert rows["summary:careful"][7] == "-"


def test_approval_example(tmp_path: Path) -> None:
    """examples/approval_refund.py: approved with the token shown, the other run's token
    refused, denied, and the decision in the journal."""
    lines = run_example("approval_refund.py", tmp_path).splitlines()
    assert lines[0].startswith('waiting: refund {"order": "A-17", "amount": 40.0} token ')
    assert lines[1].startswith("refunded 40.00 on A-17 (key ")
    assert lines[2:] == ["refused: ApprovalConflictError",
                         "B-99: not refunded (ana: amount too high)",
                         "audit: approved=True by=ana comment='receipt checked'"]


def test_actor_counter_example(tmp_path: Path) -> None:
    """examples/actor_counter.py: per-page counts, a repeated message id counted once, a
    workflow's ask, a reminder; a second run goes on from the committed state."""
    first = run_example("actor_counter.py", tmp_path).splitlines()
    assert first == [
        "home: 3 new views (asked by a workflow)",
        "docs: 1 new view (sent twice, counted once)",
        "home visitors: ada, alan, edsger",
        "home reminder fired at count 3",
        "inspect it: stalwart runs show actor:page_views:home",
    ]
    second = run_example("actor_counter.py", tmp_path).splitlines()
    assert second[:3] == first[:3]


def test_long_conversation_example(tmp_path: Path) -> None:
    """examples/long_conversation.py: reject refuses with the numbers, evict reads every
    ticket and journals the stubs (the early fact goes), summarize keeps the fact, page
    moves it to memory and the agent recalls it."""
    lines = run_example("long_conversation.py", tmp_path).splitlines()
    assert lines[0].startswith("reject: refused: ") and "needs" in lines[0]
    assert lines[1].startswith("  window: 1 actions ['reject']")
    assert lines[2] == ("evict: Read 30 tickets; the urgent double charge (invoice 4471): "
                        "no longer in view.")
    assert lines[3].startswith("  window: ") and "['stub']" in lines[3]
    assert lines[4] == "summarize: Read 30 tickets; the urgent double charge (invoice 4471): seen."
    assert "['summarize']" in lines[5]
    assert lines[6] == ("page: Read 30 tickets; the urgent double charge (invoice 4471): seen "
                        "(recalled from memory).")
    assert "['page']" in lines[7]


def test_fan_in_example(tmp_path: Path) -> None:
    """examples/fan_in.py: budget shares 2:1:1; under evict the oldest finding goes and
    the journal names it; under reject the call is refused with the numbers."""
    lines = run_example("fan_in.py", tmp_path).splitlines()
    assert lines[0] == "evict: Report from 2 of 3 findings: risks, tech."
    assert lines[1] == "  budget shares (tokens): [10000, 5000, 5000]"
    assert lines[2].startswith("  window: evict ['[market]'] (")
    assert lines[3].startswith("reject: refused before the call: ContextOverflowError")
    assert lines[5].startswith("  window: reject [] (")


def test_scheduled_report_example(tmp_path: Path) -> None:
    """examples/scheduled_report.py: two workers on one journal, each tick runs once."""
    lines = run_example("scheduled_report.py", tmp_path).splitlines()
    assert lines == [f"schedule:report:2026-01-01T07:{m}:00+00:00"
                     for m in ("00", "15", "30", "45")] + ["4 runs for 4 ticks"]
