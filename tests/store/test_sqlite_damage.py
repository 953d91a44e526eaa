"""The SQLite journal under damage: readers write nothing, and damage is never read as
data.

``crashed`` builds what a SIGKILLed writer leaves behind: a database file, and a WAL
(with its index) holding the last transactions, which no checkpoint folded in. Reading
it must see those transactions and change no byte of the file or the WAL. Flipped bytes
— anywhere in the file, anywhere in the WAL — must give either the journal exactly as
written or a typed StoreError: never other values, never a raw sqlite3 exception.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from stalwart import Runtime
from stalwart.errors import StoreCorruptedError, StoreError
from stalwart.store import EventKind, Finish, NewEvent, Owner, RunStatus, SQLiteStore
from stalwart.store._wal import check_wal

OWNER = Owner(id="w", host="h", pid=1)
SIDES = ("", "-wal", "-shm")


async def write_runs(store: SQLiteStore, first: int, n: int) -> None:
    for i in range(first, first + n):
        await store.create_run(run_id=f"run-{i}", workflow="wf", input=f'["in {i}"]',
                               now=float(i))
    for lease in await store.claim(OWNER, now=100.0, lease_seconds=60, limit=n):
        await store.append(lease, [
            NewEvent(EventKind.STEP_COMPLETED, step_id=str(k), name="f", payload=f'"{k}"')
            for k in range(3)], now=101.0)
        if lease.run_id.endswith(("0", "2", "4", "6", "8")):
            await store.append(lease, [NewEvent(EventKind.RUN_COMPLETED, payload='"ok"')],
                               now=102.0, finish=Finish(RunStatus.COMPLETED, result='"ok"'))


async def crashed(path: Path, *, checkpointed: int = 4, in_wal: int = 3) -> None:
    """A journal as a SIGKILL leaves it: ``checkpointed`` runs in the file, ``in_wal``
    more only in its WAL (the copy is taken while the writer still has it open). The
    checkpoint restarts the WAL without truncating it, as SQLite's own do: the frames
    of the new generation are followed by stale ones of the last."""
    src = path.parent / "live" / path.name
    src.parent.mkdir(exist_ok=True)
    store = SQLiteStore(src)
    await store.open()
    try:
        await write_runs(store, 0, checkpointed)
        with sqlite3.connect(src) as conn:
            conn.execute("PRAGMA wal_checkpoint(RESTART)")
        conn.close()
        await write_runs(store, checkpointed, in_wal)
        for side in SIDES:
            shutil.copyfile(f"{src}{side}", f"{path}{side}")
    finally:
        await store.close()


def files(path: Path) -> dict[str, tuple[bytes, int] | None]:
    """The file's and the WAL's bytes and mtime. A WAL that is absent counts as an empty
    one: SQLite creates an empty WAL (and its index) for a reader, writing nothing in."""
    out: dict[str, tuple[bytes, int] | None] = {}
    for side in ("", "-wal"):
        p = Path(f"{path}{side}")
        out[side] = (p.read_bytes(), p.stat().st_mtime_ns) if p.exists() else None
        if side and (out[side] is None or not out[side][0]):  # type: ignore[index]
            out[side] = None
    return out


async def read_all(store: Any) -> dict[str, Any]:
    """Everything a view could show: each run's record fields and events."""
    out = {}
    for rec in await store.list_runs(limit=1000):
        again = await store.get_run(rec.run_id)
        out[rec.run_id] = (
            (again.workflow, again.workflow_ref, again.status, again.input, again.result,
             again.error, again.parent_run_id, again.created_at),
            [(e.seq, e.kind, e.step_id, e.name, e.payload, e.created_at)
             for e in await store.load_events(rec.run_id)])
    return out


async def test_a_reader_sees_the_wal_and_writes_nothing(tmp_path: Path) -> None:
    """A read-only store reads the WAL's transactions, and leaves the file and the WAL
    byte for byte (and mtime) as they were: no checkpoint, not even at close."""
    path = tmp_path / "j.db"
    await crashed(path)
    before = files(path)
    assert before["-wal"] is not None and len(before["-wal"][0]) > 0
    store = SQLiteStore(path, access="read")
    await store.open()
    try:
        seen = await read_all(store)
        await store.list_workers(since=0)
        with pytest.raises(StoreError, match="read only"):
            await store.create_run(run_id="x", workflow="wf", input="[]", now=1.0)
    finally:
        await store.close()
    assert sorted(seen) == [f"run-{i}" for i in range(7)]  # the WAL's 3 included
    assert files(path) == before


async def test_a_client_runtime_reads_without_writing(tmp_path: Path) -> None:
    """Runtime(worker=False) reads read-only: the file and the WAL stay as they were."""
    path = tmp_path / "j.db"
    await crashed(path)
    before = files(path)
    async with Runtime(path, worker=False) as client:
        assert (await client.get_run("run-5")).status == RunStatus.RUNNING
        assert len(await client.events("run-5")) == 5
        assert len(await client.list_runs()) == 7
    assert files(path) == before


async def test_a_reader_refused_on_an_error_path_writes_nothing(tmp_path: Path) -> None:
    """A journal a reader refuses (newer schema) keeps its file and WAL untouched too."""
    path = tmp_path / "j.db"
    await crashed(path)
    src = tmp_path / "live" / "j.db"
    with sqlite3.connect(f"{src}") as conn:  # the live copy: write the newer version
        conn.execute("UPDATE stalwart_meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    shutil.copyfile(src, path)
    os.remove(f"{path}-wal")
    os.remove(f"{path}-shm")
    before = files(path)
    for access in ("read", "client", "write"):
        with pytest.raises(StoreError, match="journal schema 99"):
            await SQLiteStore(path, access=access).open()  # type: ignore[arg-type]
    assert files(path) == before


def _flip(path: str, offset: int, bit: int = 0) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ (1 << bit)]))


def _frame(path: Path, k: int) -> int:
    """The offset of WAL frame ``k`` (1-based) of ``path``'s journal."""
    with open(f"{path}-wal", "rb") as fh:
        page_size = int.from_bytes(fh.read(12)[8:12], "big")
    return 32 + (k - 1) * (24 + page_size)


@pytest.mark.parametrize("damage", ["middle-frame", "last-frame", "cut-end", "header",
                                    "salt"])
async def test_a_damaged_wal_is_refused_not_read_as_an_older_journal(
        tmp_path: Path, damage: str) -> None:
    """A flipped byte or a cut in the WAL: SQLite would silently read an older journal.
    Every store refuses it with StoreCorruptedError, and leaves all its files as they
    were (the WAL index too, which shows what was committed)."""
    path = tmp_path / "j.db"
    await crashed(path)
    frames = check_wal(str(path)).frames
    assert frames >= 4
    wal = f"{path}-wal"
    if damage == "middle-frame":
        _flip(wal, _frame(path, 2) + 24 + 100)
    elif damage == "last-frame":
        _flip(wal, _frame(path, frames) + 24 + 500)
    elif damage == "cut-end":
        os.truncate(wal, _frame(path, frames) + 1000)  # into the last committed frame
    elif damage == "header":
        _flip(wal, 12)  # the checkpoint sequence number, under the header checksum
    else:
        _flip(wal, _frame(path, 2) + 9)
    before = all_bytes(path)
    for access in ("read", "client", "write"):
        with pytest.raises(StoreCorruptedError, match="WAL"):
            await SQLiteStore(path, access=access).open()  # type: ignore[arg-type]
    with pytest.raises(StoreCorruptedError, match="WAL"):
        async with Runtime(path, worker=False) as client:
            await client.list_runs()
    assert all_bytes(path) == before


async def test_the_torn_end_of_a_crash_is_no_damage(tmp_path: Path) -> None:
    """A frame half-written when the writer died (after the last commit) is what a
    crash leaves: it is ignored, as SQLite does, and the journal opens whole."""
    path = tmp_path / "j.db"
    await crashed(path)
    expected = await _read(path)
    _tear_a_frame(f"{path}-wal")
    report = check_wal(str(path))
    assert not report.damaged and report.notes
    assert await _read(path) == expected


async def _read(path: Path) -> dict[str, Any]:
    store = SQLiteStore(path, access="read")
    await store.open()
    try:
        return await read_all(store)
    finally:
        await store.close()


def _tear_a_frame(wal: str) -> None:
    """Append a frame of this WAL generation whose page was cut short."""
    with open(wal, "rb") as fh:
        salts = fh.read(32)[16:24]
    with open(wal, "ab") as fh:
        fh.write(b"\x00\x00\x00\x02\x00\x00\x00\x00" + salts + b"\x01" * 8 + b"\x07" * 700)


def all_bytes(path: Path) -> dict[str, bytes]:
    """The bytes of the journal's file, WAL and WAL index."""
    return {side: Path(f"{path}{side}").read_bytes() for side in SIDES}


def _copy_flipped(original: Path, work: Path, side: str, offset: int) -> None:
    for s in SIDES:
        target = Path(f"{work}{s}")
        if Path(f"{original}{s}").exists():
            shutil.copyfile(f"{original}{s}", target)
        elif target.exists():
            target.unlink()
    _flip(f"{work}{side}", offset, bit=offset % 8)


async def _flip_outcome(original: Path, work: Path, side: str, offset: int,
                        expected: dict[str, Any]) -> str:
    _copy_flipped(original, work, side, offset)
    try:
        got = await _read(work)
    except StoreError:
        return "refused"
    assert got == expected, f"a flip at {side or 'file'} offset {offset} changed the data"
    return "same"


@pytest.mark.parametrize("side", ["", "-wal"], ids=["file", "wal"])
async def test_flipped_bytes_give_the_journal_or_a_typed_error(tmp_path: Path,
                                                                side: str) -> None:
    """A bit flipped at each of ~440 offsets across the file (or the WAL): every read
    gives the journal exactly as written, or a typed StoreError (mostly
    StoreCorruptedError) — never other values, never a raw sqlite3 error."""
    original = tmp_path / "j.db"
    if side:
        await crashed(original, checkpointed=6, in_wal=2)
    else:
        store = SQLiteStore(original)
        await store.open()
        await write_runs(store, 0, 6)
        await store.close()  # checkpointed: everything is in the file
    expected = await _read(original)
    data = all_bytes(original)[side]
    # Most of a small SQLite file is zeroed free space: sample the bytes that hold
    # something (records, page headers, indexes, the schema) densely, the rest thinly.
    used = [i for i, b in enumerate(data) if b]
    unused = [i for i, b in enumerate(data) if not b]
    offsets = used[::max(1, len(used) // 400)] + unused[::max(1, len(unused) // 40)]
    work = tmp_path / "work" / "j.db"
    work.parent.mkdir()
    outcomes = [await _flip_outcome(original, work, side, offset, expected)
                for offset in sorted(offsets)]
    assert outcomes.count("refused") > 10 and outcomes.count("same") > 10, outcomes
