"""``stalwart dashboard`` at the command line: a bad journal or a taken port is one line
and exit 2, before anything is served; a good one serves until SIGINT."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from typer.testing import CliRunner, Result

from stalwart.cli import app

if TYPE_CHECKING:
    from conftest import Journal


def _one_line(result: Result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def _dashboard(*args: str) -> Result:
    return CliRunner().invoke(app, ["dashboard", *args])


def test_no_journal_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.db"
    line = _one_line(_dashboard("--store", str(missing), "--port", "0"))
    assert "no stalwart journal at" in line and str(missing) in line
    assert not missing.exists()


def test_not_a_journal_is_one_line_and_left_untouched(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"garbage, not sqlite" * 50)
    line = _one_line(_dashboard("--store", str(bad), "--port", "0"))
    assert "is not a stalwart journal" in line
    assert bad.read_bytes() == b"garbage, not sqlite" * 50


def test_a_taken_port_is_one_line(shared_journal: Journal) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        line = _one_line(_dashboard("--store", shared_journal.store, "--port", str(port)))
    assert f"cannot listen on 127.0.0.1:{port}" in line and "--port" in line


def test_without_the_extra_it_says_what_to_install(shared_journal: Journal,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn -> ImportError
    line = _one_line(_dashboard("--store", shared_journal.store, "--port", "0"))
    assert "pip install -e '.[dashboard]' in a checkout" in line and "uvicorn" in line


def test_serves_the_journal_until_sigint(shared_journal: Journal, tmp_path: Path) -> None:
    """The real command in its own process: it prints the link with its token, serves
    pages, its link sets the token cookie, and it stops cleanly on Ctrl-C."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from stalwart.cli import main; main()", "dashboard",
         "--store", shared_journal.store, "--port", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, cwd=tmp_path)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        found = re.match(r"stalwart dashboard: (http://127\.0\.0\.1:\d+/)\?token=(\S+)", first)
        assert found is not None, first + proc.stderr.read()
        base, token = found.groups()
        with httpx.Client(base_url=base, timeout=10, follow_redirects=True) as client:
            assert "ok-1" in client.get("runs").text
            landed = client.get(f"runs?token={token}")
            assert landed.status_code == 200 and client.cookies
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
