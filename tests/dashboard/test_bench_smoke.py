"""``bench/bench_dashboard.py`` runs, with tiny numbers (the figures are not checked
here: the benchmark itself exits 1 on a missed target)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_dashboard.py"


def test_the_benchmark_runs_and_prints_every_page() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--runs", "120", "--repeat", "2"],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stdout + done.stderr
    for page in ("first page", "status filter", "workflow filter", "last hour",
                 "a page halfway"):
        assert page in done.stdout and "<300 ok" in done.stdout.split(page)[1].split("\n")[0]
