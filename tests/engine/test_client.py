"""``app.client()``: starts and waits for runs of the app's workflows, executes none."""

from __future__ import annotations

from pathlib import Path

import pytest

from stalwart import Context, FakeClock, Runtime
from stalwart.testing import MemoryStore


def _app(store: object, clock: FakeClock | None = None) -> tuple[Runtime, object]:
    app = Runtime(store, clock=clock)  # type: ignore[arg-type]

    def shout(text: str) -> str:
        return text.upper()

    @app.workflow
    async def greet(ctx: Context, name: str) -> str:
        return await ctx.step(shout, f"hello {name}")

    return app, greet


async def test_a_client_starts_a_run_that_only_a_worker_executes() -> None:
    """Started through the client, the run waits (a minute of virtual time passes with
    it pending); the app's own runtime, a worker, then executes it and the client's
    handle returns the result."""
    clock = FakeClock(autojump=True)
    store = MemoryStore()
    app, greet = _app(store, clock)
    client = app.client()
    assert client.worker is False and client.store is store
    assert list(client.workflows) == list(app.workflows) == [greet.name]  # type: ignore[attr-defined]
    async with client:
        handle = await client.start(greet, "ada", run_id="r1")
        with pytest.raises(TimeoutError):
            await handle.result(timeout=60)
        assert (await client.get_run("r1")).status == "pending"
        async with app:
            assert await handle.result(timeout=60) == "HELLO ADA"


async def test_a_client_of_a_file_journal_opens_its_own_connection(tmp_path: Path) -> None:
    """A runtime made from a path gives a client on the same file through a store of its
    own: closing the client leaves the app's store open."""
    path = tmp_path / "j.db"
    app, greet = _app(str(path))
    async with app:
        client = app.client()
        assert client.store is not app.store
        assert client.store.url == app.store.url
        async with client:
            handle = await client.start(greet, "bob")
            assert await handle.result(timeout=30) == "HELLO BOB"
        assert await app.run(greet, "cy") == "HELLO CY"  # still open


async def test_a_client_on_another_store_is_given_it(tmp_path: Path) -> None:
    """``client(store)`` works on the store it is given."""
    app, _ = _app(MemoryStore())
    other = MemoryStore()
    assert app.client(other).store is other
