"""The workers registry lists workers, not every process that touches the journal."""

from __future__ import annotations

import asyncio

import stalwart as sw
from stalwart.testing import MemoryStore


async def test_a_runtime_registers_unless_told_not_to() -> None:
    """Runtime() appears in the registry; Runtime(register_worker=False) does not."""
    for register in (True, False):
        store = MemoryStore()
        app = sw.Runtime(store, clock=sw.FakeClock(autojump=True), register_worker=register)
        async with app:
            pass
        listed = [w.worker_id for w in await store.list_workers(since=0)]
        assert listed == ([app.owner.id] if register else [])


async def test_an_unregistered_runtime_still_renews_its_leases() -> None:
    """Out of the registry, the heartbeat goes on renewing the leases of the runs it
    executes (exact, in virtual time: claimed at 0 for 3 s, still held at 5.5 s)."""
    clock = sw.FakeClock(autojump=True)
    store = MemoryStore()
    app = sw.Runtime(store, clock=clock, register_worker=False, lease_seconds=3.0)

    async def hold() -> str:
        await clock.sleep(10)
        return "done"

    @app.workflow
    async def slow(ctx: sw.Context) -> str:
        return await ctx.step(hold)

    async with asyncio.timeout(30), app:  # real seconds: a lost lease must not hang it
        handle = await app.start(slow)
        claimed = clock.now()
        await clock.sleep(5.5)
        held = await app.get_run(handle.run_id)
        assert held.lease_expires_at is not None
        assert held.lease_expires_at > clock.now() > claimed + 3.0  # renewed since
        assert await handle.result() == "done"
    assert await store.list_workers(since=0) == []
