"""Every bad input ends in one ``error:`` line on stderr, a non-zero exit, no traceback."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import typer

from stalwart import SQLiteStore
from stalwart.cli import app

if TYPE_CHECKING:
    from conftest import Cli, Project


@pytest.mark.parametrize(("args", "needle"), [
    (["run", "{m}:nope"], "has no workflow 'nope'"),
    (["run", "no_such_module_xyz:wf"], "no module named 'no_such_module_xyz'"),
    (["run", "{m}:NOT_A_WORKFLOW"], "is not a stalwart workflow"),
    (["run", "{m}"], "name the workflow as MODULE:WORKFLOW"),
    (["run", "{m}:adder", "--input", "{bad json"], "--input is not valid JSON"),
    (["run", "{m}:adder", "--input", '{"a": 1}'], "missing a required argument: 'b'"),
    (["run", "{m}:adder", "--input", '{"a": "x", "b": 2}'],
     "argument 'a' of workflow adder expects int, got str"),
    (["run", "{m}:adder", "--input", '{"a": 1, "b": 2, "c": 3}'],
     "unexpected argument(s) 'c' (it takes a: int, b: int)"),
    (["run", "{m}:approval", "--input", '{"iten": "x"}'],
     "unexpected argument(s) 'iten' (it takes item: str)"),
    (["run", "{m}:approval", "--input", '{"item": 1}'],
     "argument 'item' of workflow approval expects str, got int"),
    (["run", "{m}:approval", "--input", "[1]"],
     "argument 'item' of workflow approval expects str, got int"),
    (["run", "{m}:adder", "--bogus"], "No such option: --bogus"),
    (["run"], "Missing argument"),
    (["runs", "list", "--status", "bogus"], "Invalid value for '--status'"),
    (["runs", "list", "--limit", "0"], "Invalid value for '--limit'"),
    (["nonsense"], "No such command"),
    (["signal", "r", "go", "--payload", "{x"], "--payload is not valid JSON"),
    (["resume", "--import", "no_such_module_xyz"], "no module named"),
])
def test_bad_arguments_and_input_exit_2(cli: Cli, project: Project, args: list[str],
                                        needle: str) -> None:
    """Unknown workflows and modules, invalid JSON, bad options: exit 2, one line."""
    argv = [a.replace("{m}", project.module) for a in args]
    if argv[0] != "nonsense":
        argv += ["--store", project.store]
    line = cli.one_line_error(cli(*argv), 2)
    assert needle in line
    assert "https://" not in line  # no pydantic documentation links


@pytest.mark.parametrize("args", [
    ["runs", "show", "missing"],
    ["runs", "events", "missing"],
    ["signal", "missing", "go"],
    ["cancel", "missing"],
    ["resume", "missing"],
])
def test_an_unknown_run_id_exits_2(cli: Cli, project: Project, args: list[str]) -> None:
    """Each command that takes a run id names the run it could not find."""
    assert cli("run", project.wf("adder"), "-i", "[1, 2]", "--store",
               project.store).exit_code == 0
    line = cli.one_line_error(cli(*args, "--store", project.store), 2)
    assert "no run 'missing'" in line


def _text_file(p: Path) -> None:
    p.write_text("hello, I am not a database\n")


def _foreign_sqlite(p: Path) -> None:
    conn = sqlite3.connect(p)
    conn.execute("CREATE TABLE invoices (id INTEGER)")
    conn.commit()
    conn.close()


def _corrupted(p: Path) -> None:
    p.write_bytes(b"SQLite format 3\x00" + b"\xde\xad\xbe\xef" * 1024)


def _other_version(p: Path) -> None:
    async def create() -> None:
        store = SQLiteStore(p)
        await store.open()
        await store.close()

    asyncio.run(create())
    conn = sqlite3.connect(p)
    conn.execute("UPDATE stalwart_meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()


@pytest.mark.parametrize(("make", "needle"), [
    (_text_file, "not a stalwart journal"),
    (_foreign_sqlite, "not a stalwart journal"),
    (_corrupted, "cannot be read as a journal"),
    (_other_version, "journal schema 99"),
    (None, "no stalwart journal at"),
    (lambda p: p.write_bytes(b""), "the file is empty"),
], ids=["text-file", "foreign-sqlite", "corrupted", "other-version", "missing", "empty"])
@pytest.mark.parametrize("command", [
    ["runs", "list"], ["runs", "show", "r"], ["run", "{m}:adder", "-i", "[1, 2]"],
    ["resume"], ["cancel", "r"],
], ids=["list", "show", "run", "resume", "cancel"])
def test_an_unusable_store_exits_2_and_is_left_untouched(
        cli: Cli, project: Project, make: Callable[[Path], None] | None, needle: str,
        command: list[str]) -> None:
    """Foreign, corrupted, other-version or missing journals: one line, file unchanged."""
    path = project.dir / "store.db"
    if make is not None:
        make(path)
    before = path.read_bytes() if path.exists() else None
    argv = [a.replace("{m}", project.module) for a in command]
    result = cli(*argv, "--store", str(path))
    if command[0] == "run" and (make is None or needle == "the file is empty"):
        assert result.exit_code == 0  # `run` creates a new journal; only readers refuse
        return
    line = cli.one_line_error(result, 2)
    assert needle in line
    assert (path.read_bytes() if path.exists() else None) == before


def test_an_unknown_store_url_exits_2(cli: Cli, project: Project) -> None:
    """A URL scheme stalwart does not know is a usage error."""
    line = cli.one_line_error(cli("runs", "list", "--store", "mysql://db/x"), 2)
    assert "unknown store URL" in line


def test_the_console_script_reports_a_foreign_store_in_one_line(
        cli: Cli, project: Project) -> None:
    """In a real process too: exit 2, one stderr line, no traceback."""
    _text_file(project.dir / "notes.txt")
    proc = cli.script("runs", "show", "r", "--store", "notes.txt", cwd=project.dir)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stdout + proc.stderr
    assert (project.dir / "notes.txt").read_text() == "hello, I am not a database\n"


def test_help_exits_0(cli: Cli) -> None:
    """--help and a bare group print help rather than an error."""
    assert cli("--help").exit_code == 0
    runs = cli("runs")
    assert runs.exit_code == 0 and "show" in runs.stdout


def _read_only_folder(tmp: Path) -> Path:
    """A folder this process cannot create files in: a chmod'ed one, or for root (whom
    permission bits do not stop) /sys, where no file can be made."""
    if os.geteuid() != 0:
        folder = tmp / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    try:
        (Path("/sys") / "stalwart-probe.db").touch()
    except OSError:
        return Path("/sys")
    pytest.skip("no folder here refuses files to root")


@pytest.mark.parametrize("where", ["no-folder", "read-only"])
@pytest.mark.parametrize("command", ["run", "worker"])
def test_a_store_path_that_cannot_be_used_exits_2_naming_path_and_reason(
        cli: Cli, project: Project, where: str, command: str) -> None:
    """--store in a folder that cannot be made or written: exit 2, one line that names
    the journal and why (not an 'unexpected' error), in a real process."""
    if where == "no-folder":
        store, reason = "/proc/nope/x.db", "its folder /proc/nope cannot be created"
    else:
        folder = _read_only_folder(project.dir)
        store, reason = str(folder / "x.db"), f"files cannot be created in its folder {folder}"
    args = (["run", project.wf("adder"), "-i", "[1, 2]"] if command == "run"
            else ["worker", "--import", project.module])
    proc = cli.script(*args, "--store", store, cwd=project.dir, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: cannot use the journal {store}: ")
    assert proc.stderr.count("\n") == 1 and reason in proc.stderr
    assert "unexpected" not in proc.stderr and "Traceback" not in proc.stderr


def test_a_missing_argument_is_named_as_the_usage_line_names_it(cli: Cli) -> None:
    """Every positional argument has an upper-case metavar, so 'Missing argument' names
    it as ``--help`` does (``RUN_ID``, not the parameter ``run_id``), in no brackets."""
    root = typer.main.get_command(app)
    unnamed = []
    groups: list[tuple[str, Any]] = [("stalwart", root)]
    while groups:
        path, cmd = groups.pop()
        groups.extend((f"{path} {n}", c) for n, c in getattr(cmd, "commands", {}).items())
        unnamed += [f"{path} {p.name} ({p.metavar})" for p in cmd.params
                    if p.param_type_name == "argument"
                    and not re.fullmatch(r"[A-Z_:]+", p.metavar or "")]
    assert not unnamed, unnamed
    line = cli.one_line_error(cli("runs", "show"), 2)
    assert "Missing argument 'RUN_ID'" in line
