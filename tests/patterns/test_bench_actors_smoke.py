"""``bench/bench_actors.py`` runs with tiny numbers on SQLite and its order and
exactly-once check passes (the figures are not checked here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_actors.py"


def test_the_benchmark_runs_and_checks_every_key() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--keys", "2", "--messages", "30",
                           "--pg-url", ""], capture_output=True, text=True, timeout=120,
                          check=False,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stdout + done.stderr
    row = next(line for line in done.stdout.splitlines() if "sqlite 1 process" in line)
    assert "ok: counts [30] (each key exact, in order)" in row
    assert "FLOOR sqlite" in done.stdout
