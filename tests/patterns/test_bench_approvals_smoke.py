"""``bench/bench_approvals.py`` runs with tiny numbers on SQLite, and its two listings
give the same answers (the figures are not checked here: ``--target 0``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_approvals.py"


def test_the_benchmark_runs_and_both_listings_agree() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--runs", "30", "--events", "12",
                           "--repeat", "1", "--target", "0", "--pg-url", ""],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "same answers: yes (30 pending)" in done.stdout
    for row in ("FLOOR", "INDEX", "SCAN"):
        assert f"  {row} " in done.stdout
