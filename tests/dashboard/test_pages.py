"""The dashboard's pages, rendered in process (Starlette's TestClient) over a journal with
one run of each kind: what each page shows, its filters, its errors, and that looking
writes nothing."""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from stalwart.cli.dashboard import _web

if TYPE_CHECKING:
    from conftest import Dash, Journal


def _rows(html: str) -> list[str]:
    """The run ids of a runs table, in order."""
    return re.findall(r'<tr data-run="([^"]+)"', html)


def test_runs_page_lists_every_run_newest_first(dash: Dash, shared_journal: Journal) -> None:
    with dash.client(shared_journal.store) as client:
        page = client.get("/runs")
    assert page.status_code == 200
    rows = _rows(page.text)
    # newest first: the child run was created after its parent
    assert rows == ["parent-1/1", "parent-1", "gate-1", "wait-1", "boom-1", "dead-1",
                    "agent-1", "llm-1", "ok-1"]
    for status in ("completed", "dead_lettered", "failed", "waiting"):
        assert f'class="status s-{status}"' in page.text
    assert 'sse-connect="/runs/stream?' in page.text  # live on the first page


def test_root_goes_to_the_runs(dash: Dash, shared_journal: Journal) -> None:
    with dash.client(shared_journal.store) as client:
        page = client.get("/", follow_redirects=False)
    assert page.status_code == 307 and page.headers["location"] == "/runs"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=dead_lettered", {"dead-1"}),
        ("status=waiting", {"wait-1", "gate-1"}),
        ("workflow=adder", {"ok-1"}),
        ("workflow=adder&status=failed", set()),
    ],
)
def test_runs_page_filters(
    dash: Dash, shared_journal: Journal, query: str, expected: set[str]
) -> None:
    with dash.client(shared_journal.store) as client:
        page = client.get(f"/runs?{query}")
    assert page.status_code == 200
    assert set(_rows(page.text)) == expected
    if not expected:
        assert "no runs" in page.text


def test_runs_page_filters_by_time(dash: Dash, shared_journal: Journal) -> None:
    """``since``: runs created in that period (all of them here; none in the future)."""
    with dash.client(shared_journal.store) as client:
        recent = client.get("/runs?since=1h")
        assert len(_rows(recent.text)) == 9
        bad = client.get("/runs?since=soon")
    assert bad.status_code == 400 and "is not a duration" in bad.text


def test_runs_page_pages_without_gaps(
    dash: Dash, shared_journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three runs a page: each page links the next (older) one; together they list every
    run once, and only the first page is live."""
    monkeypatch.setattr(_web, "PAGE", 3)
    seen: list[str] = []
    with dash.client(shared_journal.store) as client:
        url: str | None = "/runs"
        while url is not None:
            page = client.get(url)
            assert page.status_code == 200
            seen.extend(_rows(page.text))
            if url != "/runs":
                assert "sse-connect" not in page.text
            found = re.search(r'<a href="(/runs\?[^"]*before=[^"]+)">older', page.text)
            url = found.group(1).replace("&amp;", "&") if found else None
    assert len(seen) == 9 and len(set(seen)) == 9


def test_pages_split_runs_created_at_one_instant(dash: Dash, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Five runs created at the same instant, two a page: none skipped, none repeated."""
    from stalwart.store import SQLiteStore

    async def fill() -> None:
        store = SQLiteStore(str(tmp_path / "ties.db"))
        await store.open()
        try:
            for i in range(7):
                now = 1_700_000_000.0 + (0 if i < 5 else i)
                await store.create_run(run_id=f"t{i}", workflow="w", input="[]", now=now)
        finally:
            await store.close()

    asyncio.run(fill())
    monkeypatch.setattr(_web, "PAGE", 2)
    seen: list[str] = []
    with dash.client(str(tmp_path / "ties.db")) as client:
        url: str | None = "/runs"
        while url is not None:
            page = client.get(url)
            seen.extend(_rows(page.text))
            found = re.search(r'<a href="(/runs\?[^"]*before=[^"]+)">older', page.text)
            url = found.group(1).replace("&amp;", "&") if found else None
    assert sorted(seen) == [f"t{i}" for i in range(7)]


def test_search_by_id_opens_the_run(dash: Dash, shared_journal: Journal) -> None:
    with dash.client(shared_journal.store) as client:
        hit = client.get("/runs?q=ok-1", follow_redirects=False)
        miss = client.get("/runs?q=nope")
    assert hit.status_code == 303 and hit.headers["location"] == "/runs/ok-1"
    assert miss.status_code == 200 and "no run nope in this journal" in miss.text


def test_unknown_status_is_a_400_page(dash: Dash, shared_journal: Journal) -> None:
    with dash.client(shared_journal.store) as client:
        page = client.get("/runs?status=bogus")
    assert page.status_code == 400 and "unknown status &#39;bogus&#39;" in page.text


def test_run_page_shows_steps_and_waterfall(dash: Dash, shared_journal: Journal) -> None:
    with dash.client(shared_journal.store) as client:
        page = client.get("/runs/ok-1")
    assert page.status_code == 200
    html = page.text
    assert 'class="status s-completed"' in html and "<b>result</b>" in html
    assert '<svg class="waterfall"' in html
    assert 'data-step="1"' in html and 'data-step="2"' in html  # one row per step
    assert "add" in html and "journal:" in html  # steps table and the raw events
    assert "sse-connect" not in html  # an ended run is not live


def test_run_page_marks_retries_and_the_dead_letter(dash: Dash, shared_journal: Journal) -> None:
    """The tool that failed 3 times: its waterfall row is marked retried and failed, the
    error is shown, the usage table counts the tool."""
    with dash.client(shared_journal.store) as client:
        html = client.get("/runs/dead-1").text
    row = re.search(r'<g class="row k-tool([^"]*)" data-step="2"', html)
    assert row is not None, html
    assert "f-retried" in row.group(1) and "f-failed" in row.group(1)
    assert "RetryExhaustedError" in html
    assert "tool:lookup" in html


def test_run_page_shows_model_calls_tokens_and_cost(dash: Dash, shared_journal: Journal) -> None:
    with dash.client(shared_journal.store) as client:
        html = client.get("/runs/llm-1").text
    assert '<g class="row k-model' in html
    usage = html[html.index("Tokens and cost") :]
    assert "sim:writer" in usage and "$0" in usage


def test_run_page_shows_an_agents_conversation(dash: Dash, shared_journal: Journal) -> None:
    """The agent's turns with the model that answered each and the origins of what it
    saw (provenance: the tool's output is untrusted), the tool call it asked for and
    the tool's result, in order."""
    with dash.client(shared_journal.store) as client:
        html = client.get("/runs/agent-1").text
    talk = html[html.index('<div class="conversation" data-agent="helper">'):]
    talk = talk[:talk.index("</div>\n</div>") if "</div>\n</div>" in talk else None]
    order = [talk.index(s) for s in ("function:weather-bot", "saw: <span class=\"\">user",
                                     "calls <b>forecast</b>", "tool:forecast",
                                     "Oslo: sunny, 21C", 'class="untrusted">tool:forecast '
                                     "(untrusted)", "Pack sunglasses")]
    assert order == sorted(order), talk


def test_run_page_shows_the_tree_of_child_runs(dash: Dash, shared_journal: Journal) -> None:
    with dash.client(shared_journal.store) as client:
        parent = client.get("/runs/parent-1").text
        child_id = re.search(r'<li [^>]*><a href="/runs/([^"]+)">', parent)
        assert child_id is not None, parent
        child = client.get(f"/runs/{child_id.group(1)}").text
    assert 'href="/runs/parent-1"' in child  # and back up


def test_waiting_run_is_live_and_parked(dash: Dash, shared_journal: Journal) -> None:
    with dash.client(shared_journal.store) as client:
        html = client.get("/runs/wait-1").text
    assert 'sse-connect="/runs/wait-1/stream"' in html and 'sse-close="end"' in html
    assert "f-parked" in html or "waiting" in html


def test_unknown_run_is_a_404_page(dash: Dash, shared_journal: Journal) -> None:
    with dash.client(shared_journal.store) as client:
        page = client.get("/runs/no-such-run")
        stream = client.get("/runs/no-such-run/stream")
        other = client.get("/nowhere")
    assert page.status_code == 404 and "no-such-run" in page.text
    assert "<h1" in page.text  # a page, not a traceback
    assert stream.status_code == 404
    assert other.status_code == 404 and "nothing at /nowhere" in other.text


def test_dlq_page_lists_the_dead_letters(dash: Dash, shared_journal: Journal) -> None:
    with dash.client(shared_journal.store) as client:
        html = client.get("/dlq").text
    assert _rows(html) == ["dead-1"]
    assert "tool:lookup" in html and "RetryExhaustedError" in html


def test_workers_page_shows_the_registry(dash: Dash, shared_journal: Journal) -> None:
    """The runtime that filled the journal registered as a worker and stopped cleanly."""
    with dash.client(shared_journal.store) as client:
        html = client.get("/workers").text
        bad = client.get("/workers?since=x")
    assert 'class="status w-stopped"' in html
    assert bad.status_code == 400


def test_stats_page_shows_errors_latency_and_cost(dash: Dash, shared_journal: Journal) -> None:
    with dash.client(shared_journal.store) as client:
        html = client.get("/stats").text
        recent = client.get("/stats?since=1h").text
    assert "tool:lookup" in html and "TimeoutError x3" in html
    assert "<th title=" in html and ">semantic</th>" in html
    assert "sim:writer" in html
    assert '<svg class="costplot"' in html
    assert "9 run(s)" in recent


def _digest(store: str) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in Path(store).parent.glob(Path(store).name + "*")
    }


def test_looking_writes_nothing(dash: Dash, journal: Journal) -> None:
    """Every page and the token link leave the journal's files byte for byte as they
    were (the store is opened read-only)."""
    before = _digest(journal.store)
    with dash.client(journal.store, authorized=True) as client:
        for url in (
            "/runs",
            "/runs?status=failed",
            "/runs/ok-1",
            "/runs/dead-1",
            "/runs/parent-1",
            "/dlq",
            "/workers",
            "/stats",
            "/runs/nope",
        ):
            assert client.get(url).status_code in (200, 404)
    assert _digest(journal.store) == before


def test_corrupt_journal_is_an_error_page_naming_it(dash: Dash, journal: Journal) -> None:
    """A journal damaged under a running dashboard: an error page that names it, and
    the file is left as it is."""
    path = Path(journal.store)
    for extra in path.parent.glob(path.name + "-*"):
        extra.unlink()
    damaged = b"this is not a journal any more" * 100
    path.write_bytes(damaged)
    with dash.client(journal.store) as client:
        page = client.get("/runs")
    assert page.status_code == 500
    assert "the journal cannot be read" in page.text and str(path) in page.text
    assert path.read_bytes() == damaged


def test_postgres_pages(dash: Dash, pg_journal: Journal) -> None:
    """The same pages over PostgreSQL."""
    with dash.client(pg_journal.store) as client:
        runs = client.get("/runs")
        assert runs.status_code == 200 and len(_rows(runs.text)) == 9
        assert set(_rows(client.get("/runs?workflow=fragile").text)) == {"dead-1"}
        assert client.get("/runs/dead-1").status_code == 200
        assert _rows(client.get("/dlq").text) == ["dead-1"]
        assert client.get("/workers").status_code == 200
        assert "tool:lookup" in client.get("/stats").text
        assert client.get("/runs/nope").status_code == 404


def test_stats_page_shows_the_cluster_wide_limits(dash: Dash, journal: Journal) -> None:
    """The buckets and bulkhead slots the journal keeps: tokens now, slots in use."""
    import time

    from stalwart.store import BucketDraw, SQLiteStore

    with dash.client(journal.store) as client:
        before = client.get("/stats").text
    assert "none kept in this journal" in before and "data-bucket" not in before

    async def hold() -> None:
        store = SQLiteStore(journal.store)
        await store.open()
        try:
            now = time.time()
            await store.rate_reserve([BucketDraw("sim:writer", 3, 5, 1.0)], now=now)
            assert await store.bulkhead_acquire("tool:lookup", "w1:7", max_concurrent=4,
                                                now=now, lease_seconds=600)
        finally:
            await store.close()

    asyncio.run(hold())
    with dash.client(journal.store) as client:
        html = client.get("/stats").text
    bucket = html.split('<tr data-bucket="sim:writer">')[1].split("</tr>")[0]
    assert "<td>5</td>" in bucket and "60/min" in bucket
    pool = html.split('<tr data-pool="tool:lookup">')[1].split("</tr>")[0]
    assert "<td>1</td>" in pool and "w1:7" in pool
