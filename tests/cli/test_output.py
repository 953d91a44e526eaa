"""Output that survives a pipe: full-width tables off a terminal, fitted ones on it,
TSV with --plain; plain help pages, --version."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import termios
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Cli, Project

ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")
LONG_ID = "a-run-id-long-enough-to-push-the-table-past-forty-columns"


def _runs(cli: Cli, project: Project) -> None:
    for args in (["fanout", "30", LONG_ID], ["boom", "{}", "failed-run"]):
        wf, data, run_id = args
        result = cli("run", project.wf(wf), "-i", data, "--run-id", run_id,
                     "--store", project.store)
        assert result.exit_code in (0, 1), result.output


def _in_pty(cli: Cli, args: list[str], cwd: Path, columns: int) -> str:
    """Run the console script with a terminal of ``columns`` as its stdout."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = cli.env()
    env.pop("COLUMNS", None)
    env.pop("CI", None)  # rich takes CI for a terminal without a width
    env["TERM"] = "xterm"
    proc = subprocess.Popen([cli.exe(), *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return ANSI.sub("", b"".join(chunks).decode()).replace("\r\n", "\n")


def _lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if line]


@pytest.mark.slow
def test_piped_tables_are_full_width_unwrapped_and_unpadded(cli: Cli, project: Project) -> None:
    """Off a terminal (here with COLUMNS=40), no header, time or id is cut, no row wraps,
    and no line ends in a space."""
    _runs(cli, project)
    listed = cli.script("runs", "list", "--store", project.store, cwd=project.dir,
                        COLUMNS="40")
    events = cli.script("runs", "events", LONG_ID, "--store", project.store,
                        cwd=project.dir, COLUMNS="40")
    for done in (listed, events):
        assert done.returncode == 0, done.stderr
        assert "…" not in done.stdout
        assert not [line for line in done.stdout.splitlines() if line.endswith(" ")]
    rows = _lines(listed.stdout)
    assert len(rows) == 3  # the header and one line per run: nothing wrapped
    assert rows[0].split() == ["run", "id", "workflow", "status", "created", "updated",
                               "result", "/", "error"]
    assert LONG_ID in rows[1] or LONG_ID in rows[2]
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", rows[1])
    head, *journal = _lines(events.stdout)
    assert head.split() == ["seq", "time", "kind", "step", "name", "payload"]
    assert all(re.match(r"\d+\s+\d\d:\d\d:\d\d\.\d{3}\s", row) for row in journal)
    assert any("step_completed" in row for row in journal)


@pytest.mark.slow
def test_on_a_terminal_tables_fit_the_window(cli: Cli, project: Project) -> None:
    """On a terminal 60 columns wide, the same table is fitted: no line is longer, and
    the long last column is cut with an ellipsis."""
    _runs(cli, project)
    out = _in_pty(cli, ["runs", "list", "--store", project.store], project.dir, 60)
    rows = _lines(out)
    assert rows and all(len(row) <= 60 for row in rows)
    assert "…" in out


def test_plain_prints_tab_separated_values_in_full(cli: Cli, project: Project) -> None:
    """--plain: a header row, one row per line, tab-separated, long values whole."""
    _runs(cli, project)
    listed = cli("runs", "list", "--plain", "--store", project.store)
    assert listed.exit_code == 0
    header, *rows = listed.stdout.splitlines()
    assert header.split("\t") == ["run id", "workflow", "status", "created", "updated",
                                  "result / error"]
    by_id = {row.split("\t")[0]: row.split("\t") for row in rows}
    assert json.loads(by_id[LONG_ID][5]) == [2 * i for i in range(30)]  # not shortened
    assert by_id["failed-run"][5] == "builtins.ValueError: kaboom"
    events = cli("runs", "events", LONG_ID, "--plain", "--store", project.store)
    header, *rows = events.stdout.splitlines()
    assert header == "seq\ttime\tkind\tstep\tname\tpayload"
    assert all(len(row.split("\t")) == 6 for row in rows)
    assert any(row.endswith("[0,2,4,6,8,10,12,14,16,18,20,22,24,26,28,30,32,34,36,38,"
                            "40,42,44,46,48,50,52,54,56,58]") for row in rows)


@pytest.mark.parametrize(("args", "header"), [
    (["stats"], "dependency\tcalls\tfailed\terrors\tp50\tp95\ttokens\tcost\tsemantic\t"
                "breaker"),
    (["workers", "list"], "worker\tstate\thost\tpid\tup\theartbeat\tin flight\tleases\tpools"),
    (["dlq", "list"], "run id\tworkflow\tdead-lettered\tstep\tattempts\terror"),
])
def test_plain_puts_only_the_table_on_stdout(cli: Cli, project: Project, args: list[str],
                                             header: str) -> None:
    """stats, workers list and dlq list take --plain too: stdout holds the header row
    (and rows) only; what frames the table goes to stderr."""
    _runs(cli, project)
    done = cli(*args, "--plain", "--store", project.store)
    assert done.exit_code == 0, done.output
    assert done.stdout.splitlines()[0] == header


def test_json_output_is_unchanged_by_the_pipe_rules(cli: Cli, project: Project) -> None:
    """--json stays one JSON document with the complete values."""
    _runs(cli, project)
    listed = json.loads(cli("runs", "list", "--json", "--store", project.store).stdout)
    assert {r["run_id"] for r in listed} == {LONG_ID, "failed-run"}


# -- help and version -----------------------------------------------------------------

COMMANDS = [[], ["run"], ["resume"], ["signal"], ["cancel"], ["demo"], ["stats"], ["board"],
            ["tools"], ["worker"], ["runs"], ["runs", "list"], ["runs", "show"], ["runs", "events"],
            ["runs", "trace"], ["runs", "replay"], ["runs", "fork"], ["dlq"],
            ["dlq", "list"], ["dlq", "show"], ["dlq", "retry"], ["workers"],
            ["workers", "list"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "stalwart")
def test_help_pages_are_plain(cli: Cli, command: list[str]) -> None:
    """No type metavars, no ranges, no stray ' .', no RST quoting, no boxes."""
    page = cli(*command, "--help")
    assert page.exit_code == 0
    text = page.stdout
    assert text.startswith(f"Usage: stalwart {' '.join(command)}".rstrip())
    for junk in ("<bool>", "<str>", "<int", "<float", "range", "x>=", "``", "╭", "{",
                 "[[", "[default: ]"):
        assert junk not in text, (junk, text)
    assert not re.search(r"\S \.(\s|$)", text), text  # a stray " ." after eaten markup


def test_stalwart_alone_prints_its_help_once_and_version_prints_the_version(
        cli: Cli) -> None:
    """`stalwart` alone: the help once, exit 0; --version: the version."""
    import stalwart

    page = cli()
    assert page.exit_code == 0
    assert page.stdout.count("Usage: stalwart") == 1
    assert "Commands:" in page.stdout and "--version" in page.stdout
    version = cli("--version")
    assert (version.exit_code, version.stdout) == (0, f"stalwart {stalwart.__version__}\n")


def test_worker_help_shows_every_default_and_runs_lists_commands_in_order_of_use(
        cli: Cli) -> None:
    """Each worker option says its default; runs subcommands read list -> fork."""
    worker = " ".join(cli("worker", "--help").stdout.split())
    for option, default in (("--concurrency N", "its workflows' runtime's, else 100"),
                            ("--grace SECONDS", "30"),
                            ("--lease SECONDS", "its workflows' runtime's, else 30"),
                            ("--poll SECONDS", "its workflows' runtime's, else 1"),
                            ("--pool NAME", "all imported")):
        assert re.search(re.escape(option) + r" .*?\[default: " + re.escape(default) + r"\]",
                         worker), option
    runs = cli("runs", "--help").stdout
    listed = re.findall(r"^  (\w+)  ", runs.split("Commands:")[1], re.M)
    assert listed == ["list", "show", "events", "trace", "replay", "fork"]


@pytest.mark.parametrize(("since", "ok"), [("90s", True), ("15m", True), ("2h", True),
                                           ("1d", True), ("3600", True), ("soon", False)])
def test_since_takes_one_duration_syntax_everywhere(cli: Cli, project: Project, since: str,
                                                    ok: bool) -> None:
    """stats and workers list read --since the same way; a bad one is one usage error."""
    _runs(cli, project)
    for command in (["stats"], ["workers", "list"]):
        done = cli(*command, "--since", since, "--store", project.store)
        if ok:
            assert done.exit_code == 0, done.output
        else:
            line = cli.one_line_error(done, 2)
            assert "is not a duration like 90s, 15m, 2h or 1d" in line
