"""Large event payloads stored once, by content: the one rule every SQL store follows.

An event whose payload is longer than :data:`BLOB_THRESHOLD` characters is written as a
reference: its row's ``payload`` is ``NULL`` and its ``payload_ref`` the SHA-256 (hex)
of the payload's UTF-8 text, and the text itself goes into the ``blobs`` table
(``stalwart_blobs`` in PostgreSQL) under that key, inserted in the same transaction as
the event, and only if it is not there yet (``ON CONFLICT DO NOTHING``). The same tool
result, document or answer journaled by many turns, runs or forks (``fork_run`` copies
the events it reuses into the fork's journal) is thus kept once. A payload at or under
the threshold stays inline: a reference and a row of its own would cost more than
they save.

Readers resolve references where they read the events table (``load_events``: one
join, one snapshot) through :func:`resolve`, which checks each blob against its key: a
blob whose text does not hash to its key, or a reference with no blob, is a
:class:`~stalwart.errors.StoreCorruptedError` naming the run and the event, as the
checksums of ``_chain`` are. The chain's digests cover the payload itself, not the
reference, so a journal verifies exactly as it did before payloads moved: what the
chain proves is unchanged, and the blob check only makes a damaged blob's error more
precise.

Blobs are text (JSON as the engine wrote it), never pickled. They are kept while any
event refers to them; no store deletes runs or events today, so no blob is ever
deleted (a retention feature that deletes runs must delete the blobs no remaining event
refers to, in the same transaction). :class:`~stalwart.testing.MemoryStore` keeps
payloads inline (its events are objects, nothing is duplicated on disk); it reads back
the same events.

Journals written before blobs (SQLite schema 3, PostgreSQL schema 4) are migrated by
adding the column and the table: their payloads stay inline and read identically; only
events written afterwards use blobs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from ._chain import StoredEvent, _corrupted
from ._runs import EventRow

__all__ = [
    "BLOB_THRESHOLD",
    "BlobRow",
    "RefEventRow",
    "ReadEvent",
    "blob_key",
    "resolve",
    "split",
]

BLOB_THRESHOLD = 4096
"""Payloads longer than this many characters (at least 4 KiB of UTF-8) are stored as
blobs; shorter ones inline."""

RefEventRow = tuple[str, int, str, str | None, str | None, str | None, float, str,
                    str | None]
"""An event as SQL stores insert it: :data:`~._runs.EventRow` with ``payload`` ``None``
when it is stored as a blob, and ``payload_ref`` (the blob's key, or ``None``) last."""

BlobRow = tuple[str, str]
"""A blob as stores insert it: ``(key, text)``."""

ReadEvent = tuple[int, str, str | None, str | None, str | None, float, str | None,
                  str | None, str | None]
"""An event row as SQL stores read it: ``(seq, kind, step_id, name, payload, created_at,
digest, payload_ref, blob text)`` (the blob's text from a left join: ``None`` when the
event has no reference or its blob is missing)."""


def blob_key(text: str) -> str:
    """The key of a blob: the SHA-256 (hex) of its UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def split(rows: Iterable[EventRow]) -> tuple[list[RefEventRow], list[BlobRow]]:
    """``rows`` as stores insert them, large payloads replaced by references, and the
    blobs to insert (each key once)."""
    out: list[RefEventRow] = []
    blobs: dict[str, str] = {}
    for run_id, seq, kind, step_id, name, payload, at, digest in rows:
        if payload is not None and len(payload) > BLOB_THRESHOLD:
            key = blob_key(payload)
            blobs.setdefault(key, payload)
            out.append((run_id, seq, kind, step_id, name, None, at, digest, key))
        else:
            out.append((run_id, seq, kind, step_id, name, payload, at, digest, None))
    return out, list(blobs.items())


def resolve(run_id: str, rows: Sequence[ReadEvent]) -> list[StoredEvent]:
    """``rows`` with each reference replaced by its blob's text, once the blob is
    checked against its key (then ``_chain.verify_events`` checks the events).

    Raises:
        StoreCorruptedError: a reference whose blob is missing or does not match it.
    """
    out: list[StoredEvent] = []
    for seq, kind, step_id, name, payload, at, digest, ref, text in rows:
        if ref is not None:
            if text is None:
                raise _corrupted(run_id, f"its payload's blob {ref[:16]}... is missing",
                                 seq)
            try:
                ok = isinstance(text, str) and blob_key(text) == ref
            except (TypeError, ValueError, AttributeError):
                ok = False
            if not ok:
                raise _corrupted(run_id, f"its payload's blob {ref[:16]}... does not "
                                 "match its hash", seq)
            payload = text
        out.append((seq, kind, step_id, name, payload, at, digest))
    return out
