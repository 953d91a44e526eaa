"""``stalwart signal``, ``cancel`` and ``resume``, including after a real SIGKILL."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import Cli, Project


def _show(cli: Cli, project: Project, run_id: str) -> dict[str, object]:
    result = cli("runs", "show", run_id, "--json", "--store", project.store)
    assert result.exit_code == 0, result.output
    data: dict[str, object] = json.loads(result.stdout)
    return data


def _enqueue(cli: Cli, project: Project, wf: str, data: str | None, run_id: str) -> None:
    result = cli("run", project.wf(wf), *(("-i", data) if data is not None else ()),
                 "--run-id", run_id, "--no-wait", "--store", project.store)
    assert result.exit_code == 0, result.output


def test_a_signal_is_kept_until_the_workflow_waits_for_it(cli: Cli, project: Project) -> None:
    """A signal sent to a pending run is delivered once resume executes it."""
    _enqueue(cli, project, "approval", '"order-7"', "a1")
    sent = cli("signal", "a1", "approve", "--payload", '{"by": "ann"}', "--store", project.store)
    assert sent.exit_code == 0, sent.output
    assert "signal 'approve' sent to run a1" in sent.stdout
    resumed = cli("resume", "a1", "--store", project.store)
    assert resumed.exit_code == 0, resumed.output
    assert "resumed 1 run(s)" in resumed.stdout
    data = _show(cli, project, "a1")
    assert (data["status"], data["result"]) == ("completed", "order-7: ann")
    assert [s["outcome"] for s in data["steps"]] == ["received"]  # type: ignore[attr-defined]


def test_a_signal_to_an_ended_run_is_an_error(cli: Cli, project: Project) -> None:
    """An ended run takes no signals: one line, exit 1."""
    assert cli("run", project.wf("adder"), "-i", "[1, 1]", "--run-id", "done",
               "--store", project.store).exit_code == 0
    cli.one_line_error(cli("signal", "done", "approve", "--store", project.store), 1)


def test_cancel_stops_a_pending_run_and_is_idempotent(cli: Cli, project: Project) -> None:
    """Cancelling twice succeeds; the run ends cancelled and never runs."""
    _enqueue(cli, project, "adder", "[1, 2]", "c1")
    first = cli("cancel", "c1", "--store", project.store)
    assert first.exit_code == 0 and "run c1 cancelled" in first.stdout
    again = cli("cancel", "c1", "--store", project.store)
    assert again.exit_code == 0 and "already cancelled" in again.stdout
    assert _show(cli, project, "c1")["status"] == "cancelled"
    assert "nothing to resume" in cli("resume", "--store", project.store).stdout


def test_cancelling_a_completed_run_is_an_error(cli: Cli, project: Project) -> None:
    """A completed run cannot be cancelled: one line, exit 1."""
    assert cli("run", project.wf("adder"), "-i", "[1, 1]", "--run-id", "fin",
               "--store", project.store).exit_code == 0
    line = cli.one_line_error(cli("cancel", "fin", "--store", project.store), 1)
    assert "already ended (completed)" in line


def test_resume_without_a_run_id_executes_every_ready_run(cli: Cli, project: Project) -> None:
    """Pending runs of importable workflows are claimed and finished."""
    _enqueue(cli, project, "adder", "[1, 2]", "q1")
    _enqueue(cli, project, "fanout", "2", "q2")
    result = cli("resume", "--store", project.store)
    assert result.exit_code == 0, result.output
    assert "resumed 2 run(s)" in result.stdout
    assert (_show(cli, project, "q1")["result"], _show(cli, project, "q2")["result"]) == (
        3, [0, 2])


def test_resume_exits_1_when_a_run_it_resumed_failed(cli: Cli, project: Project) -> None:
    """The table of what was resumed, then one error line and exit 1, as `run` does."""
    _enqueue(cli, project, "adder", "[1, 2]", "fine")
    _enqueue(cli, project, "boom", None, "bad")
    result = cli("resume", "--store", project.store)
    assert result.exit_code == 1, result.output
    assert "resumed 2 run(s)" in result.stdout
    # Before it, the resumed runs' progress (one line per step, prefixed by the run id).
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == "error: run bad failed: builtins.ValueError: kaboom"
    assert {"run fine resumed", "run bad resumed"} <= set(lines)
    assert [line for line in lines if line.startswith("error")] == [lines[-1]]
    again = cli("resume", "bad", "--store", project.store)
    assert again.exit_code == 0  # nothing was resumed this time: it had already ended
    assert "already ended (failed)" in again.stdout


def test_resume_imports_workflows_named_with_import_when_the_reference_is_gone(
        cli: Cli, project: Project) -> None:
    """A run whose module vanished is an error until --import names where it lives now."""
    _enqueue(cli, project, "adder", "[2, 2]", "moved")
    moved = f"{project.module}_moved"
    (project.dir / f"{moved}.py").write_text((project.dir / f"{project.module}.py").read_text())
    (project.dir / f"{project.module}.py").unlink()
    sys.modules.pop(project.module, None)
    line = cli.one_line_error(cli("resume", "moved", "--store", project.store), 2)
    assert "--import" in line
    result = cli("resume", "moved", "--import", moved, "--store", project.store)
    assert result.exit_code == 0, result.output
    sys.modules.pop(moved, None)
    assert _show(cli, project, "moved")["result"] == 4


def test_resume_finishes_a_run_whose_process_was_killed(cli: Cli, project: Project) -> None:
    """SIGKILL `stalwart run` mid-step; resume replays step 1 and finishes step 2."""
    marker = project.dir / "marker"
    proc = subprocess.Popen(
        [cli.exe(), "run", project.wf("crashy"), "-i", json.dumps({"marker": str(marker)}),
         "--run-id", "k1", "--store", project.store],
        cwd=project.dir, env=cli.env(CLI_TEST_HANG="1"), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the child never reached the blocking step"
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.communicate()
    assert _show(cli, project, "k1")["status"] == "running"
    result = cli("resume", "--store", project.store)
    assert result.exit_code == 0, result.output
    assert "k1" in result.stdout and "completed" in result.stdout
    data = _show(cli, project, "k1")
    assert (data["status"], data["result"]) == ("completed", "3:done")
    executions = data["executions"]
    assert [(e["pid"], e["ended"]) for e in executions] == [  # type: ignore[attr-defined]
        (proc.pid, "interrupted"), (executions[1]["pid"], "completed")]  # type: ignore[index]
    assert data["crashes"] == 1
    assert [(s["step_id"], s["execution"]) for s in data["steps"]] == [  # type: ignore[attr-defined]
        ("1", 1), ("2", 2)]
    assert "interrupted -> taken over by #2" in cli("runs", "show", "k1", "--store",
                                                    project.store).stdout
