"""Checksums of the journal, in one place for every store.

Every event row carries a ``digest``: a hash of the digest of the event before it in
its run and of every field of its own (run id, sequence number, kind, step id, name,
payload, time). A run's events thus form a chain from a fixed origin (:data:`GENESIS`):
a changed byte anywhere in an event, a missing event, two events swapped or an event of
another run changes a digest. The run row keeps the chain's length (``event_count``) and
its last digest (``event_head``), written in the same statement that already updates the
count, so a lost tail is caught too. Each digest is computed once, where the event is
appended, from values the writer already holds: no second write and no extra read.

The run row has two more: ``run_digest`` over what a run is (id, workflow, where it is
defined, input, parent, creation time), written once, and ``outcome_digest`` over its
result and error, written with them. The row's scheduling fields (status, lease, wake
time, update time) change at every claim and are not covered: a damaged status is caught
because it no longer names a status, and ``stalwart doctor`` compares a finished run's
status with its journal.

Readers verify on load and raise :class:`~stalwart.errors.StoreCorruptedError` naming the
run and the sequence number where the chain breaks. SQLite, PostgreSQL and
:class:`~stalwart.testing.MemoryStore` all call these functions and nothing else to hash
or check, so a journal verifies the same way wherever it is read.

The hash is BLAKE2b with a 16-byte digest (hex): it detects damage — flipped bits, torn
or lost rows, a journal edited by hand. It is not a signature: whoever can write the
journal can also recompute the chain.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import StoreCorruptedError
from ._base import Event, EventKind, NewEvent, RunRecord, RunStatus

__all__ = [
    "GENESIS",
    "RUN_COLUMNS",
    "StoredEvent",
    "chain",
    "event_digest",
    "outcome_digest",
    "run_digest",
    "run_record",
    "verify_each",
    "verify_events",
]

GENESIS = "0" * 32
"""The "previous digest" of a run's first event, and ``event_head`` of a run with none."""

StoredEvent = tuple[int, str, str | None, str | None, str | None, float, str | None]
"""An event row as stores read it: ``(seq, kind, step_id, name, payload, created_at,
digest)``."""


def _encode(*fields: str | int | float | None) -> bytes:
    """An unambiguous encoding: each field as its length and text, ``None`` as ``-``."""
    parts = []
    for value in fields:
        if value is None:
            parts.append("-")
            continue
        if isinstance(value, float):
            text = value.hex()
        elif isinstance(value, int):
            text = str(value)
        else:
            text = value
        parts.append(f"{len(text)}:{text}")
    return "|".join(parts).encode("utf-8", "surrogatepass")


def _hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def event_digest(prev: str, run_id: str, seq: int, kind: str, step_id: str | None,
                 name: str | None, payload: str | None, created_at: float) -> str:
    """The digest of one event, chained to ``prev`` (the digest of the event before it in
    its run, :data:`GENESIS` for the first).

    The same encoding as :func:`_encode`, written out: this runs for every event written
    and read, and the general loop costs twice as much."""
    s, t, k = str(seq), float(created_at).hex(), str(kind)
    text = (f"5:event|{len(prev)}:{prev}|{len(run_id)}:{run_id}|{len(s)}:{s}|{len(k)}:{k}|"
            f"{'-' if step_id is None else f'{len(step_id)}:{step_id}'}|"
            f"{'-' if name is None else f'{len(name)}:{name}'}|"
            f"{'-' if payload is None else f'{len(payload)}:{payload}'}|{len(t)}:{t}")
    return _hash(text.encode("utf-8", "surrogatepass"))


def chain(prev: str, run_id: str, first_seq: int, events: Sequence[NewEvent],
          now: float) -> list[str]:
    """The digests of ``events`` appended at ``now`` after the event whose digest is
    ``prev``, the first getting sequence number ``first_seq``."""
    out = []
    for i, ev in enumerate(events):
        prev = event_digest(prev, run_id, first_seq + i, ev.kind, ev.step_id, ev.name,
                            ev.payload, now)
        out.append(prev)
    return out


def run_digest(run_id: str, workflow: str, workflow_ref: str | None, input: str,
               parent_run_id: str | None, parent_step_id: str | None,
               created_at: float) -> str:
    """The digest of what a run is, written once when it is created."""
    return _hash(_encode("run", run_id, workflow, workflow_ref, input, parent_run_id,
                         parent_step_id, float(created_at)))


def outcome_digest(run_id: str, result: str | None, error: str | None) -> str:
    """The digest of a run's result and error (both ``None`` until it ends)."""
    return _hash(_encode("outcome", run_id, result, error))


def _corrupted(run_id: str, message: str, seq: int | None = None) -> StoreCorruptedError:
    where = f"run {run_id}" + (f", event {seq}" if seq is not None else "")
    err = StoreCorruptedError(
        f"the journal is damaged at {where}: {message}; nothing was changed "
        "(stalwart doctor lists every damaged run)", run_id=run_id)
    err.seq = seq  # type: ignore[attr-defined]
    return err


def verify_events(run_id: str, rows: Iterable[StoredEvent], *, count: int,
                  head: str | None) -> list[Event]:
    """``rows`` (in sequence order) as events, once each is checked against its digest
    and the chain against the run row's ``count`` and ``head``.

    Raises:
        StoreCorruptedError: naming the run and the first event that does not verify.
    """
    out: list[Event] = []
    prev = GENESIS
    for seq, kind, step_id, name, payload, created_at, digest in rows:
        expected_seq = len(out) + 1
        if seq != expected_seq:
            raise _corrupted(run_id, f"event {expected_seq} is missing (found {seq} next)"
                             if isinstance(seq, int) and seq > expected_seq
                             else f"unexpected sequence number {seq!r}", expected_seq)
        try:
            want = event_digest(prev, run_id, seq, kind, step_id, name, payload, created_at)
        except (TypeError, ValueError, AttributeError):
            raise _corrupted(run_id, "a field has the wrong type", seq) from None
        if digest != want:
            raise _corrupted(run_id, "the event does not match its checksum"
                             if digest else "the event has no checksum", seq)
        try:
            event_kind = EventKind(kind)
        except ValueError:
            raise _corrupted(run_id, f"unknown event kind {kind!r}", seq) from None
        out.append(Event(run_id, seq, event_kind, step_id, name, payload, created_at))
        prev = want
    if len(out) != count:
        raise _corrupted(run_id, f"the run has {count} events but {len(out)} were found"
                         if len(out) < count else
                         f"{len(out)} events were found where the run has {count}",
                         len(out) + 1 if len(out) < count else count + 1)
    if head is not None and head != prev:
        raise _corrupted(run_id, "its last event is not the one the run row recorded",
                         len(out) or None)
    return out


def verify_each(run_id: str, rows: Iterable[tuple[StoredEvent, str | None]]
                ) -> list[Event]:
    """Events read apart from the rest of their journal (an index's selection), each
    with the stored digest of the event before it (``None`` for the first one): each
    is checked against its own digest, chained from that one. The chain itself — no
    event missing, added or moved, the run row's head — is not checked: only
    :func:`verify_events`, over a whole journal, can.

    Raises:
        StoreCorruptedError: naming the run and the first event that does not verify.
    """
    out: list[Event] = []
    for (seq, kind, step_id, name, payload, created_at, digest), prev in rows:
        if not isinstance(seq, int) or seq < 1:
            raise _corrupted(run_id, f"unexpected sequence number {seq!r}")
        if seq == 1:
            prev = GENESIS
        elif prev is None:
            raise _corrupted(run_id, f"event {seq - 1} is missing", seq - 1)
        try:
            want = event_digest(prev, run_id, seq, kind, step_id, name, payload,
                                created_at)
        except (TypeError, ValueError, AttributeError):
            raise _corrupted(run_id, "a field has the wrong type", seq) from None
        if digest != want:
            raise _corrupted(run_id, "the event does not match its checksum"
                             if digest else "the event has no checksum", seq)
        try:
            event_kind = EventKind(kind)
        except ValueError:
            raise _corrupted(run_id, f"unknown event kind {kind!r}", seq) from None
        out.append(Event(run_id, seq, event_kind, step_id, name, payload, created_at))
    return out


RUN_COLUMNS = (
    "run_id, workflow, workflow_ref, status, input, result, error, parent_run_id, "
    "parent_step_id, created_at, updated_at, wake_at, lease_owner, lease_token, "
    "lease_expires_at, owner_host, owner_pid, cancel_requested, run_digest, outcome_digest"
)
"""The run table's columns as :func:`run_record` reads them (the same in every SQL
store)."""


def run_record(row: Sequence[Any]) -> RunRecord:
    """A run row (:data:`RUN_COLUMNS`) as a record, once it is checked against its
    digests.

    Raises:
        StoreCorruptedError: naming the run.
    """
    run_id = row[0]
    if not isinstance(run_id, str):
        raise StoreCorruptedError(f"the journal is damaged: a run row has an unreadable "
                                  f"id ({run_id!r}); nothing was changed")
    try:
        what = run_digest(run_id, row[1], row[2], row[4], row[7], row[8], row[9])
        outcome = outcome_digest(run_id, row[5], row[6])
    except (TypeError, ValueError, AttributeError):
        raise _corrupted(run_id, "the run row has a field of the wrong type") from None
    if what != row[18]:
        raise _corrupted(run_id, "the run row (workflow, input, parent or creation time) "
                         "does not match its checksum")
    if outcome != row[19]:
        raise _corrupted(run_id, "the run's result or error does not match its checksum")
    try:
        return RunRecord(
            run_id=run_id, workflow=row[1], workflow_ref=row[2], status=RunStatus(row[3]),
            input=row[4], result=row[5], error=row[6], parent_run_id=row[7],
            parent_step_id=row[8], created_at=row[9], updated_at=float(row[10]),
            wake_at=None if row[11] is None else float(row[11]), lease_owner=row[12],
            lease_token=int(row[13]),
            lease_expires_at=None if row[14] is None else float(row[14]),
            owner_host=row[15], owner_pid=None if row[16] is None else int(row[16]),
            cancel_requested=bool(row[17]))
    except (TypeError, ValueError):
        raise _corrupted(run_id, f"the run row has an unreadable field (status "
                         f"{row[3]!r})") from None
