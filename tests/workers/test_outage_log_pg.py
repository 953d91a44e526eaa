"""A PostgreSQL outage as a worker logs it: one line when it begins, one when it ends.

The worker reaches PostgreSQL through a proxy in the test that can cut every connection
and refuse new ones (the database is gone as far as the worker can tell), then let them
through again. The exact cadence (a reminder a minute) is checked in virtual time in
``tests/engine/test_outage_log.py``; this checks the real store's errors take that path.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import fleet_app as fa  # this folder is on sys.path (see conftest.py)
import pytest
from test_worker_cli import reserved_port, start, status_is, until, wait_for_log

from stalwart.store import RunStatus

Fleet = Any

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


class CuttableProxy:
    """Forwards TCP to PostgreSQL; ``cut()`` drops every connection and refuses new
    ones (counting them) until ``mend()``."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.down = False
        self.refused = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def handle(self, client_r: asyncio.StreamReader,
                     client_w: asyncio.StreamWriter) -> None:
        if self.down:
            self.refused += 1
            client_w.close()
            return
        server_r, server_w = await asyncio.open_connection(self.host, self.port)
        self.writers |= {client_w, server_w}
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))
        self.writers -= {client_w, server_w}

    def cut(self) -> None:
        self.down = True
        for w in list(self.writers):
            w.close()

    def mend(self) -> None:
        self.down = False


async def test_a_worker_logs_a_database_outage_as_two_lines_without_tracebacks(
        pg_url: str, make_fleet: Callable[..., Fleet]) -> None:
    """Every connection is cut and new ones refused while the worker polls 5 times a
    second; its log says the store is unreachable once and reachable again once, with
    no traceback, and it then executes runs as before."""
    target = urllib.parse.urlsplit(pg_url)
    held, port = reserved_port()
    user = f"{target.username}@" if target.username else ""
    proxied = target._replace(netloc=f"{user}127.0.0.1:{port}").geturl()
    proxy = CuttableProxy(target.hostname or "127.0.0.1", target.port or 5432)
    held.listen()
    server = await asyncio.start_server(proxy.handle, sock=held)
    fleet = make_fleet(proxied)
    proc = fleet.start("--poll", "0.2")
    try:
        await wait_for_log(fleet, proc, "executes")
        await start(pg_url, fa.chain, 1, run_id="before")
        await until(lambda: status_is(pg_url, "before", RunStatus.COMPLETED), timeout=30)
        before = len(fleet.log(proc))
        proxy.cut()
        await wait_for_log(fleet, proc, "is unreachable")

        async def many_refused() -> bool:  # it keeps trying while the store is down
            return proxy.refused >= 15
        await until(many_refused, timeout=60)
        proxy.mend()
        await wait_for_log(fleet, proc, "is reachable again")
        during = fleet.log(proc)[before:]
        await start(pg_url, fa.chain, 2, run_id="after")
        await until(lambda: status_is(pg_url, "after", RunStatus.COMPLETED), timeout=30)
    finally:
        proc.terminate()
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        server.close()
    assert "Traceback" not in during, during
    assert during.count("is unreachable") == 1, during
    assert during.count("is reachable again") == 1, during
    lines = [ln for ln in during.splitlines() if ln.strip()]
    # The outage, the listener losing its connection, and at most a pool's complaint
    # or two: a handful of lines, not one per failed poll.
    assert len(lines) <= 6, during
