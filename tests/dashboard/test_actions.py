"""The dashboard's actions (cancel, dead-letter retry, fork): they go through the CLI's
own functions, and only with this start's token, the page's CSRF field and no foreign
Origin; ``--read-only`` takes none."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from stalwart.cli.dashboard._web import Guard

if TYPE_CHECKING:
    from conftest import Dash, Journal


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found is not None, "no action form on the page"
    return found.group(1)


def test_the_token_link_sets_a_strict_cookie_and_drops_the_token(dash: Dash,
                                                                 journal: Journal) -> None:
    with dash.client(journal.store) as client:
        landed = client.get(f"/runs/ok-1?token={dash.token}", follow_redirects=False)
        wrong = client.get("/runs?token=guess")
    assert landed.status_code == 303 and landed.headers["location"] == "/runs/ok-1"
    cookie = landed.headers["set-cookie"]
    assert dash.token in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert wrong.status_code == 403 and "not the token" in wrong.text


def test_cancel_from_the_run_page(dash: Dash, journal: Journal) -> None:
    with dash.client(journal.store, authorized=True) as client:
        page = client.get("/runs/wait-1").text
        assert 'action="/runs/wait-1/cancel"' in page
        done = client.post("/runs/wait-1/cancel", data={"csrf": _csrf(page)},
                           follow_redirects=False)
        assert done.status_code == 303
        assert done.headers["location"].startswith("/runs/wait-1?note=cancelled")
        again = client.post("/runs/wait-1/cancel", data={"csrf": _csrf(page)})
    assert str(journal.record("wait-1").status) == "cancelled"
    assert again.status_code == 409 and "already ended" in again.text


@pytest.mark.parametrize("missing", ["token", "csrf", "origin", "read-only"])
def test_an_action_without_its_guards_is_refused(dash: Dash, journal: Journal,
                                                 missing: str) -> None:
    """No cookie (the token link was not opened), a wrong CSRF field, another site's
    Origin, or a read-only dashboard: 403, and the run is left as it was."""
    csrf = Guard(dash.token, read_only=False).csrf
    with dash.client(journal.store, authorized=missing != "token",
                     read_only=missing == "read-only") as client:
        page = client.get("/runs/wait-1").text
        assert ('action="/runs/wait-1/cancel"' in page) == (missing in ("csrf", "origin"))
        headers = {"origin": "http://evil.example"} if missing == "origin" else {}
        refused = client.post("/runs/wait-1/cancel",
                              data={"csrf": "0" * 64 if missing == "csrf" else csrf},
                              headers=headers)
    assert refused.status_code == 403 and "action refused" in refused.text
    assert str(journal.record("wait-1").status) == "waiting"


def test_retry_redrives_a_dead_letter_and_a_worker_finishes_it(dash: Dash,
                                                               journal: Journal) -> None:
    (journal.dir / "service.up").write_text("up")  # the service is back
    # the run's input names the marker path of the journal that made it
    rec = journal.record("dead-1")
    Path(rec.input.split('"')[-2]).write_text("up")
    with dash.client(journal.store, authorized=True) as client:
        dlq = client.get("/dlq").text
        assert 'action="/runs/dead-1/retry"' in dlq
        done = client.post("/runs/dead-1/retry", data={"csrf": _csrf(dlq)},
                           follow_redirects=False)
        assert done.status_code == 303 and "redriven" in done.headers["location"]
        not_dead = client.post("/runs/ok-1/retry", data={"csrf": _csrf(dlq)})
    assert not_dead.status_code == 400 and "not dead-lettered" in not_dead.text
    assert str(journal.record("dead-1").status) == "pending"

    async def work() -> str:
        rt = dash.app.runtime(journal.store)
        try:
            await rt.resume("dead-1")
            return str((await rt.wait_for_end("dead-1", timeout=30)).status)
        finally:
            await rt.close()

    assert asyncio.run(work()) == "completed"


def test_fork_from_a_step(dash: Dash, journal: Journal) -> None:
    with dash.client(journal.store, authorized=True) as client:
        page = client.get("/runs/ok-1").text
        assert '<option value="2">' in page
        done = client.post("/runs/ok-1/fork", data={"csrf": _csrf(page), "at": "2"},
                           follow_redirects=False)
        assert done.status_code == 303, done.text
        fork_id = done.headers["location"].split("?")[0].removeprefix("/runs/")
        fork = client.get(f"/runs/{fork_id}").text
        empty = client.post("/runs/ok-1/fork", data={"csrf": _csrf(page), "at": ""})
    assert fork_id != "ok-1" and 'href="/runs/ok-1"' in fork and "at step 2" in fork
    assert empty.status_code == 400 and "needs the step" in empty.text


def test_postgres_actions(dash: Dash, pg_journal: Journal) -> None:
    with dash.client(pg_journal.store, authorized=True) as client:
        page = client.get("/runs/wait-1").text
        done = client.post("/runs/wait-1/cancel", data={"csrf": _csrf(page)},
                           follow_redirects=False)
    assert done.status_code == 303
    assert str(pg_journal.record("wait-1").status) == "cancelled"


def test_replay_checks_todays_code_and_writes_nothing(dash: Dash, journal: Journal) -> None:
    """The replay button: today's code against the journal, nothing executed, the
    journal's bytes unchanged; a module that cannot be imported is one clear page."""
    before = Path(journal.store).read_bytes()
    with dash.client(journal.store, authorized=True) as client:
        page = client.get("/runs/ok-1").text
        done = client.post("/runs/ok-1/replay", data={"csrf": _csrf(page)})
    assert done.status_code == 200, done.text
    assert "deterministic (2 of 2 recorded steps reached, nothing executed)" in done.text
    assert Path(journal.store).read_bytes() == before


def test_replay_says_so_when_the_code_diverges(dash: Dash, journal: Journal,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    async def _changed(ctx: object, a: int, b: int) -> int:  # one step, not two
        return await ctx.step(dash.app.add, a, b)  # type: ignore[attr-defined,no-any-return]

    monkeypatch.setattr(dash.app.adder, "fn", _changed, raising=False)
    monkeypatch.setattr(dash.app.adder, "_fn", _changed, raising=False)
    with dash.client(journal.store, authorized=True) as client:
        page = client.get("/runs/ok-1").text
        done = client.post("/runs/ok-1/replay", data={"csrf": _csrf(page)})
    assert done.status_code == 200 and "DIVERGES" in done.text, done.text


def test_approve_from_the_inbox_and_the_run_goes_on(dash: Dash, journal: Journal) -> None:
    """The inbox lists the parked approval with its payload; approving with its token
    (bound to that payload) lets a worker finish the run with the decision."""
    with dash.client(journal.store, authorized=True) as client:
        inbox = client.get("/approvals").text
        row = inbox.split('<tr data-approval="gate-1/')[1].split("</tr>")[0]
        assert "ship" in row and "&#34;order&#34;: 7" in row
        token = re.search(r'name="token" value="([^"]+)"', row)
        step = re.search(r'name="step" value="([^"]+)"', row)
        assert token is not None and step is not None
        done = client.post("/approvals/decide", data={
            "csrf": _csrf(inbox), "run_id": "gate-1", "step": step.group(1),
            "token": token.group(1), "decision": "approve", "as": "ana",
            "comment": "ok"}, follow_redirects=False)
        assert done.status_code == 303 and "approved+by+ana" in done.headers["location"]
        after = client.get("/approvals").text
    assert 'data-approval="gate-1/' not in after

    async def finish(rt: Any) -> str:
        await rt.resume("gate-1")
        return str((await rt.wait_for_end("gate-1", timeout=30)).result)

    assert journal.work(finish) == '"shipped by ana"'


def test_a_decision_with_another_payloads_token_is_refused(dash: Dash,
                                                           journal: Journal) -> None:
    with dash.client(journal.store, authorized=True) as client:
        inbox = client.get("/approvals").text
        step = re.search(r'name="step" value="([^"]+)"', inbox)
        assert step is not None
        refused = client.post("/approvals/decide", data={
            "csrf": _csrf(inbox), "run_id": "gate-1", "step": step.group(1),
            "token": "0" * 64, "decision": "approve"})
        unguarded = client.post("/approvals/decide", data={
            "run_id": "gate-1", "step": step.group(1), "token": "0" * 64,
            "decision": "approve"})
    assert refused.status_code == 409 and "decision refused" in refused.text
    assert unguarded.status_code == 403
    assert str(journal.record("gate-1").status) == "waiting"


def test_the_inbox_shows_no_decision_without_the_token(dash: Dash, journal: Journal) -> None:
    with dash.client(journal.store) as client:
        inbox = client.get("/approvals").text
    assert 'data-approval="gate-1/' in inbox and 'action="/approvals/decide"' not in inbox


def test_another_sites_name_for_this_machine_gets_nothing(dash: Dash,
                                                           journal: Journal) -> None:
    """DNS rebinding: a page of evil.example whose name resolves to 127.0.0.1 sends
    ``Host: evil.example``; it reads no page and takes no action."""
    with dash.client(journal.store) as client:
        page = client.get("/runs", headers={"host": "evil.example:8765"})
        local = client.get("/runs", headers={"host": "localhost:8765"})
    assert page.status_code == 400 and "ok-1" not in page.text
    assert local.status_code == 200
