"""Store fixtures: every backend the conformance suite runs against.

``store`` is parametrized over the backends: the SQLite journal in a temporary file
always, PostgreSQL when ``STALWART_TEST_POSTGRES_URL`` names a database (each test gets
its own schema there, dropped afterwards). ``open_another`` opens a second store on the
same journal, as a second worker process would.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from stalwart.store import SQLiteStore, Store
from stalwart.testing import MemoryStore, postgres_schema

PG_ENV = "STALWART_TEST_POSTGRES_URL"
PG_SKIP = f"set {PG_ENV}=postgresql://... to run the PostgreSQL conformance tests"

StoreFactory = Callable[[], Awaitable[Store]]


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search path is a fresh schema, dropped after the test."""
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(PG_SKIP)
    with postgres_schema(url) as scoped:
        yield scoped


@pytest.fixture(params=["sqlite", "postgres", "memory"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """``(backend, location)`` of an empty journal for one test."""
    if request.param == "sqlite":
        return "sqlite", str(tmp_path / "journal.db")
    if request.param == "memory":
        return "memory", ""
    return "postgres", str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def open_another(store_location: tuple[str, str]) -> AsyncIterator[StoreFactory]:
    """Open one more store on the test's journal (closed after the test)."""
    backend, location = store_location
    opened: list[Store] = []
    shared = MemoryStore()  # "another" in-memory store is the same one: one process

    async def factory() -> Store:
        store: Store
        if backend == "memory":
            return shared
        if backend == "sqlite":
            store = SQLiteStore(location)
        else:
            from stalwart.store._postgres import PostgresStore

            store = PostgresStore(location)
        await store.open()
        opened.append(store)
        return store

    yield factory
    for store in reversed(opened):
        await store.close()


@pytest.fixture
async def store(open_another: StoreFactory) -> Store:
    """An open, empty store of each backend."""
    return await open_another()
