"""The dashboard in a real browser: Playwright driving Debian's Chromium
(``/usr/bin/chromium``, or ``$STALWART_TEST_CHROMIUM``; Playwright's own browser download
cannot work on these machines). One browser for this module (conftest), a fresh page per
test.

Without Chromium the tests skip, saying why; with ``CI=true`` they fail instead (``.ci/run``
installs it). Each test saves a screenshot to ``$STALWART_DASHBOARD_SCREENSHOTS`` (or its
temporary folder).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import Dash, Journal, Served

WAIT = 15_000
"""Milliseconds a live update may take on a loaded machine."""


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page in its own context (no cookie shared between tests) of the one
    browser (``browser``, in conftest)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    where = Path(os.environ.get("STALWART_DASHBOARD_SCREENSHOTS") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    return where


def test_a_run_appears_and_updates_live(dash: Dash, served: tuple[Served, Journal],
                                        page: Any, shots: Path) -> None:
    """The runs page, left open: a run started elsewhere appears waiting, then shows
    completed once it is signalled and finished; nobody reloads."""
    server, journal = served
    page.goto(f"{server.url}/runs")
    page.wait_for_selector('tr[data-run="ok-1"]')

    async def start(rt: Any) -> None:
        await rt.start(dash.app.waiter, "report", run_id="live-w")
        while str((await rt.get_run("live-w")).status) != "waiting":
            await asyncio.sleep(0.02)

    journal.work(start)
    page.wait_for_selector('tr[data-run="live-w"] .s-waiting', timeout=WAIT)
    page.screenshot(path=str(shots / "runs.png"), full_page=True)

    async def approve(rt: Any) -> None:
        await rt.signal("live-w", "approve", {"by": "ana"})
        await rt.resume("live-w")
        await rt.wait_for_end("live-w", timeout=30)

    journal.work(approve)
    page.wait_for_selector('tr[data-run="live-w"] .s-completed', timeout=WAIT)
    assert page.url == f"{server.url}/runs"  # updated in place


def test_a_crash_and_its_takeover_show_on_the_waterfall(
        dash: Dash, served: tuple[Served, Journal], page: Any, shots: Path) -> None:
    """A process SIGKILLs itself in a step; another resumes the run. The run page's
    waterfall marks the crash and the executions say who took over."""
    server, journal = served
    marker = journal.dir / "crashed"
    child = subprocess.run([sys.executable, str(dash.app.__file__), journal.store, "crash-1",
                            str(marker)], capture_output=True, text=True, timeout=60,
                           check=False, env={**os.environ,
                                             "PYTHONPATH": os.pathsep.join(sys.path)})
    assert child.returncode == -9, child.stderr  # killed by its own SIGKILL
    assert marker.exists()

    async def resume(rt: Any) -> str:
        await rt.resume("crash-1")
        return str((await rt.wait_for_end("crash-1", timeout=30)).status)

    assert journal.work(resume) == "completed"
    page.goto(f"{server.url}/runs/crash-1")
    mark = page.locator("svg.waterfall .mark.crash")
    mark.wait_for()
    assert "taken over by #2" in (mark.text_content() or "")
    assert page.locator("text=interrupted → taken over by #2").count() == 1
    page.screenshot(path=str(shots / "run-crash.png"), full_page=True)


def test_the_dlq_retry_button_redrives_a_run(served: tuple[Served, Journal], page: Any,
                                             shots: Path) -> None:
    server, journal = served
    page.goto(server.token_url.replace("/runs?", "/dlq?"))
    assert page.url == f"{server.url}/dlq"  # the token left the address bar
    page.screenshot(path=str(shots / "dlq.png"), full_page=True)
    page.locator('tr[data-run="dead-1"] button:has-text("retry")').click()
    page.wait_for_url(f"{server.url}/runs/dead-1?*")
    assert "redriven (pending)" in page.locator(".note").inner_text()
    assert str(journal.record("dead-1").status) == "pending"


def test_without_the_token_there_is_no_action(served: tuple[Served, Journal],
                                              page: Any) -> None:
    """Opened without the link's token: no buttons, and a forged POST is refused; with
    it, the cancel button cancels."""
    server, journal = served
    page.goto(f"{server.url}/runs/wait-1")
    assert page.locator("text=view only: no token").count() == 1
    assert page.locator('button:has-text("cancel run")').count() == 0
    forged = page.request.post(f"{server.url}/runs/wait-1/cancel", form={"csrf": "x"})
    assert forged.status == 403 and "action refused" in forged.text()
    assert str(journal.record("wait-1").status) == "waiting"
    page.goto(server.token_url.replace("/runs?", "/runs/wait-1?"))
    page.locator('button:has-text("cancel run")').click()
    page.wait_for_url(f"{server.url}/runs/wait-1?*")
    assert "cancelled" in page.locator(".note").inner_text()
    assert str(journal.record("wait-1").status) == "cancelled"


def test_approve_from_the_inbox_resumes_a_parked_run(served: tuple[Served, Journal],
                                                     page: Any, shots: Path) -> None:
    server, journal = served
    page.goto(server.token_url.replace("/runs?", "/approvals?"))
    row = page.locator('tr[data-approval^="gate-1/"]')
    row.locator('input[name="as"]').fill("ana")
    page.screenshot(path=str(shots / "approvals.png"), full_page=True)
    row.locator('button:has-text("approve")').click()
    page.wait_for_url(f"{server.url}/approvals?*")
    assert "approved by ana" in page.locator(".note").inner_text()
    assert page.locator('tr[data-approval^="gate-1/"]').count() == 0

    async def finish(rt: Any) -> str:
        await rt.resume("gate-1")
        return str((await rt.wait_for_end("gate-1", timeout=30)).result)

    assert journal.work(finish) == '"shipped by ana"'
    page.goto(f"{server.url}/runs/gate-1")
    assert page.locator(".status.s-completed").count() >= 1
