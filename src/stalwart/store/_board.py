"""The blackboard's rules, as pure functions every store calls: one place.

A blackboard (``sw.Blackboard``) is a durable tuple space in the store, shared by runs
and workers: named boards of keyed entries. Each entry has a value (JSON text), a
version (1 at the first post, +1 at each write), a verification state (``unverified``,
``verified`` or ``refuted``, by whom), its provenance (run, step, agent, model, time) and
the entries it was derived from (``sources``: key and version), and, once taken, who took
it. A store keeps two tables: the entries, and the *operations* applied, keyed by the
idempotency key of the step that made them (``run_id:step_id``), so an operation made
again after a crash (the step ran, its result was not journaled) returns what it did the
first time instead of doing it twice — a second post, a second take.

Every write is :class:`BoardOp` applied by :func:`plan` to the entry as it is, inside
the store's transaction — *lock, plan, write*, as for runs (``_runs``):

* ``post``: a new version of the entry, unverified; with ``expected_version`` a
  compare-and-set (0: the key must not exist) that raises
  :class:`~stalwart.errors.BoardConflictError` when the entry is at another version;
* ``take`` (Linda's ``in``): the oldest entry (by last write, then key) that matches the
  pattern and is not taken is marked taken by the operation's key: exactly one taker,
  across workers (SQLite: the write lock; PostgreSQL: ``FOR UPDATE SKIP LOCKED``);
* ``verify``: sets the verification state (``verified``/``refuted``, by whom, why) of
  the entry at ``expected_version`` (a verdict on a version that was rewritten
  meanwhile is a conflict: it judged other content).

A taken entry is gone for readers and takers; posting to its key again makes a new,
untaken version. A **pattern** (:class:`Pattern`) selects entries by key glob (``*``
any run of characters, ``?`` one, ``\\`` escapes) and optionally by top-level fields of
the value (``where={"topic": "gpu"}``); stores narrow their scan by the pattern's
literal prefix and filter with :func:`matches`.

**Waking waiters.** A run waiting for a match (``Blackboard.wait``) *watches* the board
first (:class:`BoardWatch`: its run, a signal name of its own and its pattern, one row
of a third table, written before its first look). A write that can make an entry match
(a post, a verification: never a take) then signals, in the store, every watching run
whose pattern the written entry matches (:func:`watching`: the oldest
:data:`WAKE_LIMIT` watches, a bounded fan-out); a watch that already has a signal
waiting gets no second one, and the watch of a run that ended (or is gone) is dropped
instead (:func:`wake_action`). The watches are operational state: losing one (or a stalwart
that predates them writing to the board) only makes its waiter see the entry at its
next poll, which stays the bound.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, final, runtime_checkable

from ..errors import BoardConflictError, BoardPatternError

if TYPE_CHECKING:
    from ._runs import RunState

__all__ = [
    "ROW_COLUMNS",
    "STATES",
    "BoardEntry",
    "BoardOp",
    "BoardStore",
    "BoardWatch",
    "Pattern",
    "WAKE_LIMIT",
    "WATCH_COLUMNS",
    "choose",
    "entry_from_row",
    "entry_row",
    "matches",
    "parse_pattern",
    "plan",
    "wake_action",
    "wake_payload",
    "watch_from_row",
    "watch_row",
    "watching",
]

State = Literal["unverified", "verified", "refuted"]
STATES: tuple[State, ...] = ("unverified", "verified", "refuted")
MAX_PATTERN = 1024


@final
@dataclass(frozen=True, slots=True)
class BoardEntry:
    """One entry of a blackboard.

    Attributes:
        board, key: where it is.
        version: 1 at the first post, one more at every write.
        value: the value (JSON).
        state: ``"unverified"``, ``"verified"`` or ``"refuted"``.
        verified_by: who verified or refuted it (a verifier's name).
        note: the verifier's reason.
        provenance: who wrote this version: ``run_id``, ``step_id``, ``workflow``,
            ``agent``, ``model``, ``at`` (time).
        sources: the entries this one was derived from, ``((key, version), ...)``.
        created_at, updated_at: first post and last write.
        taken_by, taken_at: the operation that took it (``run_id:step_id``), and when.
    """

    board: str
    key: str
    version: int
    value: Any
    state: State = "unverified"
    verified_by: str | None = None
    note: str | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)
    sources: tuple[tuple[str, int], ...] = ()
    created_at: float = 0.0
    updated_at: float = 0.0
    taken_by: str | None = None
    taken_at: float | None = None

    @property
    def taken(self) -> bool:
        return self.taken_by is not None

    def as_json(self) -> dict[str, Any]:
        return {"board": self.board, "key": self.key, "version": self.version,
                "value": self.value, "state": self.state, "verified_by": self.verified_by,
                "note": self.note, "provenance": dict(self.provenance),
                "sources": [list(s) for s in self.sources], "created_at": self.created_at,
                "updated_at": self.updated_at, "taken_by": self.taken_by,
                "taken_at": self.taken_at}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> BoardEntry:
        state = d.get("state", "unverified")
        return cls(board=str(d["board"]), key=str(d["key"]), version=int(d["version"]),
                   value=d.get("value"), state=state if state in STATES else "unverified",
                   verified_by=d.get("verified_by"), note=d.get("note"),
                   provenance=dict(d.get("provenance") or {}),
                   sources=tuple((str(k), int(v)) for k, v in d.get("sources") or ()),
                   created_at=float(d.get("created_at", 0.0)),
                   updated_at=float(d.get("updated_at", 0.0)), taken_by=d.get("taken_by"),
                   taken_at=d.get("taken_at"))


ROW_COLUMNS = ("board", "key", "version", "value", "state", "verified_by", "note",
               "provenance", "sources", "created_at", "updated_at", "taken_by", "taken_at")
"""The entry table's columns, in the order of :func:`entry_row`."""


def entry_row(e: BoardEntry) -> tuple[Any, ...]:
    """An entry as the stores' row (JSON text for the value, provenance and sources)."""
    return (e.board, e.key, e.version, json.dumps(e.value), e.state, e.verified_by, e.note,
            json.dumps(dict(e.provenance), sort_keys=True),
            json.dumps([list(s) for s in e.sources]), e.created_at, e.updated_at,
            e.taken_by, e.taken_at)


def entry_from_row(row: Sequence[Any]) -> BoardEntry:
    """The entry a row of :data:`ROW_COLUMNS` holds."""
    (board, key, version, value, state, verified_by, note, provenance, sources, created,
     updated, taken_by, taken_at) = row
    return BoardEntry(board=board, key=key, version=int(version), value=json.loads(value),
                      state=state if state in STATES else "unverified",
                      verified_by=verified_by, note=note, provenance=json.loads(provenance),
                      sources=tuple((str(k), int(v)) for k, v in json.loads(sources)),
                      created_at=float(created), updated_at=float(updated),
                      taken_by=taken_by, taken_at=None if taken_at is None else float(taken_at))


@final
@dataclass(frozen=True, slots=True)
class Pattern:
    """A parsed pattern: a key glob and field conditions (see the module docstring).

    Attributes:
        glob: the key glob, as given.
        prefix: its literal prefix (before the first wildcard): stores scan only keys
            that start with it.
        where: top-level fields the value must have, with these values.
        verified_only: match only verified entries.
    """

    glob: str
    prefix: str
    regex: re.Pattern[str]
    where: tuple[tuple[str, str], ...] = ()
    verified_only: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"glob": self.glob, "where": {k: json.loads(v) for k, v in self.where},
                "verified_only": self.verified_only}


def parse_pattern(board: str, glob: object, where: object = None, *,
                  verified_only: bool = False) -> Pattern:
    """Check and parse a pattern.

    Raises:
        BoardPatternError: not a string, empty, longer than 1,024 characters, holding a
            control character, ending in a lone ``\\``, or ``where`` not a mapping of
            field names to JSON values.
    """
    def bad(why: str) -> BoardPatternError:
        return BoardPatternError(f"blackboard {board!r}: pattern {glob!r} is not valid: "
                                 f"{why}", board=board, pattern=repr(glob))

    if not isinstance(glob, str):
        raise bad("a pattern is a string (a key glob: * any characters, ? one, \\ escapes)")
    if not glob:
        raise bad("it is empty (use '*' for every key)")
    if len(glob) > MAX_PATTERN:
        raise bad(f"it is longer than {MAX_PATTERN} characters")
    if any(ord(c) < 32 for c in glob):
        raise bad("it holds a control character")
    regex, prefix, literal, i = [], [], True, 0
    while i < len(glob):
        c = glob[i]
        if c == "\\":
            if i + 1 == len(glob):
                raise bad("it ends in a lone '\\' (escape a character, or write '\\\\')")
            regex.append(re.escape(glob[i + 1]))
            if literal:
                prefix.append(glob[i + 1])
            i += 2
            continue
        if c in "*?":
            regex.append(".*" if c == "*" else ".")
            literal = False
        else:
            regex.append(re.escape(c))
            if literal:
                prefix.append(c)
        i += 1
    conds: list[tuple[str, str]] = []
    if where is not None:
        if not isinstance(where, Mapping) or not all(isinstance(k, str) for k in where):
            raise bad("where= must map field names (strings) to values")
        try:
            conds = sorted((k, json.dumps(v, sort_keys=True)) for k, v in where.items())
        except (TypeError, ValueError) as exc:
            raise bad(f"where= values must be JSON ({exc})") from None
    return Pattern(glob, "".join(prefix), re.compile("".join(regex), re.DOTALL),
                   tuple(conds), bool(verified_only))


def matches(pattern: Pattern, entry: BoardEntry) -> bool:
    """Whether ``entry`` (not taken) is selected by ``pattern``."""
    if entry.taken or not pattern.regex.fullmatch(entry.key):
        return False
    if pattern.verified_only and entry.state != "verified":
        return False
    if pattern.where:
        value = entry.value
        if not isinstance(value, dict):
            return False
        for name, want in pattern.where:
            if name not in value or json.dumps(value[name], sort_keys=True) != want:
                return False
    return True


def choose(pattern: Pattern, candidates: Sequence[BoardEntry]) -> BoardEntry | None:
    """What a take takes among ``candidates``: the oldest match (last write, then key)."""
    found = [e for e in candidates if matches(pattern, e)]
    return min(found, key=lambda e: (e.updated_at, e.key)) if found else None


@final
@dataclass(frozen=True, slots=True)
class BoardOp:
    """A write to a blackboard (see the module docstring).

    Attributes:
        kind: ``"post"``, ``"take"`` or ``"verify"``.
        board: the board.
        op_key: the idempotency key of the step making it (``run_id:step_id``).
        key: the entry (post, verify).
        value: the value to post.
        expected_version: compare-and-set (post: ``None`` for none, 0 for "new";
            verify: the version judged).
        provenance, sources: recorded with a post.
        pattern: what a take takes.
        state, by, note: a verification.
    """

    kind: Literal["post", "take", "verify"]
    board: str
    op_key: str
    key: str = ""
    value: Any = None
    expected_version: int | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)
    sources: tuple[tuple[str, int], ...] = ()
    pattern: Pattern | None = None
    state: State = "unverified"
    by: str | None = None
    note: str | None = None


def _conflict(op: BoardOp, actual: int, why: str) -> BoardConflictError:
    return BoardConflictError(
        f"blackboard {op.board!r}: {op.kind} of {op.key!r} expected version "
        f"{op.expected_version}, but {why}; nothing was written", board=op.board,
        key=op.key, expected=op.expected_version or 0, actual=actual)


def plan(op: BoardOp, current: BoardEntry | None, now: float) -> BoardEntry | None:
    """The entry after ``op``, given the entry it concerns as it is now (for a take:
    the entry :func:`choose` picked, or ``None``: nothing to take, nothing written).

    Raises:
        BoardConflictError: a compare-and-set that does not hold.
    """
    live = current if current is not None and not current.taken else None
    actual = live.version if live is not None else 0
    if op.kind == "take":
        if current is None:
            return None
        return _replace(current, taken_by=op.op_key, taken_at=now)
    if op.kind == "verify":
        if live is None:
            raise _conflict(op, 0, "there is no such entry")
        if op.expected_version is not None and op.expected_version != actual:
            raise _conflict(op, actual, f"it is at version {actual}")
        return _replace(live, state=op.state, verified_by=op.by, note=op.note)
    if op.expected_version is not None and op.expected_version != actual:
        raise _conflict(op, actual, f"it is at version {actual}" if actual
                        else "there is no such entry")
    version = (current.version if current is not None else 0) + 1
    return BoardEntry(board=op.board, key=op.key, version=version, value=op.value,
                      provenance=dict(op.provenance), sources=op.sources,
                      created_at=live.created_at if live is not None else now,
                      updated_at=now)


def _replace(e: BoardEntry, **changes: Any) -> BoardEntry:
    d = {name: getattr(e, name) for name in e.__dataclass_fields__}
    d.update(changes)
    return BoardEntry(**d)


WAKE_LIMIT = 100
"""The most watching runs one write signals (the oldest watches first); the others see
the entry at their next poll."""

WATCH_COLUMNS = ("run_id", "signal", "board", "pattern", "created_at")
"""The watch table's columns, in the order of :func:`watch_row`."""


@final
@dataclass(frozen=True, slots=True)
class BoardWatch:
    """A run waiting for an entry of ``board`` that matches ``pattern``: a write of one
    sends the run the signal ``signal`` (its own, one per wait)."""

    board: str
    run_id: str
    signal: str
    pattern: Pattern
    created_at: float = 0.0


def watch_row(w: BoardWatch) -> tuple[Any, ...]:
    """A watch as the stores' row (the pattern as JSON text)."""
    return (w.run_id, w.signal, w.board, json.dumps(w.pattern.as_json(), sort_keys=True),
            w.created_at)


def watch_from_row(row: Sequence[Any]) -> BoardWatch:
    """The watch a row of :data:`WATCH_COLUMNS` holds."""
    run_id, signal, board, pattern, created = row
    p = json.loads(pattern)
    return BoardWatch(board, run_id, signal, parse_pattern(
        board, p["glob"], p.get("where") or None, verified_only=bool(p.get("verified_only"))),
        float(created))


def watching(watches: Sequence[BoardWatch], entry: BoardEntry) -> list[BoardWatch]:
    """The watches a write of ``entry`` concerns: the oldest :data:`WAKE_LIMIT` of those
    whose pattern it matches (a taken entry matches none)."""
    found = sorted((w for w in watches if w.board == entry.board and matches(w.pattern, entry)),
                   key=lambda w: (w.created_at, w.run_id, w.signal))
    return found[:WAKE_LIMIT]


def wake_action(state: RunState | None, pending: bool) -> Literal["signal", "keep", "forget"]:
    """What a write does for one watch it concerns: ``forget`` the watch of a run that
    ended or is gone (a signal to it would only lie there), ``keep`` one whose signal is
    already waiting (one is enough: its waiter looks again), else ``signal`` it."""
    if state is None or state.is_terminal:
        return "forget"
    return "keep" if pending else "signal"


def wake_payload(entry: BoardEntry) -> str:
    """The payload of a wake-up signal: the entry written (its waiter looks anyway)."""
    return json.dumps({"board": entry.board, "key": entry.key, "version": entry.version})


@runtime_checkable
class BoardStore(Protocol):
    """A store that keeps blackboards (:class:`~stalwart.store.SQLiteStore`,
    ``PostgresStore`` and :class:`~stalwart.testing.MemoryStore` do)."""

    async def board_apply(self, op: BoardOp, *, now: float) -> BoardEntry | None:
        """Apply ``op`` atomically (see :func:`plan`); an op whose ``op_key`` was applied
        before returns what it returned then and changes nothing.

        Raises:
            BoardConflictError: a compare-and-set that does not hold (nothing written).
        """
        ...

    async def board_entries(self, board: str, *, prefix: str = "") -> list[BoardEntry]:
        """The entries of ``board`` whose key starts with ``prefix`` (taken ones too),
        by key."""
        ...

    async def board_names(self) -> list[str]:
        """The boards that have entries."""
        ...

    async def board_watches(self, board: str) -> list[BoardWatch]:
        """The runs watching ``board`` (waiting for a match), oldest first."""
        ...

    async def board_watch(self, watch: BoardWatch) -> None:
        """Keep ``watch`` (again: nothing changes)."""
        ...

    async def board_unwatch(self, run_id: str, signal: str) -> None:
        """Drop the run's watch ``signal`` (none: nothing changes)."""
        ...

    async def board_wake(self, entry: BoardEntry, *, now: float) -> list[str]:
        """Signal the runs watching for ``entry`` (just written), atomically: for each
        watch of :func:`watching`, do what :func:`wake_action` says (a signal wakes its
        run as ``send_signal`` does). Returns the runs signalled."""
        ...
