"""Helpers of the MCP and A2A tests: the faulty MCP test server, call counting."""

from __future__ import annotations

import json
import sys
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
