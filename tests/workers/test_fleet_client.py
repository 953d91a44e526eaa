"""A fleet from the README: ``stalwart worker`` processes execute, code elsewhere starts.

The module below is what a user writes: a runtime and a workflow. Workers import it; a
web handler or script imports it too and starts runs through ``app.client()``, which
executes nothing itself. A worker says which journal it serves, from where, and warns
when that is a local file or the default one; on PostgreSQL it opens at most
``--max-connections`` pooled connections plus one to LISTEN.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SHOP = '''
import asyncio
import os

import stalwart as sw

app = sw.Runtime(os.environ["SHOP_STORE"]) if os.environ.get("SHOP_STORE") else sw.Runtime()


def where() -> int:
    return os.getpid()


@app.workflow
async def order(ctx: sw.Context, item: str, pause: float = 0.0) -> dict[str, object]:
    pid = await ctx.step(where)
    if pause:
        await ctx.step(asyncio.sleep, pause, name="pause")
    return {"item": item, "pid": pid}
'''


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A module with a runtime and a workflow, importable here and by workers."""
    name = f"shop_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(SHOP)
    sys.path.insert(0, str(tmp_path))
    try:
        yield name, tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


class Worker:
    def __init__(self, folder: Path, *args: str, env: dict[str, str]) -> None:
        self.log_path = folder / f"worker-{uuid.uuid4().hex[:6]}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stalwart.cli", "worker", *args], cwd=folder,
                env=env, stdout=log, stderr=subprocess.STDOUT)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    async def wait_for(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            assert self.proc.poll() is None, self.log
            assert time.monotonic() < deadline, self.log
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=30)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STALWART_")}
    return {**env, **extra}


async def test_runs_started_through_the_client_are_executed_by_the_worker(
        shop: tuple[str, Path]) -> None:
    """The worker takes its journal from the module's Runtime and says so (a local
    file: it warns); a run started through ``app.client()`` in this process is executed
    in the worker's process, and its handle returns the result."""
    name, folder = shop
    journal = folder / "shop.db"
    os.environ["SHOP_STORE"] = str(journal)
    try:
        module = importlib.import_module(name)
        worker = Worker(folder, "--import", name, "--poll", "0.1",
                        env=_env(SHOP_STORE=str(journal)))
        try:
            await worker.wait_for("executes")
            async with module.app.client() as client:
                handle = await client.start(module.order, "book")
                result = await handle.result(timeout=30)
            assert result == {"item": "book", "pid": worker.proc.pid}
            assert result["pid"] != os.getpid()
        finally:
            worker.stop()
    finally:
        del os.environ["SHOP_STORE"]
    log = worker.log
    assert f"serving the journal sqlite:///{journal} (from the Runtime of {name})" in log
    assert f"warning: the journal is a local SQLite file ({journal.resolve()})" in log
    assert "no --store and no $STALWART_STORE" not in log


async def test_a_worker_on_the_default_journal_says_so(shop: tuple[str, Path]) -> None:
    """No --store, no $STALWART_STORE, a Runtime() without a store: the worker serves
    ./.stalwart/stalwart.db and warns that nothing chose it."""
    name, folder = shop
    worker = Worker(folder, "--import", name, env=_env())
    try:
        await worker.wait_for("local SQLite file")
    finally:
        worker.stop()
    default = (folder / ".stalwart" / "stalwart.db").resolve()
    assert "(from the default)" in worker.log
    assert (f"warning: no --store and no $STALWART_STORE: this worker serves the default "
            f"journal, {default}, in the working directory") in worker.log


async def test_a_worker_names_the_environment_as_the_store_it_serves(
        shop: tuple[str, Path]) -> None:
    """A journal from $STALWART_STORE is named as such (no 'default' warning)."""
    name, folder = shop
    journal = folder / "env.db"
    worker = Worker(folder, "--import", name, env=_env(STALWART_STORE=str(journal)))
    try:
        await worker.wait_for("local SQLite file")
    finally:
        worker.stop()
    assert f"serving the journal sqlite:///{journal} (from $STALWART_STORE)" in worker.log
    assert "no --store and no $STALWART_STORE" not in worker.log


def test_max_connections_is_refused_for_an_sqlite_journal(shop: tuple[str, Path]) -> None:
    """--max-connections sizes a PostgreSQL pool; on a file it is an error (exit 2)."""
    name, folder = shop
    done = subprocess.run(
        [sys.executable, "-m", "stalwart.cli", "worker", "--import", name, "--store",
         str(folder / "j.db"), "--max-connections", "3"], cwd=folder, env=_env(),
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "--max-connections is for a PostgreSQL store" in done.stderr


def _connections(admin_url: str, application: str) -> int:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                           (application,)).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.postgres
@pytest.mark.parametrize(("option", "most"), [((), 10), (("--max-connections", "2"), 2)],
                         ids=["default", "two"])
async def test_a_postgres_worker_opens_its_pool_and_one_listener_at_most(
        shop: tuple[str, Path], pg_url: str, option: tuple[str, ...], most: int) -> None:
    """Twelve runs in flight at once hold a step each: the worker's connections, counted
    by PostgreSQL, never exceed its pool size plus the one that LISTENs. The banner
    names the database, without a local-file warning."""
    name, folder = shop
    application = f"w{uuid.uuid4().hex[:8]}"
    sep = "&" if "?" in pg_url else "?"
    worker_url = f"{pg_url}{sep}application_name={application}"
    module = importlib.import_module(name)
    worker = Worker(folder, "--import", name, "--store", worker_url, "--concurrency", "12",
                    "--poll", "0.1", *option, env=_env())
    seen = 0
    try:
        await worker.wait_for("executes")
        from stalwart import Runtime

        async with Runtime(pg_url, worker=False) as client:
            handles = [await client.start(module.order, f"item-{i}", 1.5) for i in range(12)]
            waiting = asyncio.gather(*(h.result(timeout=60) for h in handles))
            while not waiting.done():
                seen = max(seen, await asyncio.to_thread(_connections, pg_url, application))
                await asyncio.sleep(0.05)
            results = await waiting
        assert {r["pid"] for r in results} == {worker.proc.pid}
    finally:
        worker.stop()
    assert 2 <= seen <= most + 1, seen
    assert "serving the journal postgresql://" in worker.log
    assert "local SQLite file" not in worker.log
