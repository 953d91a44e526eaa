"""``stalwart runs list|show|events``: the run table and journal, as tables and JSON."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import Cli, Project


def _start(cli: Cli, project: Project, wf: str, data: str, run_id: str) -> None:
    result = cli("run", project.wf(wf), "-i", data, "--run-id", run_id, "--store", project.store)
    assert result.exit_code in (0, 1), result.output


def test_list_shows_runs_newest_first_and_filters_by_status(
        cli: Cli, project: Project) -> None:
    """runs list prints every run; --status and --limit narrow it; --json is parseable."""
    _start(cli, project, "adder", "[1, 2]", "ok-1")
    _start(cli, project, "boom", "{}", "bad-1")
    _start(cli, project, "adder", "[3, 4]", "ok-2")
    table = cli("runs", "list", "--store", project.store)
    assert table.exit_code == 0
    assert all(rid in table.stdout for rid in ("ok-1", "bad-1", "ok-2"))
    assert "kaboom" in table.stdout
    listed = json.loads(cli("runs", "list", "--json", "--store", project.store).stdout)
    assert [r["run_id"] for r in listed] == ["ok-2", "bad-1", "ok-1"]
    failed = json.loads(cli("runs", "list", "--status", "failed", "--json",
                            "--store", project.store).stdout)
    assert [(r["run_id"], r["error"]["type"]) for r in failed] == [
        ("bad-1", "builtins.ValueError")]
    one = json.loads(cli("runs", "list", "--limit", "1", "--json", "--store",
                         project.store).stdout)
    assert [r["run_id"] for r in one] == ["ok-2"]


def test_show_lists_each_step_with_outcome_duration_and_execution(
        cli: Cli, project: Project) -> None:
    """runs show --json has the gather's branch steps, each recorded by execution #1."""
    _start(cli, project, "fanout", "3", "f1")
    data = json.loads(cli("runs", "show", "f1", "--json", "--store", project.store).stdout)
    assert data["status"] == "completed"
    assert data["result"] == [0, 2, 4]
    assert data["workflow_ref"] == f"{project.module}:fanout"
    assert [s["step_id"] for s in data["steps"]] == ["1/0/1", "1/1/1", "1/2/1"]
    assert {s["outcome"] for s in data["steps"]} == {"completed"}
    assert all(s["execution"] == 1 and s["duration"] >= 0 for s in data["steps"])
    assert [e["ended"] for e in data["executions"]] == ["completed"]
    assert data["crashes"] == 0


def test_show_renders_a_table_with_steps_result_and_a_hint(
        cli: Cli, project: Project) -> None:
    """The human view names the workflow, each step, the result and the events command."""
    _start(cli, project, "adder", "[20, 22]", "t1")
    out = cli("runs", "show", "t1", "--store", project.store).stdout
    assert "t1" in out and "completed" in out and "adder" in out
    assert "42" in out
    assert f"stalwart runs events t1 --store {project.store}" in out


def test_show_links_a_parent_and_its_child_run(cli: Cli, project: Project) -> None:
    """A child run points at its parent and step; the parent lists the child."""
    _start(cli, project, "parent_wf", "5", "p1")
    parent = json.loads(cli("runs", "show", "p1", "--json", "--store", project.store).stdout)
    assert parent["result"] == 6
    [child] = parent["children"]
    assert (child["run_id"], child["parent_step_id"], child["status"]) == (
        "p1/1", "1", "completed")
    shown = json.loads(cli("runs", "show", "p1/1", "--json", "--store", project.store).stdout)
    assert (shown["parent_run_id"], shown["parent_step_id"]) == ("p1", "1")
    assert [s["kind"] for s in parent["steps"]] == ["child"]


def test_show_of_a_failed_run_names_the_error(cli: Cli, project: Project) -> None:
    """The error's type and message are shown, in the table and in JSON."""
    _start(cli, project, "boom", "{}", "b1")
    out = cli("runs", "show", "b1", "--store", project.store).stdout
    assert "ValueError: kaboom" in out
    data = json.loads(cli("runs", "show", "b1", "--json", "--store", project.store).stdout)
    assert data["error"]["message"] == "kaboom"


def test_events_prints_the_raw_journal_in_order(cli: Cli, project: Project) -> None:
    """runs events --json is the journal: created, claimed, the step, completed (and the
    step's timing, when it took 2 ms or more: a thread hop can, on a loaded machine)."""
    _start(cli, project, "adder", "[1, 2]", "e1")
    events = json.loads(cli("runs", "events", "e1", "--json", "--store", project.store).stdout)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    events = [e for e in events if e["kind"] != "step_timed"]
    assert [e["kind"] for e in events] == [
        "run_created", "run_claimed", "step_completed", "run_completed"]
    assert events[2]["payload"] == "3"
    table = cli("runs", "events", "e1", "--store", project.store)
    assert table.exit_code == 0 and "step_completed" in table.stdout


def test_an_empty_store_lists_no_runs(cli: Cli, project: Project) -> None:
    """An existing journal without runs says so."""
    _start(cli, project, "adder", "[1, 2]", "x")
    assert "no runs with status waiting" in cli("runs", "list", "--status", "waiting",
                                                 "--store", project.store).stdout
