"""Blackboards in every store (see ``conftest.py``): posts with versions and
compare-and-set, verification, takes that happen once (also when made again after a
crash, and among concurrent takers), patterns; and the pure rules of ``_board``."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from stalwart.errors import BoardConflictError, BoardPatternError
from stalwart.store import Store
from stalwart.store._board import BoardOp, BoardStore, BoardWatch, matches, parse_pattern

from .conftest import StoreFactory

T0 = 1_000.0


def post(key: str, value: Any, op: str, *, expected: int | None = None,
         board: str = "facts") -> BoardOp:
    return BoardOp("post", board, op, key=key, value=value, expected_version=expected,
                   provenance={"run_id": "r", "step_id": op, "agent": "a"},
                   sources=(("seed", 1),))


def take(glob: str, op: str, **kw: Any) -> BoardOp:
    return BoardOp("take", "facts", op, pattern=parse_pattern("facts", glob, **kw))


def verify(key: str, state: Any, op: str, *, version: int | None = None) -> BoardOp:
    return BoardOp("verify", "facts", op, key=key, state=state, by="checker",
                   note="looked it up", expected_version=version)


def board(store: Store) -> BoardStore:
    assert isinstance(store, BoardStore)
    return store


async def test_posts_make_versions_with_provenance_and_reset_verification(
        store: Store) -> None:
    """A post is version 1, unverified, with its provenance and sources; a verified
    entry written again is version 2 and unverified again; created_at stays."""
    b = board(store)
    first = await b.board_apply(post("gpu", {"n": 1}, "r:1"), now=T0)
    assert first is not None
    assert (first.version, first.state, first.value) == (1, "unverified", {"n": 1})
    assert first.provenance["agent"] == "a" and first.sources == (("seed", 1),)
    await b.board_apply(verify("gpu", "verified", "r:2", version=1), now=T0 + 1)
    second = await b.board_apply(post("gpu", {"n": 2}, "r:3"), now=T0 + 2)
    assert second is not None
    assert (second.version, second.state, second.created_at, second.updated_at) == (
        2, "unverified", T0, T0 + 2)
    [stored] = await b.board_entries("facts")
    assert stored == second


async def test_compare_and_set_conflicts_write_nothing(store: Store) -> None:
    """expected_version=0 creates only; a stale version is BoardConflictError with the
    expected and actual versions, and the entry is unchanged."""
    b = board(store)
    await b.board_apply(post("k", "v1", "r:1", expected=0), now=T0)
    with pytest.raises(BoardConflictError) as caught:
        await b.board_apply(post("k", "again", "r:2", expected=0), now=T0)
    assert (caught.value.expected, caught.value.actual, caught.value.key) == (0, 1, "k")
    await b.board_apply(post("k", "v2", "r:3", expected=1), now=T0)
    with pytest.raises(BoardConflictError) as stale:
        await b.board_apply(post("k", "lost", "r:4", expected=1), now=T0)
    assert stale.value.actual == 2
    with pytest.raises(BoardConflictError):
        await b.board_apply(post("missing", "x", "r:5", expected=3), now=T0)
    [entry] = await b.board_entries("facts")
    assert (entry.key, entry.version, entry.value) == ("k", 2, "v2")
    with pytest.raises(BoardConflictError):  # a verdict on content rewritten since
        await b.board_apply(verify("k", "verified", "r:6", version=1), now=T0)
    assert (await b.board_entries("facts"))[0].state == "unverified"


async def test_an_operation_made_again_returns_what_it_did_and_changes_nothing(
        store: Store) -> None:
    """The same op key (a step re-run after a crash) does not post or take twice."""
    b = board(store)
    await b.board_apply(post("a", 1, "r:1"), now=T0)
    await b.board_apply(post("b", 2, "r:2"), now=T0 + 1)
    again = await b.board_apply(post("a", 1, "r:1"), now=T0 + 5)
    assert again is not None and again.version == 1
    took = await b.board_apply(take("*", "w:7"), now=T0 + 6)
    took_again = await b.board_apply(take("*", "w:7"), now=T0 + 7)
    assert took is not None and took_again is not None
    assert took.key == took_again.key == "a" and took.taken_by == "w:7"
    entries = {e.key: e for e in await b.board_entries("facts")}
    assert entries["a"].version == 1 and entries["a"].taken_by == "w:7"
    assert entries["b"].taken_by is None


async def test_take_takes_the_oldest_match_once_and_reposting_revives_the_key(
        store: Store) -> None:
    """Takes go oldest first among matches, skip taken and unverified entries when
    asked, return None when nothing matches; a post to a taken key is a new version."""
    b = board(store)
    await b.board_apply(post("task:2", {"p": 1}, "r:1"), now=T0)
    await b.board_apply(post("task:1", {"p": 2}, "r:2"), now=T0 + 1)
    await b.board_apply(post("note", "x", "r:3"), now=T0 + 2)
    assert await b.board_apply(take("task:*", "w:1", verified_only=True), now=T0) is None
    await b.board_apply(verify("task:1", "verified", "r:4"), now=T0 + 3)
    got = await b.board_apply(take("task:*", "w:2", verified_only=True), now=T0 + 4)
    assert got is not None and got.key == "task:1"
    first = await b.board_apply(take("task:?", "w:3"), now=T0 + 5)
    assert first is not None and first.key == "task:2"
    assert await b.board_apply(take("task:*", "w:4"), now=T0 + 6) is None
    revived = await b.board_apply(post("task:1", {"p": 3}, "r:5"), now=T0 + 7)
    assert revived is not None and (revived.version, revived.taken_by) == (2, None)


async def test_concurrent_takers_on_separate_connections_take_each_entry_once(
        store: Store, open_another: StoreFactory) -> None:
    """Four stores on one journal (four workers) race to take 20 entries: each entry is
    taken exactly once, and every taker's result is its own."""
    b = board(store)
    for i in range(20):
        await b.board_apply(post(f"job:{i:02d}", i, f"r:{i}"), now=T0 + i)
    others = [board(await open_another()) for _ in range(3)]

    async def drain(s: BoardStore, name: str) -> list[str]:
        got = []
        n = 0
        while True:
            n += 1
            e = await s.board_apply(take("job:*", f"{name}:{n}"), now=T0 + 100)
            if e is None:
                return got
            got.append(e.key)

    results = await asyncio.gather(*(drain(s, f"w{i}") for i, s in enumerate([b, *others])))
    taken = [k for r in results for k in r]
    assert sorted(taken) == [f"job:{i:02d}" for i in range(20)]
    assert len(set(taken)) == 20
    assert all(e.taken for e in await b.board_entries("facts", prefix="job:"))


async def test_boards_are_separate_and_listed(store: Store) -> None:
    """Entries live in their board; board_names lists the boards; a prefix narrows."""
    b = board(store)
    await b.board_apply(post("x", 1, "r:1", board="one"), now=T0)
    await b.board_apply(post("y", 2, "r:2", board="two"), now=T0)
    await b.board_apply(post("yz", 3, "r:3", board="two"), now=T0)
    assert await b.board_names() == ["one", "two"]
    assert [e.key for e in await b.board_entries("two", prefix="yz")] == ["yz"]
    assert await b.board_entries("three") == []


@pytest.mark.parametrize(("glob", "where", "why"), [
    ("", None, "it is empty"),
    (42, None, "a pattern is a string"),
    ("a\\", None, "lone"),
    ("a\nb", None, "control character"),
    ("x" * 1025, None, "longer than 1024"),
    ("*", ["not", "a", "mapping"], "where= must map"),
    ("*", {"f": object()}, "where= values must be JSON"),
])
def test_invalid_patterns_are_refused_with_a_reason(glob: Any, where: Any, why: str) -> None:
    """BoardPatternError (also a ConfigurationError) naming the board and the problem."""
    with pytest.raises(BoardPatternError) as caught:
        parse_pattern("facts", glob, where)
    assert why in str(caught.value) and caught.value.board == "facts"


def test_patterns_match_globs_escapes_fields_and_verification() -> None:
    """* and ? glob, \\ escapes a wildcard, the prefix is the literal head, where= is
    field equality on a dict value, verified_only wants verified."""
    from stalwart.store._board import BoardEntry

    p = parse_pattern("b", "fact:*:v?")
    assert p.prefix == "fact:"
    e = BoardEntry("b", "fact:gpu:v1", 1, {"topic": "gpu", "n": 1})
    assert matches(p, e)
    assert not matches(p, BoardEntry("b", "fact:gpu:v10", 1, {}))
    star = parse_pattern("b", "a\\*b")
    assert star.prefix == "a*b" and matches(star, BoardEntry("b", "a*b", 1, 0))
    assert not matches(star, BoardEntry("b", "axb", 1, 0))
    assert matches(parse_pattern("b", "*", {"topic": "gpu"}), e)
    assert not matches(parse_pattern("b", "*", {"topic": "cpu"}), e)
    assert not matches(parse_pattern("b", "*", {"topic": "gpu"}),
                       BoardEntry("b", "k", 1, "a string"))
    assert not matches(parse_pattern("b", "*", verified_only=True), e)
    assert matches(parse_pattern("b", "*", verified_only=True),
                   BoardEntry("b", "k", 1, 0, state="verified"))
    assert not matches(parse_pattern("b", "*"), BoardEntry("b", "k", 1, 0, taken_by="x"))


# -- waking the runs that wait (Blackboard.wait) ------------------------------------------


async def waiting_run(store: Store, run_id: str) -> None:
    await store.create_run(run_id=run_id, workflow="w", input="[]", now=T0)


def watch(run_id: str, glob: str, *, at: float = T0, board: str = "facts",
          **kw: Any) -> BoardWatch:
    return BoardWatch(board, run_id, f"board:{board}:{run_id}", parse_pattern(board, glob, **kw),
                      at)


async def wake(b: BoardStore, op: BoardOp, now: float = T0 + 10) -> list[str]:
    entry = await b.board_apply(op, now=now)
    assert entry is not None
    return await b.board_wake(entry, now=now)


async def test_a_write_signals_the_runs_watching_for_it_once(store: Store) -> None:
    """A post signals the runs whose pattern it matches (glob, where=, verified only:
    at its verification), with the entry as payload; a second match before the first
    signal is taken adds none; another board's watcher hears nothing; an unwatched run
    is not signalled."""
    b = board(store)
    for rid in ("gpu", "cpu", "topic", "checked", "other", "gone"):
        await waiting_run(store, rid)
    for i, w in enumerate((watch("gpu", "gpu:*"), watch("cpu", "cpu:*"),
                           watch("topic", "*", where={"topic": "gpu"}),
                           watch("checked", "gpu:*", verified_only=True),
                           watch("other", "*", board="b2"), watch("gone", "*"))):
        w = dataclasses.replace(w, created_at=T0 + i)
        await b.board_watch(w)
        await b.board_watch(w)  # again: one watch
    await b.board_unwatch("gone", "board:facts:gone")
    assert [w.run_id for w in await b.board_watches("facts")] == [
        "gpu", "cpu", "topic", "checked"]
    assert await wake(b, post("gpu:1", {"topic": "gpu"}, "r:1")) == ["gpu", "topic"]
    assert await store.pending_signals("gpu") == [
        ("board:facts:gpu", '{"board": "facts", "key": "gpu:1", "version": 1}')]
    assert await wake(b, post("gpu:2", {}, "r:2")) == []  # gpu's signal still waits
    assert len(await store.pending_signals("gpu")) == 1
    assert await wake(b, verify("gpu:2", "verified", "r:3")) == ["checked"]
    assert await store.pending_signals("other") == []
    assert await store.pending_signals("gone") == []


async def test_a_watch_of_an_ended_or_missing_run_is_dropped_not_signalled(
        store: Store) -> None:
    """A write does not fail on the watch of a run that ended (cancelled) or does not
    exist: it drops the watch and signals the live watcher."""
    b = board(store)
    for rid in ("ended", "live"):
        await waiting_run(store, rid)
    await store.request_cancel("ended", now=T0)
    for w in (watch("ended", "*"), watch("ghost", "*", at=T0 + 1), watch("live", "*", at=T0 + 2)):
        await b.board_watch(w)
    assert await wake(b, post("k", 1, "r:1")) == ["live"]
    assert [w.run_id for w in await b.board_watches("facts")] == ["live"]
    assert await store.pending_signals("ended") == []


async def test_a_write_wakes_at_most_the_oldest_watches(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fan-out is bounded: with a limit of 2, the two oldest watches are signalled and
    the third is left to its poll."""
    import stalwart.store._board as rules

    monkeypatch.setattr(rules, "WAKE_LIMIT", 2)
    b = board(store)
    for i, rid in enumerate(("c", "a", "b")):
        await waiting_run(store, rid)
        await b.board_watch(watch(rid, "*", at=T0 + i))
    assert await wake(b, post("k", 1, "r:1")) == ["c", "a"]
    assert await store.pending_signals("b") == []


async def test_a_take_wakes_nobody(store: Store) -> None:
    """A take cannot make an entry match: the store is not asked to wake (and a taken
    entry matches no watch)."""
    b = board(store)
    await waiting_run(store, "w")
    await b.board_watch(watch("w", "*"))
    await b.board_apply(post("k", 1, "r:1"), now=T0)
    taken = await b.board_apply(take("*", "r:2"), now=T0)
    assert taken is not None and taken.taken
    assert await b.board_wake(taken, now=T0) == []
