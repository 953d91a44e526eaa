"""A store outage is logged as state changes, one line each, in virtual time.

While the store is down a worker says so once, then once a minute, then once when it is
back: not an ERROR with a traceback for every failed poll and heartbeat.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import pytest

from stalwart import Context, FakeClock, Runtime, Workflow
from stalwart.engine._outage import StoreHealth
from stalwart.errors import StoreError
from stalwart.testing import MemoryStore


class DownStore:
    """A MemoryStore whose every operation raises a retryable StoreError while ``down``
    (a database restart, a cut network), as a real store's would."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.down = False
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name in ("open", "close") or not inspect.iscoroutinefunction(attr):
            return attr

        async def guarded(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                self.refused += 1
                raise StoreError("connection refused (simulated outage)", retryable=True)
            return await attr(*args, **kwargs)

        return guarded


async def _echo(ctx: Context, x: int) -> int:
    return await ctx.step(double, x)


async def double(x: int) -> int:
    return 2 * x


echo = Workflow(_echo, name="echo")


def _lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records
            if r.name.startswith("stalwart")]


def test_the_health_logs_a_loss_a_reminder_a_minute_and_the_return() -> None:
    """Failures at every second for 150 s: one ERROR at the first, a WARNING at 60 s and
    120 s, and one WARNING when it answers again, with how long it lasted."""
    clock = FakeClock()
    seen: list[tuple[int, str]] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            assert record.exc_info is None  # one line: no traceback
            seen.append((record.levelno, record.getMessage()))

    logger = logging.getLogger("test.outage")
    logger.propagate = False
    logger.addHandler(Catch())
    health = StoreHealth("sqlite:///j.db", clock, logger)
    health.ok()
    for _ in range(151):
        health.failed("claiming runs", StoreError("connection\nrefused"))
        clock.advance_sync(1.0)
    assert not health.reachable
    health.ok()
    health.ok()
    assert seen == [
        (logging.ERROR, "store sqlite:///j.db is unreachable (claiming runs: connection "
                        "refused); retrying"),
        (logging.WARNING, "store sqlite:///j.db is still unreachable after 1m00s (last: "
                          "claiming runs: connection refused)"),
        (logging.WARNING, "store sqlite:///j.db is still unreachable after 2m00s (last: "
                          "claiming runs: connection refused)"),
        (logging.WARNING, "store sqlite:///j.db is reachable again after 2m31s"),
    ]
    assert health.reachable


async def test_a_worker_logs_a_five_minute_outage_in_six_lines(
        caplog: pytest.LogCaptureFixture) -> None:
    """A worker whose store is down for 290 virtual seconds (its scheduler fails every
    second, its heartbeat every 10 s) logs: unreachable, still unreachable four times,
    reachable again; no traceback. Then it executes runs as before."""
    caplog.set_level(logging.DEBUG, logger="stalwart")
    clock = FakeClock(autojump=True)
    store = DownStore()
    rt = Runtime(store, clock=clock, poll_interval=1.0)  # type: ignore[arg-type]
    async with rt:
        assert await rt.run(echo, 1) == 2
        caplog.clear()
        store.down = True
        await clock.sleep(290)
        store.down = False
        await clock.sleep(5)
        assert await rt.run(echo, 2) == 4
    assert store.refused > 290  # it did keep trying: a poll a second, and heartbeats
    lines = _lines(caplog)
    assert all(r.exc_info is None for r in caplog.records), lines
    kinds = [("lost" if "is unreachable" in m else "still" if "still" in m
              else "back" if "reachable again" in m else m) for _, m in lines]
    assert kinds == ["lost", "still", "still", "still", "still", "back"], lines
    assert lines[0][0] == "ERROR"
    assert lines[-1][1].endswith("is reachable again after 4m50s"), lines


@pytest.mark.parametrize("make", [lambda: ValueError("a bug")], ids=["bug"])
async def test_an_error_that_is_not_the_store_keeps_its_traceback(
        caplog: pytest.LogCaptureFixture, make: Callable[[], Exception]) -> None:
    """The scheduler failing for another reason (a bug, not an outage) is logged with its
    traceback, and the store is not reported unreachable."""
    clock = FakeClock(autojump=True)
    store = DownStore()
    rt = Runtime(store, clock=clock, poll_interval=1.0)  # type: ignore[arg-type]
    calls = 0

    async def broken(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        raise make()

    async with rt:
        store.inner.claim = broken  # type: ignore[method-assign]
        await clock.sleep(3)
    assert calls >= 2
    failures = [r for r in caplog.records if "cannot claim runs" in r.getMessage()]
    assert failures and all(r.exc_info is not None for r in failures)
    assert not any("unreachable" in r.getMessage() for r in caplog.records)
