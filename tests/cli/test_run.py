"""``stalwart run``: import a workflow, start it with JSON input, print the result."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Cli, Project


def test_run_prints_the_result_on_stdout_and_the_run_id_on_stderr(
        cli: Cli, project: Project) -> None:
    """stdout carries only the JSON result; stderr names the run and how to inspect it."""
    result = cli("run", project.wf("adder"), "--input", '{"a": 2, "b": 3}',
                 "--run-id", "r1", "--store", project.store)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == 5
    assert "run r1 completed" in result.stderr
    assert f"stalwart runs show r1 --store {project.store}" in result.stderr


def test_input_binds_an_array_by_position_and_a_scalar_as_the_one_argument(
        cli: Cli, project: Project) -> None:
    """A JSON array is positional arguments; a bare value is the single argument."""
    arr = cli("run", project.wf("adder"), "--input", "[4, 5]", "--store", project.store)
    one = cli("run", project.wf("fanout"), "-i", "3", "--store", project.store)
    assert (json.loads(arr.stdout), json.loads(one.stdout)) == (9, [0, 2, 4])


def test_starting_an_existing_run_id_returns_that_run_without_running_it_again(
        cli: Cli, project: Project) -> None:
    """The run id is an idempotency key: a second start with the same input reports the
    first result (other input is refused: test_run_ids.py)."""
    first = cli("run", project.wf("adder"), "-i", "[1, 1]", "--run-id", "same",
                "--store", project.store)
    again = cli("run", project.wf("adder"), "-i", '{"a": 1, "b": 1}', "--run-id", "same",
                "--store", project.store)
    assert json.loads(first.stdout) == json.loads(again.stdout) == 2
    assert "already existed" in again.stderr


def test_a_failed_run_exits_1_with_one_line_naming_the_error(
        cli: Cli, project: Project) -> None:
    """The workflow's exception becomes a one-line error and exit status 1."""
    line = cli.one_line_error(cli("run", project.wf("boom"), "--store", project.store), 1)
    assert "ValueError: kaboom" in line
    assert "stalwart runs show" in line


def test_no_wait_only_enqueues_the_run(cli: Cli, project: Project) -> None:
    """--no-wait prints the run id and leaves the run pending for a worker."""
    result = cli("run", project.wf("adder"), "-i", "[1, 2]", "--no-wait",
                 "--store", project.store)
    assert result.exit_code == 0, result.output
    run_id = result.stdout.strip()
    shown = json.loads(cli("runs", "show", run_id, "--json", "--store", project.store).stdout)
    assert shown["status"] == "pending"
    assert f"stalwart resume {run_id}" in result.stderr


def test_the_default_store_comes_from_the_environment(
        cli: Cli, project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --store, $STALWART_STORE names the journal."""
    monkeypatch.setenv("STALWART_STORE", project.store)
    assert cli("run", project.wf("adder"), "-i", "[1, 2]", "--run-id", "env").exit_code == 0
    listed = json.loads(cli("runs", "list", "--json", "--store", project.store).stdout)
    assert [r["run_id"] for r in listed] == ["env"]


def test_the_console_script_runs_a_workflow_in_a_child_process(
        cli: Cli, project: Project) -> None:
    """The installed `stalwart` script imports the module from the working directory."""
    proc = cli.script("run", project.wf("fanout"), "--input", '{"n": 4}', "--run-id", "sub",
                      "--store", "journal.db", cwd=project.dir)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [0, 2, 4, 6]
    assert "run sub completed" in proc.stderr
    assert (project.dir / "journal.db").exists()


def test_run_does_not_register_as_a_worker(cli: Cli, project: Project) -> None:
    """`stalwart run` executes its run without appearing in `stalwart workers list`."""
    assert cli("run", project.wf("adder"), "-i", "[1, 2]", "--store",
               project.store).exit_code == 0
    listed = json.loads(cli("workers", "list", "--json", "--store", project.store).stdout)
    assert listed["workers"] == []
