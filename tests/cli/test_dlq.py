"""``stalwart dlq list|show|retry``: the dead-letter queue from the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import Cli, Project


def _dead_letter(cli: Cli, project: Project, run_id: str = "f1") -> Path:
    """Run ``fragile`` while its service is down: it exhausts 3 attempts, dead-lettered."""
    marker = project.dir / f"{run_id}.up"
    result = cli("run", project.wf("fragile"), "-i",
                 json.dumps({"query": "gpus", "marker": str(marker)}), "--run-id", run_id,
                 "--store", project.store)
    assert result.exit_code == 1, result.output
    assert f"run {run_id} dead_lettered" in result.stderr
    return marker


def _json(cli: Cli, *args: str) -> Any:
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_list_shows_only_dead_lettered_runs(cli: Cli, project: Project) -> None:
    """A dead-lettered run is listed with its step and attempts; a completed one is not."""
    assert cli("run", project.wf("adder"), "-i", "[1, 2]", "--run-id", "ok",
               "--store", project.store).exit_code == 0
    _dead_letter(cli, project)
    rows = _json(cli, "dlq", "list", "--json", "--store", project.store)
    assert [r["run_id"] for r in rows] == ["f1"]
    row = rows[0]
    assert (row["workflow"], row["step_id"], row["step_name"], row["attempts"]) == (
        "fragile", "2", "tool:lookup", 3)
    assert row["error"]["type"].endswith("RetryExhaustedError")
    text = cli("dlq", "list", "--store", project.store)
    assert text.exit_code == 0, text.output
    assert "f1" in text.stdout and "tool:lookup" in text.stdout
    assert "RetryExhaustedError" in text.stdout


def test_list_says_so_when_the_queue_is_empty(cli: Cli, project: Project) -> None:
    """No dead-lettered runs: a plain sentence and an empty JSON list."""
    assert cli("run", project.wf("adder"), "-i", "[1, 2]", "--store",
               project.store).exit_code == 0
    assert "no dead-lettered runs" in cli("dlq", "list", "--store", project.store).stdout
    assert _json(cli, "dlq", "list", "--json", "--store", project.store) == []


def test_show_gives_the_full_error_chain(cli: Cli, project: Project) -> None:
    """The final error, then attempts 1..3 with their errors, times and next actions."""
    _dead_letter(cli, project)
    data = _json(cli, "dlq", "show", "f1", "--json", "--store", project.store)
    assert data["status"] == "dead_lettered"
    assert "gave up after 3 attempt(s)" in data["error"]["message"]
    assert "Traceback" in data["error"]["traceback"]
    attempts = data["failed_attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert {a["key"] for a in attempts} == {"tool:lookup"}
    assert [a["next"] for a in attempts] == ["retry", "retry", "fail"]
    assert all(a["error"]["type"] == "builtins.TimeoutError" for a in attempts)
    assert [a["error"]["message"] for a in attempts] == [
        f"lookup service down (attempt {n})" for n in (1, 2, 3)]
    assert attempts[0]["retry_at"] >= attempts[0]["at"]
    assert attempts[2]["retry_at"] is None

    text = cli("dlq", "show", "f1", "--store", project.store)
    assert text.exit_code == 0, text.output
    out = text.stdout
    assert "RetryExhaustedError" in out and "failed attempts" in out
    assert out.count("TimeoutError") >= 3
    assert "retry at" in out and "give up" in out
    assert f"stalwart dlq retry f1 --store {project.store}" in out


def test_retry_redrives_the_run_to_completion(cli: Cli, project: Project) -> None:
    """Once the service is back, retry imports the workflow by its reference, runs the
    failed step afresh, replays the rest, and prints the result."""
    marker = _dead_letter(cli, project)
    marker.write_text("up")
    result = cli("dlq", "retry", "f1", "--store", project.store)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == "3:found gpus"
    assert "redriven and completed" in result.stderr
    shown = _json(cli, "runs", "show", "f1", "--json", "--store", project.store)
    assert shown["status"] == "completed"
    assert _json(cli, "dlq", "list", "--json", "--store", project.store) == []
    events = _json(cli, "runs", "events", "f1", "--json", "--store", project.store)
    kinds = [e["kind"] for e in events]
    assert kinds.count("run_redriven") == 1
    assert kinds.count("step_completed") == 2  # add once (replayed), lookup once


def test_retry_that_fails_again_dead_letters_again_with_a_second_round(
        cli: Cli, project: Project) -> None:
    """Still down: exit 1 with one line; show now lists both rounds of attempts."""
    _dead_letter(cli, project)
    line = cli.one_line_error(cli("dlq", "retry", "f1", "--store", project.store), 1)
    assert "was redriven and ended dead_lettered" in line and "dlq show f1" in line
    data = _json(cli, "dlq", "show", "f1", "--json", "--store", project.store)
    assert data["redrives"] == 1
    assert [(a["round"], a["attempt"]) for a in data["failed_attempts"]] == [
        (1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    assert "round" in cli("dlq", "show", "f1", "--store", project.store).stdout


def test_retry_no_wait_only_requeues_and_resume_finishes(cli: Cli, project: Project) -> None:
    """--no-wait prints the run id and leaves the run pending for a worker."""
    marker = _dead_letter(cli, project)
    result = cli("dlq", "retry", "f1", "--no-wait", "--store", project.store)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "f1"
    assert "stalwart resume f1" in result.stderr
    assert _json(cli, "runs", "show", "f1", "--json", "--store", project.store)[
        "status"] == "pending"
    marker.write_text("up")
    assert cli("resume", "f1", "--store", project.store).exit_code == 0
    assert _json(cli, "runs", "show", "f1", "--json", "--store", project.store)[
        "result"] == "3:found gpus"


def test_retry_with_import_when_the_reference_cannot_be_imported(
        cli: Cli, project: Project) -> None:
    """A run whose module moved is retried with --import naming where it lives now."""
    marker = _dead_letter(cli, project)
    moved = f"{project.module}_moved"
    (project.dir / f"{moved}.py").write_text((project.dir / f"{project.module}.py").read_text())
    (project.dir / f"{project.module}.py").unlink()
    sys.modules.pop(project.module, None)
    line = cli.one_line_error(cli("dlq", "retry", "f1", "--store", project.store), 2)
    assert "pass --import MODULE" in line
    marker.write_text("up")
    result = cli("dlq", "retry", "f1", "--import", moved, "--store", project.store)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == "3:found gpus"
    sys.modules.pop(moved, None)


@pytest.mark.parametrize("command", ["show", "retry"])
def test_a_run_that_is_not_dead_lettered_is_refused(cli: Cli, project: Project,
                                                    command: str) -> None:
    """A completed run is not in the queue: one line naming its status, exit 2, unchanged."""
    assert cli("run", project.wf("adder"), "-i", "[1, 2]", "--run-id", "fine",
               "--store", project.store).exit_code == 0
    line = cli.one_line_error(cli("dlq", command, "fine", "--store", project.store), 2)
    assert "run fine is completed, not dead-lettered" in line
    assert _json(cli, "runs", "show", "fine", "--json", "--store", project.store)[
        "status"] == "completed"


@pytest.mark.parametrize("command", ["show", "retry"])
def test_an_unknown_run_is_an_error(cli: Cli, project: Project, command: str) -> None:
    """A run id that is not in the journal: one line, exit 2."""
    _dead_letter(cli, project)
    line = cli.one_line_error(cli("dlq", command, "nope", "--store", project.store), 2)
    assert "no run 'nope'" in line


def test_a_missing_journal_is_an_error(cli: Cli, project: Project) -> None:
    """dlq list against a journal that does not exist: one line, exit 2, nothing created."""
    line = cli.one_line_error(cli("dlq", "list", "--store", project.store), 2)
    assert "no stalwart journal" in line
    assert not Path(project.store).exists()
