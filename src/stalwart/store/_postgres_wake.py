"""PostgresStore's wake-ups: ``NOTIFY stalwart_wake`` after a write commits, and the
``LISTEN`` that lets a scheduler sleep until one comes.

A write records the run ids it will wake (:func:`notify`, inside :func:`collected`);
once its transaction commits the store hands them to a :class:`Notifier`, which sends
them in transactions of its own, coalesced. Not inside the write: PostgreSQL serializes
the commits of transactions that NOTIFY (one lock, held through the commit's WAL
flush), which made the writes of concurrent workers queue behind one another. A
:class:`Listener` holds one dedicated connection subscribed to the channel and
reconnects by itself. Kept apart from ``_postgres`` because none of it reads or writes
a journal row: it is a side channel, and polling stays the safety net (a notification
can be lost to a crash between a commit and the notifier, or while a listener
reconnects).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from ..errors import StoreError

__all__ = ["CHANNEL", "Listener", "Notifier", "collected", "notify"]

log = logging.getLogger("stalwart.store.postgres")

Conn = AsyncConnection[TupleRow]

CHANNEL = "stalwart_wake"
"""The ``LISTEN``/``NOTIFY`` channel; each notification's payload is a run id."""

_notes: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "stalwart_pg_notes", default=None)
"""The run ids the current write transaction will notify about once it commits."""


@contextlib.contextmanager
def collected() -> Iterator[list[str]]:
    """The run ids that :func:`notify` is asked about within the block (one write
    transaction), to send once it commits."""
    notes: list[str] = []
    token = _notes.set(notes)
    try:
        yield notes
    finally:
        _notes.reset(token)


async def notify(conn: Conn, run_id: str) -> None:
    """Wake listeners about ``run_id`` once the current write commits."""
    notes = _notes.get()
    if notes is None:  # outside _write/_flush: notify within the transaction
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, run_id))
    else:
        notes.append(run_id)


class Notifier:
    """Sends the run ids it is given, in transactions of its own, one task at a time.

    Args:
        connection: a pooled connection of the store (raises StoreError once closed).
        is_open: whether the store is still open (a closed store sends nothing more).
        url: the store's printable URL, for the log.
    """

    def __init__(self, connection: Callable[[], AbstractAsyncContextManager[Conn]],
                 is_open: Callable[[], bool], url: str) -> None:
        self._connection = connection
        self._is_open = is_open
        self._url = url
        self._to_notify: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def send(self, run_ids: list[str]) -> None:
        """Queue ``run_ids``; the notifier's task sends them (started if need be)."""
        if not run_ids or not self._is_open():
            return
        self._to_notify.update(run_ids)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="stalwart-pg-notify")

    async def idle(self) -> None:
        """Wait until what was queued is sent (or failed; never raises)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while self._to_notify and self._is_open():
            run_ids = sorted(self._to_notify)
            self._to_notify.clear()
            try:
                async with self._connection() as conn:
                    await conn.execute("SELECT pg_notify(%s, x) FROM unnest(%s::text[]) AS x",
                                       (CHANNEL, run_ids))
            except (psycopg.Error, StoreError) as exc:
                log.warning("%s: NOTIFY %s failed (%s); listeners will poll", self._url,
                            CHANNEL, exc)


class Listener:
    """``LISTEN stalwart_wake`` on a dedicated connection, from :meth:`wait`'s first
    call until :meth:`stop`; a dropped connection reconnects by itself."""

    def __init__(self, conninfo: str, *, connect_timeout: float, url: str) -> None:
        self._conninfo = conninfo
        self._connect_timeout = connect_timeout
        self._url = url
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._notified = asyncio.Event()

    async def wait(self, timeout: float) -> bool:
        """Whether a notification came (since the previous call) within ``timeout``."""
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name="stalwart-pg-listen")
        try:
            await asyncio.wait_for(self._notified.wait(), timeout)
        except TimeoutError:
            return False
        self._notified.clear()
        return True

    async def subscribed(self) -> None:
        """Wait until the connection is subscribed."""
        await self._listening.wait()

    async def stop(self) -> None:
        """Stop listening (a later :meth:`wait` listens again)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self._listening = asyncio.Event()

    async def _listen(self) -> None:
        # An outage is logged once when it breaks the listener and once when it is back
        # (the runtime logs the outage itself): not a line per reconnection attempt.
        delay, first, failing = 0.1, True, False
        while True:
            try:
                conn = await AsyncConnection.connect(
                    self._conninfo, autocommit=True,
                    connect_timeout=int(self._connect_timeout))
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._listening.set()
                    if not first:
                        self._notified.set()
                    if failing:
                        log.info("%s: LISTEN %s is back", self._url, CHANNEL)
                    first, delay, failing = False, 0.1, False
                    async for _ in conn.notifies():
                        self._notified.set()
            except psycopg.Error as exc:
                log.log(logging.DEBUG if failing else logging.WARNING,
                        "%s: LISTEN %s failed (%s); reconnecting", self._url, CHANNEL,
                        " ".join(str(exc).split()))
                failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
