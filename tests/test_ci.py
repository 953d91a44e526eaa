"""``.ci/run``'s PostgreSQL set-up (``.ci/pg_setup.sh``): a CI run fails rather than
skipping the PostgreSQL tests; a developer's run may skip them, saying why."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHOW = 'echo "url=${STALWART_TEST_POSTGRES_URL:-}"'


def setup(env: dict[str, str], then: str = SHOW) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/bash", "-c", f"set -euo pipefail; source .ci/pg_setup.sh; "
                                              f"{then}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def test_without_postgres_a_ci_run_fails_saying_why(tmp_path: Path) -> None:
    """No PostgreSQL tools on the PATH: with CI=true the set-up exits 1 with the reason;
    without CI it says the tests will be skipped and goes on."""
    bare = {"PATH": str(tmp_path), "HOME": str(tmp_path)}  # no psql, no pg_isready
    failed = setup({**bare, "CI": "true"})
    assert failed.returncode == 1
    assert "pg_isready/psql not installed" in failed.stderr
    assert "CI=true: failing the run" in failed.stderr
    assert "url=" not in failed.stdout
    skipped = setup(bare)
    assert skipped.returncode == 0, skipped.stderr
    assert "PostgreSQL tests will be skipped" in skipped.stderr
    assert skipped.stdout.strip() == "url="


def test_with_postgres_a_ci_run_gets_a_fresh_database_dropped_at_exit() -> None:
    """With a server up, CI=true gets a database of its own (usable), dropped at exit."""
    if shutil.which("pg_isready") is None or subprocess.run(
            ["pg_isready", "-q", "-h", "127.0.0.1"], check=False).returncode != 0:
        pytest.skip("no PostgreSQL server on 127.0.0.1 (this test never starts one)")
    env = {**os.environ, "CI": "true"}
    out = setup(env, then=f'{SHOW}; psql -q -d "$STALWART_TEST_POSTGRES_URL" -tAc "SELECT 1"')
    assert out.returncode == 0, out.stderr
    url = out.stdout.splitlines()[0].removeprefix("url=")
    assert url.startswith("postgresql://postgres@127.0.0.1:5432/stalwart_ci_")
    assert out.stdout.splitlines()[1] == "1"
    name = url.rsplit("/", 1)[1]
    left = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres",
                           "-tAc", f"SELECT count(*) FROM pg_database WHERE datname = '{name}'"],
                          capture_output=True, text=True, check=True)
    assert left.stdout.strip() == "0"  # dropped by the EXIT trap


def browser_setup(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/bash", "-c", "set -euo pipefail; source "
                                              ".ci/browser_setup.sh; "
                                              'echo "chromium=${STALWART_TEST_CHROMIUM:-}"'],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                          check=False)


def test_without_a_browser_a_ci_run_fails_saying_why(tmp_path: Path) -> None:
    """No Chromium and no apt-get to install it: with CI=true the set-up exits 1 with the
    reason; without CI it says the browser tests will be skipped."""
    bare = {"PATH": str(tmp_path), "HOME": str(tmp_path),
            "STALWART_TEST_CHROMIUM": str(tmp_path / "no-chromium")}
    failed = browser_setup({**bare, "CI": "true"})
    assert failed.returncode == 1
    assert "no apt-get to install it" in failed.stderr
    assert "CI=true: failing the run" in failed.stderr
    skipped = browser_setup(bare)
    assert skipped.returncode == 0, skipped.stderr
    assert "browser tests will be skipped" in skipped.stderr
    assert skipped.stdout.strip() == f"chromium={tmp_path / 'no-chromium'}"


def test_a_browser_that_is_there_is_used_as_it_is(tmp_path: Path) -> None:
    """Chromium present: nothing is installed, and the tests are told where it is."""
    browser = tmp_path / "chromium"
    browser.write_text("#!/bin/sh\n")
    browser.chmod(0o755)
    done = browser_setup({"PATH": str(tmp_path), "HOME": str(tmp_path), "CI": "true",
                          "STALWART_TEST_CHROMIUM": str(browser)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"chromium={browser}"
    assert "apt-get" not in done.stderr
