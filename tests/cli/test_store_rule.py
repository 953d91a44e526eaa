"""One rule picks the journal of every command (``cli._common.command_store``):
``--store``, else the store of the Runtime of the module the command line names
(``MODULE:WF`` or ``--import MODULE``), else ``$STALWART_STORE``, else
``./.stalwart/stalwart.db``. ``resume`` used to open the default journal although the
module named another.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from stalwart import Runtime
from stalwart.store import RunStatus

if TYPE_CHECKING:
    from conftest import Cli, Project

MODULE = '''
from pathlib import Path

import stalwart as sw

app = sw.Runtime({store})


def add(a: int, b: int) -> int:
    return a + b


@sw.Tool
def fragile(marker: str) -> str:
    if not Path(marker).exists():
        raise ConnectionError("service down")
    return "up"


@app.workflow(name="adder")
async def adder(ctx: sw.Context, a: int, b: int) -> int:
    return await ctx.step(add, a, b)


@app.workflow(name="flaky")
async def flaky(ctx: sw.Context, marker: str) -> str:
    await ctx.step(add, 1, 1)
    return await ctx.tool(fragile, marker=marker,
                          policy=sw.Policy(retry=sw.Retry(max_attempts=1)))
'''


@pytest.fixture
def named(project: Project) -> Iterator[tuple[str, Path]]:
    """A module (unique name) whose Runtime names ``named.db``: (module, that file)."""
    name = f"named_{uuid.uuid4().hex[:8]}"
    (project.dir / f"{name}.py").write_text(MODULE.format(store='store="named.db"'))
    yield name, project.dir / "named.db"
    sys.modules.pop(name, None)


def status(store: Path | str, run_id: str) -> RunStatus:
    async def read() -> RunStatus:
        async with Runtime(store, worker=False) as client:
            return (await client.get_run(run_id)).status

    return asyncio.run(read())


def default_journal(project: Project) -> Path:
    return project.dir / ".stalwart" / "stalwart.db"


def test_run_resume_replay_and_fork_use_the_modules_store(
        cli: Cli, project: Project, named: tuple[str, Path]) -> None:
    """Without --store, each command that imports the module works on its journal."""
    mod, db = named
    queued = cli("run", f"{mod}:adder", "-i", '{"a": 1, "b": 2}', "--run-id", "r1",
                 "--no-wait")
    assert queued.exit_code == 0, queued.output
    assert status(db, "r1") == RunStatus.PENDING
    resumed = cli("resume", "--import", mod)
    assert resumed.exit_code == 0, resumed.output
    assert "resumed 1 run" in resumed.stdout
    assert status(db, "r1") == RunStatus.COMPLETED
    replayed = cli("runs", "replay", "r1", "--import", mod)
    assert replayed.exit_code == 0, replayed.output
    assert "deterministic" in replayed.stdout
    forked = cli("runs", "fork", "r1", "--at", "1", "--run-id", "f1", "--import", mod)
    assert forked.exit_code == 0, forked.output
    assert json.loads(forked.stdout) == 3
    assert status(db, "f1") == RunStatus.COMPLETED
    assert not default_journal(project).exists()


def test_resume_of_one_run_uses_the_modules_store(
        cli: Cli, project: Project, named: tuple[str, Path]) -> None:
    """``resume RUN_ID --import MODULE`` finds the run in the module's journal."""
    mod, db = named
    assert cli("run", f"{mod}:adder", "-i", "[2, 3]", "--run-id", "r2",
               "--no-wait").exit_code == 0
    resumed = cli("resume", "r2", "--import", mod)
    assert resumed.exit_code == 0, resumed.output
    assert status(db, "r2") == RunStatus.COMPLETED
    assert not default_journal(project).exists()


def test_dlq_retry_uses_the_modules_store(
        cli: Cli, project: Project, named: tuple[str, Path]) -> None:
    """``dlq retry RUN --import MODULE`` redrives the run in the module's journal."""
    mod, db = named
    marker = project.dir / "up"
    failed = cli("run", f"{mod}:flaky", "-i", json.dumps({"marker": str(marker)}),
                 "--run-id", "d1")
    assert failed.exit_code == 1, failed.output
    assert status(db, "d1") == RunStatus.DEAD_LETTERED
    marker.write_text("up")
    retried = cli("dlq", "retry", "d1", "--import", mod)
    assert retried.exit_code == 0, retried.output
    assert json.loads(retried.stdout) == "up"
    assert not default_journal(project).exists()


def test_the_store_flag_wins_over_the_module(
        cli: Cli, project: Project, named: tuple[str, Path]) -> None:
    """--store names the journal even when the module names another."""
    mod, db = named
    other = str(project.dir / "other.db")
    assert cli("run", f"{mod}:adder", "-i", "[1, 1]", "--run-id", "s1", "--no-wait",
               "--store", other).exit_code == 0
    resumed = cli("resume", "s1", "--import", mod, "--store", other)
    assert resumed.exit_code == 0, resumed.output
    assert status(other, "s1") == RunStatus.COMPLETED
    assert not db.exists()


def test_the_module_wins_over_the_environment(
        cli: Cli, project: Project, named: tuple[str, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """$STALWART_STORE is the default for code that names no store, not an override."""
    mod, db = named
    env_db = project.dir / "env.db"
    monkeypatch.setenv("STALWART_STORE", str(env_db))
    assert cli("run", f"{mod}:adder", "-i", "[1, 1]", "--run-id", "e1",
               "--no-wait").exit_code == 0
    resumed = cli("resume", "--import", mod)
    assert resumed.exit_code == 0, resumed.output
    assert status(db, "e1") == RunStatus.COMPLETED
    assert not env_db.exists()


def test_the_environment_serves_a_module_without_a_store_and_plain_commands(
        cli: Cli, project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module's ``Runtime()`` and commands that import nothing use $STALWART_STORE."""
    name = f"plain_{uuid.uuid4().hex[:8]}"
    (project.dir / f"{name}.py").write_text(MODULE.format(store=""))
    env_db = project.dir / "env.db"
    monkeypatch.setenv("STALWART_STORE", str(env_db))
    try:
        assert cli("run", f"{name}:adder", "-i", "[4, 4]", "--run-id", "p1",
                   "--no-wait").exit_code == 0
        resumed = cli("resume", "p1", "--import", name)
        assert resumed.exit_code == 0, resumed.output
        listed = cli("runs", "list", "--json")
        assert listed.exit_code == 0, listed.output
        assert [r["run_id"] for r in json.loads(listed.stdout)] == ["p1"]
        assert status(env_db, "p1") == RunStatus.COMPLETED
        assert not default_journal(project).exists()
    finally:
        sys.modules.pop(name, None)
