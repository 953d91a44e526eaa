"""The approval events of a journal, and how a store reads them without the rest.

``ctx.approval(name, ...)`` (``stalwart.engine._approval``) journals, at its step:
``signal_wait_started`` named ``approval:NAME`` (the request), then either
``signal_received`` named for the decision's signal, ``stalwart.approval@STEP`` (the
decision), or ``signal_timed_out`` named ``approval:NAME`` (the timeout). Those are the
*approval events* (:func:`is_approval_event`); an approval's state — asked, decided,
timed out — is a function of them alone, so listing the approvals that wait needs
nothing else of a journal.

Every store keeps an index of them: the SQL stores a partial index on ``(run_id, seq)``
whose predicate is :func:`approval_events_sql` (created by a writer when missing, so a
journal written before it gets it the first time a writer opens it, with no schema
version: an index changes no answer, and a stalwart that predates it keeps the index up
to date without knowing of it); :class:`~stalwart.testing.MemoryStore` a list per run.
``Store.approval_journals`` reads through it: its cost is that of the approval events
of the runs asked about, not of their journals.

A listing is a view: it checks each event it reads against its own digest (chained from
the stored digest of the event before it, :func:`~._chain.verify_each`), not the chain
of the whole journal, which only a whole read can check. Acting on an approval
(``Runtime.approve``/``deny``) loads and checks the whole journal.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ._base import ApprovalJournal, EventKind
from ._blobs import ReadEvent, resolve
from ._chain import verify_each

__all__ = [
    "APPROVAL_STEP_PREFIX",
    "DECISION_SIGNAL_PREFIX",
    "approval_events_sql",
    "approval_journals",
    "is_approval_event",
    "select_events_sql",
    "select_queued_sql",
]

APPROVAL_STEP_PREFIX = "approval:"
"""The name of an approval's step is this and the approval's name."""

DECISION_SIGNAL_PREFIX = "stalwart.approval@"
"""The name of the signal carrying a decision is this and the approval's step id."""

_ASKED = (EventKind.SIGNAL_WAIT_STARTED, EventKind.SIGNAL_TIMED_OUT)


def is_approval_event(kind: str, name: str | None) -> bool:
    """Whether an event of ``kind`` named ``name`` is an approval event (a request, a
    timeout, a decision): the one rule, which :func:`approval_events_sql` states in
    SQL."""
    if name is None:
        return False
    if kind in _ASKED:
        return name.startswith(APPROVAL_STEP_PREFIX)
    return kind == EventKind.SIGNAL_RECEIVED and name.startswith(DECISION_SIGNAL_PREFIX)


def approval_events_sql(alias: str = "") -> str:
    """:func:`is_approval_event` as an SQL condition (SQLite and PostgreSQL alike) on the
    events table, its columns qualified by ``alias`` when given. The stores' partial
    index and their query use this very text, which is what lets the planner match
    them."""
    col = f"{alias}." if alias else ""
    asked = ", ".join(f"'{k}'" for k in _ASKED)
    return (f"(({col}kind IN ({asked}) AND substr({col}name, 1, {len(APPROVAL_STEP_PREFIX)})"
            f" = '{APPROVAL_STEP_PREFIX}') OR ({col}kind = '{EventKind.SIGNAL_RECEIVED}' "
            f"AND substr({col}name, 1, {len(DECISION_SIGNAL_PREFIX)}) = "
            f"'{DECISION_SIGNAL_PREFIX}'))")


def select_events_sql(*, events: str, blobs: str, run_ids: str, indexed: str = "") -> str:
    """The SQL stores' query of the approval events of some runs, as
    :data:`ApprovalRow` in ``(run_id, seq)`` order: ``events`` and ``blobs`` are the
    tables, ``run_ids`` the condition on ``e.run_id`` (its placeholders), ``indexed``
    what follows the events table (SQLite's ``INDEXED BY``)."""
    return ("SELECT e.run_id, e.seq, e.kind, e.step_id, e.name, e.payload, e.created_at, "
            f"e.digest, e.payload_ref, b.content, p.digest FROM {events} e {indexed} "
            f"LEFT JOIN {blobs} b ON b.hash = e.payload_ref LEFT JOIN {events} p "
            "ON p.run_id = e.run_id AND p.seq = e.seq - 1 "
            f"WHERE e.run_id {run_ids} AND {approval_events_sql('e')} "
            "ORDER BY e.run_id, e.seq")


def select_queued_sql(*, signals: str, run_ids: str) -> str:
    """The SQL stores' query of the decision signals sent to some runs and not yet
    taken, as ``(run_id, name)``, oldest first (``run_ids`` as above)."""
    return (f"SELECT run_id, name FROM {signals} WHERE run_id {run_ids} AND "
            f"consumed_step_id IS NULL AND substr(name, 1, {len(DECISION_SIGNAL_PREFIX)})"
            f" = '{DECISION_SIGNAL_PREFIX}' ORDER BY id")


ApprovalRow = tuple[str, int, str, str | None, str | None, str | None, float, str | None,
                    str | None, str | None, str | None]
"""An approval event as the SQL stores read it: ``run_id``, then a
:data:`~._blobs.ReadEvent`, then the stored digest of the event before it (``None``
for the first event, or when that event is missing)."""


def approval_journals(run_ids: Sequence[str], rows: Iterable[ApprovalRow],
                      queued: Iterable[tuple[str, str]]) -> list[ApprovalJournal]:
    """What ``Store.approval_journals`` returns, from the rows a store read: ``rows``
    in ``(run_id, seq)`` order, ``queued`` the ``(run_id, name)`` of pending decision
    signals, oldest first. Blobs are resolved and each event checked.

    Raises:
        StoreCorruptedError: an event that does not match its digest, or a blob its key.
    """
    by_run: dict[str, list[ApprovalRow]] = {}
    for row in rows:
        by_run.setdefault(row[0], []).append(row)
    names: dict[str, list[str]] = {}
    for run_id, name in queued:
        names.setdefault(run_id, []).append(name)
    out = []
    for run_id in dict.fromkeys(run_ids):
        found = by_run.get(run_id)
        if not found:
            continue
        read: list[ReadEvent] = [r[1:10] for r in found]
        events = verify_each(run_id, zip(resolve(run_id, read), (r[10] for r in found),
                                         strict=True))
        out.append(ApprovalJournal(run_id, tuple(events), tuple(names.get(run_id, ()))))
    return out
