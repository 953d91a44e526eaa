"""The CLI executes a module's workflows with the runtime the module made them with.

``app = sw.Runtime(store=..., budget=..., models=...)`` then ``@app.workflow``: ``stalwart
run``, ``resume``, ``runs fork``, ``dlq retry`` and ``worker`` spend under that budget,
call those models and (``run`` and ``worker``, unless ``--store`` says otherwise) write
to that journal. A bare ``Runtime(store)`` in their place once ran budgeted workflows
without a budget.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from stalwart import Runtime, Workflow
from stalwart.cli._common import CliError, command_store, executing_runtime
from stalwart.store import RunStatus

if TYPE_CHECKING:
    from conftest import Cli, Project

MODULE = '''
import stalwart as sw
from stalwart.models import SimulatedModel

app = sw.Runtime(
    store="app.db",
    concurrency=2,
    budget=sw.Budget(max_steps=2),
    models={"sim:main": SimulatedModel("main", script=lambda request: "scripted reply")},
)
agent = sw.Agent("helper", "sim:main")


@app.workflow
async def ask(ctx: sw.Context, question: str) -> str:
    return await agent.run(ctx, question)


@app.workflow
async def three_questions(ctx: sw.Context) -> list[str]:  # 3 model turns: max_steps=2
    return [await agent.run(ctx, str(i)) for i in range(3)]
'''


@pytest.fixture
def mod(project: Project) -> Project:
    """The project, with a module whose runtime has a journal, a budget and a model."""
    (project.dir / "configured.py").write_text(MODULE)
    yield project  # type: ignore[misc]
    import sys

    sys.modules.pop("configured", None)


def status_of(store: str, run_id: str) -> RunStatus:
    async def read() -> RunStatus:
        async with Runtime(store, worker=False) as client:
            return (await client.get_run(run_id)).status

    return asyncio.run(read())


def test_run_uses_the_modules_journal_budget_and_models(cli: Cli, mod: Project) -> None:
    ok = cli("run", "configured:ask", "-i", '"hello?"', "--run-id", "a1")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout) == "scripted reply"  # the module's model, not sim's own
    assert "stalwart runs show a1 --store app.db" in ok.stderr  # where the run went
    assert status_of(str(mod.dir / "app.db"), "a1") == RunStatus.COMPLETED
    assert not (mod.dir / ".stalwart").exists()  # nothing in the default journal

    over = cli("run", "configured:three_questions", "--run-id", "b1")
    line = cli.one_line_error(over, 1)
    assert "BudgetExceededError" in line and "max_steps=2" in line, line
    assert "--store app.db" in line


def test_store_overrides_the_modules_journal_but_not_its_budget(
        cli: Cli, mod: Project) -> None:
    over = cli("run", "configured:three_questions", "--run-id", "b2", "--store", mod.store)
    assert "BudgetExceededError" in cli.one_line_error(over, 1)
    assert status_of(mod.store, "b2") == RunStatus.DEAD_LETTERED
    assert not (mod.dir / "app.db").exists()


def test_resume_and_fork_execute_with_the_modules_models(cli: Cli, mod: Project) -> None:
    queued = cli("run", "configured:ask", "-i", '"q"', "--run-id", "c1", "--no-wait")
    assert queued.exit_code == 0, queued.output
    assert "stalwart resume c1 --store app.db" in queued.stderr
    resumed = cli("resume", "c1", "--store", "app.db")
    assert resumed.exit_code == 0, resumed.output
    assert "scripted reply" in resumed.stdout
    forked = cli("runs", "fork", "c1", "--at", "1", "--run-id", "f1", "--store", "app.db")
    assert forked.exit_code == 0, forked.output
    assert json.loads(forked.stdout) == "scripted reply"


def test_a_failed_fork_is_one_line_without_the_recorded_traceback(
        cli: Cli, project: Project) -> None:
    marker = project.dir / "service-up"
    marker.write_text("")
    done = cli("run", project.wf("fragile"), "-i", json.dumps(
        {"query": "q", "marker": str(marker)}), "--run-id", "g1", "--store", project.store)
    assert done.exit_code == 0, done.output
    marker.unlink()  # the tool fails from now on: the fork's re-executed step gives up
    failed = cli("runs", "fork", "g1", "--at", "2", "--run-id", "g2",
                 "--store", project.store)
    line = cli.one_line_error(failed, 1)
    assert line.startswith("error: fork g2 dead_lettered: "), line
    assert "lookup service down" in line and "Traceback" not in line and len(line) < 400
    as_json = cli("runs", "fork", "g1", "--at", "2", "--run-id", "g3", "--json",
                  "--store", project.store)
    error = json.loads(as_json.stdout)["error"]
    assert set(error) == {"type", "message"} and "lookup service down" in error["message"]


def test_workflows_of_two_runtimes_are_not_executed_by_one() -> None:
    first, second = Runtime(":memory:", worker=False), Runtime(":memory:", worker=False)

    async def a(ctx: object) -> None: ...
    async def b(ctx: object) -> None: ...

    wa: Workflow[[], None] = first.workflow(a)
    wb: Workflow[[], None] = second.workflow(b)
    with pytest.raises(CliError, match="different runtimes"):
        executing_runtime([wa, wb], None)
    with pytest.raises(CliError, match="different runtimes"):
        command_store(None, [wa, wb])
    twin = executing_runtime([wa], command_store(None, [wa]), worker=False)
    assert twin.store.url == first.store.url and list(twin.workflows.values()) == [wa]
    assert executing_runtime([Workflow(a)], ":memory:").budget is None


@pytest.mark.slow
def test_worker_takes_the_modules_journal_and_concurrency(cli: Cli, mod: Project) -> None:
    proc = subprocess.Popen([cli.exe(), "worker", "--import", "configured", "--poll", "0.05"],
                            cwd=mod.dir, env=cli.env(), stdin=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # the worker's start line, then its journal
        second = proc.stderr.readline()
        assert "concurrency 2" in first, first
        assert "serving the journal" in second and "app.db" in second, second
        queued = cli("run", "configured:ask", "-i", '"w"', "--run-id", "w1", "--no-wait")
        assert queued.exit_code == 0, queued.output
        deadline = time.monotonic() + 60
        while status_of(str(mod.dir / "app.db"), "w1") != RunStatus.COMPLETED:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    assert proc.returncode == 0, rest
    assert Path(mod.dir / "app.db").exists()
