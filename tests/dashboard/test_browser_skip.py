"""The browser tests never skip silently: without Chromium they skip saying why, and
with ``CI=true`` they fail instead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "CI"}
    environ.update(PYTHONPATH=os.pathsep.join(sys.path),
                   STALWART_TEST_CHROMIUM=str(tmp_path / "no-chromium"), **env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(HERE / "test_browser.py"), "-q",
         "-p", "no:cacheprovider", "-k", "without_the_token", "-rs"],
        cwd=HERE.parents[1], env=environ, capture_output=True, text=True, timeout=120,
        check=False)


@pytest.mark.slow
def test_no_browser_skips_with_a_reason_or_fails_in_ci(tmp_path: Path) -> None:
    skipped = _run(tmp_path)
    assert skipped.returncode == 0, skipped.stdout
    assert "1 skipped" in skipped.stdout and "no Chromium at" in skipped.stdout
    failed = _run(tmp_path, CI="true")
    assert failed.returncode == 1, failed.stdout
    assert "with CI=true the browser tests run, they never skip" in failed.stdout
