"""A blackboard shared by four ``stalwart worker`` processes on PostgreSQL: eight
consumer runs, spread over the workers, race to take 60 jobs; each job is taken exactly
once, by the run that reports it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import stalwart as sw

from .conftest import Fleet

pytestmark = pytest.mark.slow


async def test_four_workers_take_each_entry_of_a_board_exactly_once(
        pg_url: str, make_fleet: Callable[..., Fleet]) -> None:
    """60 jobs, 8 consumers over 4 worker processes: the union of what they took is
    every job, no job twice; the store says each was taken by the run that returned it,
    and more than one process took jobs."""
    import board_app

    fleet = make_fleet(pg_url)
    for _ in range(4):
        fleet.start("--import", "board_app", "--concurrency", "4")
    app = sw.Runtime(pg_url, worker=False)
    app.register(board_app.produce)
    app.register(board_app.consume)
    async with app:
        assert await (await app.start(board_app.produce, 60)).result(timeout=120) == 60
        handles = [await app.start(board_app.consume) for _ in range(8)]
        results: list[dict[str, Any]] = list(await asyncio.gather(
            *(h.result(timeout=120) for h in handles)))
        entries = await app.store.board_entries("jobs")  # type: ignore[attr-defined]
    taken = [k for r in results for k in r["taken"]]
    assert sorted(taken) == [f"job:{i:03d}" for i in range(60)]
    by_run = {k: h.run_id for h, r in zip(handles, results, strict=True) for k in r["taken"]}
    assert {e.key: e.taken_by.split(":")[0] for e in entries} == by_run
    assert len({r["pid"] for r in results}) > 1
