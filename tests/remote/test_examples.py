"""The MCP and A2A examples run offline, as documented."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = pytest.mark.slow


def run_example(name: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "STALWART_STORE"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / name)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_mcp_time_example(tmp_path: Path) -> None:
    """examples/mcp_time.py: the agent calls the real time server once; run again, it
    reads the journal and sends nothing."""
    first = run_example("mcp_time.py", tmp_path).splitlines()
    assert first[0] == "tools: convert_time, get_current_time"
    assert re.fullmatch(r"In Asia/Tokyo it is [A-Z][a-z]+day\.", first[1])
    assert first[2] == "calls sent to the server: 1"
    again = run_example("mcp_time.py", tmp_path).splitlines()
    assert again[1] == first[1] and again[2] == "calls sent to the server: 0"


def test_a2a_pair_example(tmp_path: Path) -> None:
    """examples/a2a_pair.py: the desk asks the researcher over A2A once; run again, its
    run is read from the journal and nothing is sent."""
    first = run_example("a2a_pair.py", tmp_path).splitlines()
    assert first == ['answer: {"answer": "42", "question": "what is six times seven?", '
                     '"words": 5}', "tasks started at the researcher: 1",
                     "messages sent by the desk: 1"]
    again = run_example("a2a_pair.py", tmp_path).splitlines()
    assert again[0] == first[0] and again[1:] == ["tasks started at the researcher: 0",
                                                  "messages sent by the desk: 0"]
