"""Helpers of the MCP and A2A tests: the faulty MCP test server, call counting."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SERVER = Path(__file__).with_name("mcp_test_server.py")


def server_argv(state: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SERVER), str(state), *extra]


def calls(state: Path, tool: str | None = None) -> list[dict[str, Any]]:
    """The calls the test server received (each with the idempotency key sent)."""
    path = state / "calls.jsonl"
    if not path.exists():
        return []
    out = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [c for c in out if tool is None or c["tool"] == tool]


@pytest.fixture
def state(tmp_path: Path) -> Path:
    d = tmp_path / "server"
    d.mkdir()
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)  # polling a port the child opens: no event to wait on
    raise AssertionError(f"nothing listens on {port}")


@dataclass
class HTTPServer:
    """The faulty MCP test server over streamable HTTP on 127.0.0.1, in a process of
    its own, which the test can kill and start again on the same port."""

    state: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> None:
        self.proc = subprocess.Popen([*server_argv(self.state), "--http", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()


@pytest.fixture
def http_server(state: Path) -> Iterator[HTTPServer]:
    server = HTTPServer(state)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A server's journal: an SQLite file, or a fresh PostgreSQL schema dropped after
    the test (skipped without ``STALWART_TEST_POSTGRES_URL``)."""
    if request.param == "sqlite":
        yield str(tmp_path / "journal.db")
        return
    from stalwart.testing import postgres_schema

    url = os.environ.get("STALWART_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("set STALWART_TEST_POSTGRES_URL=postgresql://... to run this test")
    with postgres_schema(url, prefix="stalwart_a2a") as scoped:
        yield scoped
