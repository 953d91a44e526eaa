"""Fixtures for the fleet tests: a fresh PostgreSQL schema, worker processes, ledgers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stalwart.testing import postgres_schema

HERE = Path(__file__).parent
# `fleet_app` (the workers' module) and `fleet_checks` import by name, in the tests as in
# the worker processes (which run with this folder as their working directory).
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
PG_ENV = "STALWART_TEST_POSTGRES_URL"
PG_SKIP = f"set {PG_ENV}=postgresql://... to run the PostgreSQL fleet tests"


def create_journal(url: str) -> None:
    """Create the journal at ``url`` (as the first worker would in an empty schema)."""
    import asyncio

    from stalwart.store._postgres import PostgresStore

    async def create() -> None:
        store = PostgresStore(url)
        await store.open()
        await store.close()

    asyncio.run(create())


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search path is a fresh schema holding an empty journal,
    dropped after the test. The tests' ledger tables go beside it: a worker creates a
    journal only in an empty schema, never beside an application's tables."""
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(PG_SKIP)
    with postgres_schema(url, prefix="stalwart_fleet") as scoped:
        create_journal(scoped)
        yield scoped


class Fleet:
    """``stalwart worker`` processes on one store; all stopped (SIGKILL) at the end."""

    def __init__(self, store: str, tmp: Path, env: dict[str, str] | None = None) -> None:
        self.store = store
        self.tmp = tmp
        self.env = {**os.environ, **(env or {})}
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        n = len(self.procs)
        log = (self.tmp / f"worker-{n}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "stalwart.cli", "worker", "--store", self.store,
             "--import", "fleet_app", *args],
            cwd=HERE, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        return (self.tmp / f"worker-{self.procs.index(proc)}.log").read_text()

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
        """SIGTERM and wait: the worker's exit status."""
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=timeout)

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    """``make_fleet(store, env=None)``: a fleet whose workers are killed after the test."""
    made: list[Fleet] = []

    def make(store: str, env: dict[str, str] | None = None) -> Fleet:
        folder = tmp_path / f"fleet-{len(made)}"
        folder.mkdir()
        made.append(Fleet(store, folder, env))
        return made[-1]

    yield make
    for fleet in made:
        fleet.kill_all()
