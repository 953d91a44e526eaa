"""The README's offline agent (tools and output_type) runs as pasted."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def _block(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    found = [b for b in blocks if b.startswith(marker)]
    assert len(found) == 1, f"README has {len(found)} blocks starting with {marker!r}"
    return found[0]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("STALWART_", "OPENAI_", "ANTHROPIC_", "OTEL_"))}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60, check=False, stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_the_offline_agent_runs_as_pasted(tmp_path: Path) -> None:
    """The block, saved as offline_agent.py, runs with python and with stalwart run, with
    no key and no network, and prints a Forecast."""
    (tmp_path / "offline_agent.py").write_text(_block("# offline_agent.py"))
    done = _run([sys.executable, "offline_agent.py"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"city='\w+' high_c=-?[\d.]+ sky='(sunny|cloudy|rain)'\n",
                        done.stdout), done.stdout
    cli = _run([sys.executable, "-m", "stalwart.cli", "run", "offline_agent:forecast",
                "--input", '{"question": "Rain in Lima?"}'], tmp_path)
    assert cli.returncode == 0, cli.stderr
    forecast = json.loads(cli.stdout)
    assert set(forecast) == {"city", "high_c", "sky"}
