"""``bench/bench_context.py --quick`` runs with tiny numbers and its needle checks pass
(the summarized fact is still in the request; the evicted one is reported in the
journal; the paged one is recalled through the tool). The timing figure is printed,
not checked here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_context.py"


def test_the_benchmark_runs_and_its_needle_checks_pass() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True,
                          text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    out = done.stdout + done.stderr
    assert "under summarize: answerable (in the request)" in out, out
    assert "under evict: gone from the request, reported evicted in the journal" in out, out
    assert "under page: answerable (recalled through the tool)" in out, out
    assert "simulated model call" in out
