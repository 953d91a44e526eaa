"""The least-privilege example runs offline, as documented."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "STALWART_STORE"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / name)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_least_privilege_example(tmp_path: Path) -> None:
    """examples/least_privilege.py: the injected refund (granted, but the context is
    tainted) and account deletion (not granted) are refused and audited, the path
    escape fails in the tool, the spliced e-mail matches nobody."""
    lines = run_example("least_privilege.py", tmp_path).splitlines()
    assert lines[:9] == [
        "read_attachment: ok",
        "refund: permission_denied",
        "delete_account: permission_denied",
        "read_attachment: tool_failed",
        "find_customer: ok",
        "Summary: the customer asks for a refund; escalated to billing.",
        "audited: refund refused, untrusted_context (untrusted: tool:read_attachment)",
        "audited: delete_account refused, not_granted",
        "privileged calls executed: 0",
    ]
    assert lines[9].startswith("inspect it: stalwart runs trace ")
