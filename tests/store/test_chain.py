"""The checksum rule every store uses (``stalwart.store._chain``), on its own."""

from __future__ import annotations

import pytest

from stalwart.errors import StoreCorruptedError
from stalwart.store import EventKind, NewEvent, RunStatus
from stalwart.store._chain import (
    GENESIS,
    StoredEvent,
    chain,
    event_digest,
    outcome_digest,
    run_digest,
    run_record,
    verify_events,
)

EVENTS = [NewEvent(EventKind.RUN_CREATED, name="wf", payload='["x"]'),
          NewEvent(EventKind.RUN_CLAIMED, name="w", payload='{"host": "h", "pid": 1}'),
          NewEvent(EventKind.STEP_COMPLETED, step_id="0", name="f", payload="1"),
          NewEvent(EventKind.STEP_COMPLETED, step_id="1", name="g", payload=None)]


def rows(run_id: str = "r", now: float = 5.0) -> list[StoredEvent]:
    digests = chain(GENESIS, run_id, 1, EVENTS, now)
    return [(i + 1, str(e.kind), e.step_id, e.name, e.payload, now, d)
            for i, (e, d) in enumerate(zip(EVENTS, digests, strict=True))]


def test_a_sound_chain_verifies_into_events() -> None:
    """Rows written with chain() read back as the same events."""
    out = verify_events("r", rows(), count=4, head=rows()[-1][6])
    assert [(e.seq, e.kind, e.step_id, e.payload) for e in out] == [
        (1, EventKind.RUN_CREATED, None, '["x"]'), (2, EventKind.RUN_CLAIMED, None,
                                                    '{"host": "h", "pid": 1}'),
        (3, EventKind.STEP_COMPLETED, "0", "1"), (4, EventKind.STEP_COMPLETED, "1", None)]


def test_chaining_in_two_appends_equals_one() -> None:
    """Appending in pieces (each from the last head) gives the same digests."""
    first = chain(GENESIS, "r", 1, EVENTS[:2], 5.0)
    rest = chain(first[-1], "r", 3, EVENTS[2:], 5.0)
    assert first + rest == chain(GENESIS, "r", 1, EVENTS, 5.0)


@pytest.mark.parametrize("field", range(6))
def test_every_field_of_an_event_is_covered(field: int) -> None:
    """Changing any field of event 3 (seq, kind, step, name, payload, time) is caught
    there, naming the run and the event."""
    bad = rows()
    row = list(bad[2])
    row[field] = {0: 7, 1: "step_failed", 2: "9", 3: "h", 4: "2", 5: 5.000001}[field]
    bad[2] = tuple(row)  # type: ignore[assignment]
    with pytest.raises(StoreCorruptedError, match=r"run r, event 3") as info:
        verify_events("r", bad, count=4, head=bad[-1][6])
    assert info.value.run_id == "r"


def test_none_and_empty_text_differ() -> None:
    """A field set to None and one set to "" hash differently (no ambiguity)."""
    assert event_digest(GENESIS, "r", 1, "k", None, "n", "", 1.0) != event_digest(
        GENESIS, "r", 1, "k", "", "n", "", 1.0)
    assert event_digest(GENESIS, "r", 1, "k", "a|b", None, None, 1.0) != event_digest(
        GENESIS, "r", 1, "k", "a", "b", None, 1.0)


def test_the_same_events_of_another_run_do_not_verify() -> None:
    """Events copied from another run fail (the run id is in every digest)."""
    with pytest.raises(StoreCorruptedError, match="event 1"):
        verify_events("other", rows("r"), count=4, head=None)


@pytest.mark.parametrize(("mutate", "where"), [
    (lambda r: r[:1] + r[2:], "event 2 is missing"),             # a gap
    (lambda r: [r[0], r[2], r[1], r[3]], "event 2"),                # a swap
    (lambda r: r[:3], "has 4 events but 3"),                     # a lost tail
])
def test_gaps_swaps_and_lost_tails_are_caught(mutate: object, where: str) -> None:
    """A missing event, two events swapped, or the last event lost: each is caught."""
    with pytest.raises(StoreCorruptedError, match=where):
        verify_events("r", mutate(rows()), count=4, head=rows()[-1][6])  # type: ignore[operator]


def test_a_head_that_is_not_the_last_event_is_caught() -> None:
    """The run row's head must be the last event's digest (a replaced tail)."""
    with pytest.raises(StoreCorruptedError, match="last event"):
        verify_events("r", rows(), count=4, head=rows()[2][6])


def test_a_missing_or_mistyped_checksum_is_damage() -> None:
    """An event with no digest, or a field of the wrong type, fails as damage."""
    bad = rows()
    bad[1] = (*bad[1][:6], "")
    with pytest.raises(StoreCorruptedError, match="no checksum"):
        verify_events("r", bad, count=4, head=None)
    bad = rows()
    bad[1] = (*bad[1][:5], "not a time", bad[1][6])  # type: ignore[assignment]
    with pytest.raises(StoreCorruptedError, match="wrong type"):
        verify_events("r", bad, count=4, head=None)


def _run_row(**changes: object) -> tuple[object, ...]:
    base: dict[str, object] = {
        "run_id": "r", "workflow": "wf", "workflow_ref": "m:wf", "status": "completed",
        "input": "[1]", "result": "2", "error": None, "parent_run_id": "p",
        "parent_step_id": "3", "created_at": 1.5, "updated_at": 2.0, "wake_at": None,
        "lease_owner": None, "lease_token": 3, "lease_expires_at": None, "owner_host": "h",
        "owner_pid": 9, "cancel_requested": 0}
    digests = (run_digest("r", "wf", "m:wf", "[1]", "p", "3", 1.5),
               outcome_digest("r", "2", None))
    base.update(changes)
    return (*base.values(), *digests)


def test_a_run_row_verifies_into_a_record() -> None:
    """A row with its digests becomes the record."""
    rec = run_record(_run_row())
    assert (rec.run_id, rec.status, rec.result, rec.parent_step_id) == (
        "r", RunStatus.COMPLETED, "2", "3")


@pytest.mark.parametrize("change", [
    {"workflow": "wg"}, {"workflow_ref": None}, {"input": "[2]"}, {"parent_run_id": None},
    {"parent_step_id": "4"}, {"created_at": 1.25}, {"result": "3"}, {"error": "x"},
    {"status": "complfted"}, {"run_id": 7},
])
def test_a_changed_run_row_is_damage(change: dict[str, object]) -> None:
    """What a run is, its outcome and its status cannot change unnoticed."""
    with pytest.raises(StoreCorruptedError):
        run_record(_run_row(**change))


def test_the_event_encoding_is_the_general_one() -> None:
    """event_digest's written-out encoding equals the general field encoding (so both
    kinds of digest follow one unambiguous rule)."""
    from stalwart.store._chain import _encode, _hash

    for fields in ((GENESIS, "r-1", 7, "step_completed", "3/1", "f", '{"a": 1}', 1.25),
                   (GENESIS, "r", 1, "run_created", None, None, None, 1e9 + 0.5),
                   ("f" * 32, "é|:", 12, "signal_received", "", "", "", 0.0)):
        assert event_digest(*fields) == _hash(_encode("event", *fields))  # type: ignore[arg-type]
