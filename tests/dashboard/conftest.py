"""Fixtures for the dashboard tests: journals filled by ``dash_app.populate`` (SQLite, and
PostgreSQL when ``STALWART_TEST_POSTGRES_URL`` names a database), in-process clients
(Starlette's TestClient) and a real server (uvicorn in a thread) for the live pages and
the browser."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from stalwart.testing import postgres_schema

pytest.importorskip("starlette", reason="the dashboard extra is not installed")

import uvicorn
from starlette.testclient import TestClient

from stalwart.cli.dashboard._command import listen
from stalwart.cli.dashboard._web import Settings, create_app

PG_ENV = "STALWART_TEST_POSTGRES_URL"
TOKEN = "test-token-0123456789"
APP = Path(__file__).with_name("dash_app.py")


def _load_app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stalwart_tests_dash_app", APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


dash_app = _load_app()


@dataclass(frozen=True)
class Journal:
    store: str
    ids: dict[str, str]
    dir: Path

    def work(self, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        """``await fn(runtime)`` on this journal, in a thread of its own (a browser test's
        thread has Playwright's event loop running)."""

        async def go() -> Any:
            rt = dash_app.runtime(self.store)
            try:
                return await fn(rt)
            finally:
                await rt.close()

        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, go()).result()

    def record(self, run_id: str) -> Any:
        return self.work(lambda rt: rt.get_run(run_id))


def _fill(store: str, where: Path) -> Journal:
    return Journal(store, asyncio.run(dash_app.populate(store, where)), where)


@pytest.fixture(scope="session")
def shared_journal(tmp_path_factory: pytest.TempPathFactory) -> Journal:
    """A SQLite journal with one run of each kind, shared by the read-only tests."""
    where = tmp_path_factory.mktemp("dash-shared")
    return _fill(str(where / "journal.db"), where)


@pytest.fixture
def journal(shared_journal: Journal, tmp_path: Path) -> Journal:
    """A copy of the shared journal of this test's own (for the tests that act)."""
    for part in Path(shared_journal.store).parent.glob("journal.db*"):  # -wal too
        shutil.copy(part, tmp_path / part.name)
    return Journal(str(tmp_path / "journal.db"), shared_journal.ids, tmp_path)


@pytest.fixture
def pg_journal(tmp_path: Path) -> Iterator[Journal]:
    """The same runs in a fresh PostgreSQL schema (skipped without a database)."""
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"set {PG_ENV}=postgresql://... to run the PostgreSQL dashboard tests")
    with postgres_schema(url, prefix="stalwart_dash") as scoped:
        yield _fill(scoped, tmp_path)


@contextmanager
def _client_for(store: str, *, read_only: bool = False, authorized: bool = False,
               ) -> Iterator[TestClient]:
    """A TestClient on a dashboard over ``store`` (one event loop for its life, as a
    server has); ``authorized``: it opened the token link first (it holds the cookie)."""
    app = create_app(Settings(store=store, token=TOKEN, read_only=read_only,
                              poll_interval=0.05))
    with TestClient(app, base_url="http://127.0.0.1:8765") as client:
        if authorized:
            landed = client.get(f"/runs?token={TOKEN}")
            assert landed.status_code == 200, landed.text
        yield client


@dataclass
class Served:
    """A dashboard served by uvicorn in a thread, on a free port."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def token_url(self) -> str:
        return f"{self.url}/runs?token={TOKEN}"


def serve(store: str, *, poll: float = 0.05) -> Served:
    sock = listen("127.0.0.1", 0)
    app = create_app(Settings(store=store, token=TOKEN, poll_interval=poll))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    return Served(f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread)


@pytest.fixture
def served(journal: Journal) -> Iterator[tuple[Served, Journal]]:
    s = serve(journal.store)
    try:
        yield s, journal
    finally:
        s.server.should_exit = True
        s.thread.join(15)


CHROMIUM = os.environ.get("STALWART_TEST_CHROMIUM", "/usr/bin/chromium")


def missing_browser(path: str, env: Mapping[str, str]) -> tuple[bool, str] | None:
    """``None`` when there is a browser at ``path``; else ``(fail, why)``: a CI run
    (``CI=true``) fails, a developer's skips, both saying why."""
    if Path(path).exists():
        return None
    why = (f"no Chromium at {path} (apt-get install chromium, as .ci/run does; or set "
           "STALWART_TEST_CHROMIUM)")
    if env.get("CI") == "true":
        return True, f"{why}: with CI=true the browser tests run, they never skip"
    return False, why


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright (``executable_path``: Playwright's own
    browser download cannot work on these machines), one for the browser tests' module:
    Playwright's sync API keeps an event loop running in this thread while it is open,
    and the tests after that module call ``asyncio.run``."""
    missing = missing_browser(CHROMIUM, os.environ)
    if missing is not None:
        fail, why = missing
        if fail:
            pytest.fail(why)
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM)
        try:
            yield chromium
        finally:
            chromium.close()


class Dash:
    """The helpers above, for the tests (``--import-mode=importlib`` cannot import
    conftest by name): ``dash.client(store, ...)``, ``dash.serve(store)``, ``dash.app``
    (the workflows), ``dash.token``."""

    client = staticmethod(_client_for)
    serve = staticmethod(serve)
    app = dash_app
    token = TOKEN
    missing_browser = staticmethod(missing_browser)


@pytest.fixture
def dash() -> Dash:
    return Dash()
