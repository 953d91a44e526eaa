"""SIGKILL of our process during an MCP call: a new process resumes the run without
repeating the call that completed (counted at the server); the call in flight is made
again with the same idempotency key, so the server can deduplicate it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import HTTPServer, calls

pytestmark = pytest.mark.slow

APP = Path(__file__).with_name("mcp_crash_app.py")


def _client(db: Path, url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, str(APP), str(db), url], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_killed_run_resumes_without_repeating_a_completed_call(
        http_server: HTTPServer, tmp_path: Path) -> None:
    """charge completed, hold in flight, SIGKILL: the next process charges nothing again
    and sends hold again under the same key."""
    db = tmp_path / "journal.db"
    first = _client(db, http_server.url)
    started = http_server.state / "started-h"
    deadline = time.monotonic() + 60
    while not started.exists():  # the server writes it when hold begins
        assert first.poll() is None, first.communicate()[1]
        assert time.monotonic() < deadline, "hold never started"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    assert first.returncode == -9
    (http_server.state / "release-h").write_text("go")
    second = _client(db, http_server.url)
    out, err = second.communicate(timeout=90)
    assert second.returncode == 0, err
    result = json.loads(out)
    [charge] = calls(http_server.state, "charge")
    assert result == {"charged": f"charged 7 once for {charge['key']}", "held": "released h"}
    holds = calls(http_server.state, "hold")
    assert len(holds) == 2 and holds[0]["key"] == holds[1]["key"]
    assert holds[0]["key"].startswith("crash-1:")
