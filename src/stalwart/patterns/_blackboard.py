"""A blackboard: a durable tuple space in the store, shared by runs and workers.

Hearsay-II's blackboard and Linda's tuple space, on the durable core: ``sw.Blackboard(
"facts")`` names a board in the runtime's store (SQLite, PostgreSQL or the in-memory
store), and every operation on it is a journaled step of the calling run, so a replay
sees what the first execution saw and a crash never posts or takes twice (the store
keys each operation by the step's idempotency key; see :mod:`stalwart.store._board`).

* ``post(ctx, key, value)`` writes a new version, unverified, recording its provenance
  (run, step, workflow, agent, model, time) and the entries it was derived from
  (``sources=``); ``expected_version=`` makes it a compare-and-set
  (:class:`~stalwart.errors.BoardConflictError`).
* ``read(ctx, pattern)`` and ``get(ctx, key)`` read; ``take(ctx, pattern)`` removes the
  oldest match atomically — exactly one taker across workers (Linda's ``in``);
  ``wait(ctx, pattern)`` waits durably for a match: a post or verification that makes
  an entry match wakes it through a durable signal (in any process or worker), and a
  poll with backoff stays the bound (see :meth:`Blackboard.wait`).
* Entries carry a **verification state**: ``unverified`` when written, ``verified`` or
  ``refuted`` by a verifier (``verify``). Consumers that must not build on a
  hallucination ask ``verified_only=True``. Verifiers are agents or functions
  registered as *knowledge sources* (``knowledge_source``) that a controller activates
  (``run_verifiers``) on the unverified entries they cover. A refuted entry is a
  semantic failure of the agent and model that posted it.
* **Context poisoning** is made visible: :meth:`Blackboard.poisoning` follows each
  entry's sources and flags every entry built, directly or through others, on a refuted
  one, with the chain of provenance that led to it (``stalwart board NAME`` shows it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final

from pydantic import TypeAdapter

from .._agent import Agent
from .._context import current_step
from ..errors import BlackboardError, ConfigurationError, SignalTimeoutError
from ..store._board import (
    BoardEntry,
    BoardOp,
    BoardStore,
    BoardWatch,
    Pattern,
    matches,
    parse_pattern,
)
from ._members import RUN_ERRORS, Semantic, ask, labels, prompt_of, record
from ._refine import Verdict

if TYPE_CHECKING:
    from .._context import Context
    from ..engine._engine import Engine

__all__ = ["Blackboard", "BoardEntry", "Poisoned", "poisoning"]

_VERDICT: TypeAdapter[Verdict | bool] = TypeAdapter(Verdict | bool)

WAKE_ON_WRITE = "blackboard.wait:wake-on-write"
"""The change (``Context.patched``) by which a wait watches the board and is woken by
writes; a wait journaled before it polls on."""


@final
@dataclass(frozen=True, slots=True)
class Poisoned:
    """An entry built on a refuted one.

    Attributes:
        key: the entry.
        chain: the keys from it to the refuted entry, through its sources
            (``chain[0] == key``, ``chain[-1]`` refuted).
        refuted_by: who refuted the root, and why.
    """

    key: str
    chain: tuple[str, ...]
    refuted_by: str | None


def poisoning(entries: Sequence[BoardEntry]) -> list[Poisoned]:
    """Every entry of ``entries`` (one board's) built on a refuted entry, with the
    shortest chain of sources to one; a refuted entry itself is not listed. A source
    counts at the version it was read at: a refuted key that was rewritten since poisons
    only what was built on the refuted version."""
    by_key = {e.key: e for e in entries}
    out = []
    for e in entries:
        if e.state == "refuted":
            continue
        seen = {e.key}
        frontier: list[tuple[BoardEntry, tuple[str, ...]]] = [(e, (e.key,))]
        found: tuple[str, ...] | None = None
        root: BoardEntry | None = None
        while frontier and found is None:
            nxt: list[tuple[BoardEntry, tuple[str, ...]]] = []
            for cur, path in frontier:
                for key, version in cur.sources:
                    src = by_key.get(key)
                    if src is None or key in seen:
                        continue
                    seen.add(key)
                    if src.state == "refuted" and src.version == version:
                        found, root = (*path, key), src
                        break
                    nxt.append((src, (*path, key)))
                if found is not None:
                    break
            frontier = nxt
        if found is not None and root is not None:
            out.append(Poisoned(e.key, found, root.verified_by))
    return out


@dataclass(frozen=True, slots=True)
class _Source:
    verifier: Any
    name: str
    pattern: Pattern


def _board_store(ctx: Context, board: str) -> BoardStore:
    store = ctx.execution.engine.store
    if not isinstance(store, BoardStore):
        raise ConfigurationError(f"blackboard {board!r}: the runtime's store "
                                 f"({type(store).__name__}) keeps no blackboards")
    return store


async def _wake(engine: Engine, store: BoardStore, entry: BoardEntry) -> None:
    """Signal the runs waiting for ``entry`` (just written; inside its step, so a crash
    before the step is journaled wakes them when the step runs again)."""
    for run_id in await store.board_wake(entry, now=engine.clock.now()):
        engine.wake_local(run_id)
        engine.journal_written(run_id)


def _model_label(agent: Any) -> str | None:
    if not isinstance(agent, Agent):
        return None
    model = agent.model
    return model if isinstance(model, str) else (
        f"{getattr(model, 'provider', '?')}:{getattr(model, 'name', '?')}")


@final
class Blackboard:
    """A named blackboard in the runtime's store (see the module docstring).

    Args:
        name: the board's name (boards of one store are separate).
        breaker: count each refuted entry against the circuit breaker of the model that
            posted it.

    Raises:
        ConfigurationError: an empty name.
    """

    def __init__(self, name: str, *, breaker: bool = False) -> None:
        if not isinstance(name, str) or not name or any(ord(c) < 32 for c in name):
            raise ConfigurationError(f"a blackboard needs a printable name, not {name!r}")
        self.name = name
        self.breaker = breaker
        self._sources: list[_Source] = []

    def __repr__(self) -> str:
        return f"<Blackboard {self.name}>"

    def pattern(self, glob: str = "*", *, where: Mapping[str, Any] | None = None,
                verified_only: bool = False) -> Pattern:
        """A checked pattern (:class:`~stalwart.errors.BoardPatternError` if not)."""
        return parse_pattern(self.name, glob, where, verified_only=verified_only)

    # -- writing ---------------------------------------------------------------------

    async def post(self, ctx: Context, key: str, value: Any, *,
                   expected_version: int | None = None, agent: Agent[Any] | str | None = None,
                   model: str | None = None,
                   sources: Sequence[BoardEntry | tuple[str, int]] = ()) -> BoardEntry:
        """Write ``value`` at ``key`` as a new, unverified version (one journaled step).

        Args:
            expected_version: compare-and-set: the version the entry must be at (0: it
                must not exist).
            agent, model: who wrote it, for its provenance (an agent gives its model).
            sources: the entries (or ``(key, version)``) it was derived from.

        Raises:
            BoardConflictError: the entry is at another version (nothing written).
            ConfigurationError: an empty key, a bad ``expected_version``.
        """
        if not isinstance(key, str) or not key:
            raise ConfigurationError(f"blackboard {self.name!r}: a key is a non-empty "
                                     f"string, not {key!r}")
        if expected_version is not None and (isinstance(expected_version, bool) or not
                                             isinstance(expected_version, int)
                                             or expected_version < 0):
            raise ConfigurationError(f"blackboard {self.name!r}: expected_version must "
                                     f"be an int >= 0, not {expected_version!r}")
        src = tuple((s.key, s.version) if isinstance(s, BoardEntry) else (str(s[0]), int(s[1]))
                    for s in sources)
        who = agent.name if isinstance(agent, Agent) else agent
        store, engine = _board_store(ctx, self.name), ctx.execution.engine
        workflow = ctx.workflow_name

        async def posted(value: Any) -> dict[str, Any]:
            step = current_step()
            now = engine.clock.now()
            op = BoardOp("post", self.name, step.idempotency_key, key=key, value=value,
                         expected_version=expected_version, sources=src, provenance={
                             "run_id": step.run_id, "step_id": step.step_id,
                             "workflow": workflow, "agent": who,
                             "model": model or _model_label(agent), "at": now})
            entry = await store.board_apply(op, now=now)
            assert entry is not None
            await _wake(engine, store, entry)
            return entry.as_json()

        return BoardEntry.from_json(await ctx.step(posted, value,
                                                   name=f"board:{self.name}:post"))

    async def verify(self, ctx: Context, key: str, *, verified: bool, by: str,
                     note: str | None = None, version: int | None = None) -> BoardEntry:
        """Mark the entry at ``key`` verified or refuted by ``by`` (one journaled step);
        with ``version``, only if it is still at that version (the one judged). A
        refutation is a semantic failure of the agent and model that posted it.

        Raises:
            BoardConflictError: no such entry, or it is at another version.
        """
        store, engine = _board_store(ctx, self.name), ctx.execution.engine

        async def judged(key: str) -> dict[str, Any]:
            op = BoardOp("verify", self.name, current_step().idempotency_key, key=key,
                         state="verified" if verified else "refuted", by=by, note=note,
                         expected_version=version)
            entry = await store.board_apply(op, now=engine.clock.now())
            assert entry is not None
            await _wake(engine, store, entry)
            return entry.as_json()

        entry = BoardEntry.from_json(await ctx.step(judged, key,
                                                    name=f"board:{self.name}:verify"))
        if not verified:
            prov = entry.provenance
            await record(ctx, f"board:{self.name}:refuted", {
                "key": key, "version": entry.version, "by": by, "note": note,
                "provenance": dict(prov)}, [Semantic(
                    str(prov.get("agent") or prov.get("workflow") or "?"),
                    prov.get("model"), f"{self.name}/{key} refuted by {by}: {note or ''}")],
                breaker=self.breaker)
        return entry

    # -- reading and taking ----------------------------------------------------------

    async def read(self, ctx: Context, pattern: str = "*", *,
                   where: Mapping[str, Any] | None = None,
                   verified_only: bool = False) -> list[BoardEntry]:
        """The entries that match (not taken), by key (one journaled step).

        Raises:
            BoardPatternError: the pattern is not valid (nothing read).
        """
        p = self.pattern(pattern, where=where, verified_only=verified_only)
        store = _board_store(ctx, self.name)

        async def looked(glob: str) -> list[dict[str, Any]]:
            return [e.as_json() for e in await store.board_entries(self.name,
                                                                   prefix=p.prefix)
                    if matches(p, e)]

        rows = await ctx.step(looked, pattern, name=f"board:{self.name}:read")
        return [BoardEntry.from_json(r) for r in rows]

    async def get(self, ctx: Context, key: str) -> BoardEntry | None:
        """The entry at ``key`` (``None``: none, or taken)."""
        escaped = "".join("\\" + c if c in "*?\\" else c for c in key)
        found = await self.read(ctx, escaped)
        return found[0] if found else None

    async def take(self, ctx: Context, pattern: str = "*", *,
                   where: Mapping[str, Any] | None = None,
                   verified_only: bool = False) -> BoardEntry | None:
        """Remove and return the oldest matching entry, or ``None`` (one journaled step;
        exactly one taker of an entry across runs and workers).

        Raises:
            BoardPatternError: the pattern is not valid (nothing taken).
        """
        p = self.pattern(pattern, where=where, verified_only=verified_only)
        store, engine = _board_store(ctx, self.name), ctx.execution.engine

        async def took(glob: str) -> dict[str, Any] | None:
            op = BoardOp("take", self.name, current_step().idempotency_key, pattern=p)
            entry = await store.board_apply(op, now=engine.clock.now())
            return None if entry is None else entry.as_json()

        row = await ctx.step(took, pattern, name=f"board:{self.name}:take")
        return None if row is None else BoardEntry.from_json(row)

    async def wait(self, ctx: Context, pattern: str = "*", *,
                   where: Mapping[str, Any] | None = None, verified_only: bool = False,
                   take: bool = False, timeout: float | None = None, poll: float = 1.0,
                   max_poll: float = 60.0) -> BoardEntry:
        """Wait durably until an entry matches; return it (taken, with ``take=True``).

        The wait *watches* the board first (a step that records the run, the pattern
        and a signal of its own in the store), then looks (a step). While nothing
        matches it waits for that signal (a durable ``wait_for_signal``: a long wait
        parks the run), and looks again when it comes: a post or verification, by any
        run in any process, that writes an entry the pattern matches signals every
        watching run at once (the oldest 100 of them; see
        :mod:`stalwart.store._board`). Watching before the first look means a match
        written between a look and the wait is not lost: its signal waits. The poll is
        the bound: without a signal the wait looks again after ``poll`` seconds,
        doubling up to ``max_poll``. The watch is dropped when the wait returns or
        times out (and, by the next write it concerns, once the run has ended). Every
        decision is journaled, so a replay takes the same path. Two waiters woken for
        one entry with ``take=True`` both try; one takes it, the other waits on.

        Raises:
            BoardPatternError: the pattern is not valid.
            BlackboardError: nothing matched within ``timeout`` seconds.
        """
        p = self.pattern(pattern, where=where, verified_only=verified_only)
        for label, value in (("poll", poll), ("max_poll", max_poll)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    0 < value < math.inf):
                raise ConfigurationError(f"Blackboard.wait: {label} must be a positive, "
                                         f"finite number of seconds, not {value!r}")
        start = await ctx.now()
        # A wait begun before writes woke waiters (it polled with journaled sleeps)
        # goes on polling: its journal has no watch here (see Context.patched).
        signal = await self._watch(ctx, p) if await ctx.patched(WAKE_ON_WRITE) else None
        delay = float(poll)
        while True:
            if take:
                got = await self.take(ctx, pattern, where=where, verified_only=verified_only)
            else:
                found = await self.read(ctx, pattern, where=where,
                                        verified_only=verified_only)
                got = found[0] if found else None
            if got is not None:
                if signal is not None:
                    await self._unwatch(ctx, signal)
                return got
            waited = await ctx.now() - start
            if timeout is not None and waited >= timeout:
                if signal is not None:
                    await self._unwatch(ctx, signal)
                raise BlackboardError(
                    f"blackboard {self.name!r}: no entry matched {pattern!r}"
                    f"{' (verified only)' if verified_only else ''} within {timeout:g}s",
                    board=self.name, run_id=ctx.run_id)
            bound = delay if timeout is None else min(delay, timeout - waited)
            if signal is None:
                await ctx.sleep(bound)
                delay = min(delay * 2, float(max_poll))
                continue
            try:
                await ctx.wait_for_signal(signal, timeout=bound)
            except SignalTimeoutError:
                delay = min(delay * 2, float(max_poll))

    async def _watch(self, ctx: Context, p: Pattern) -> str:
        """Watch the board for ``p`` (one step); the signal a write of a match sends."""
        store, engine = _board_store(ctx, self.name), ctx.execution.engine

        async def watched(glob: str) -> str:
            step = current_step()
            signal = f"board:{self.name}:{step.step_id}"
            await store.board_watch(BoardWatch(self.name, step.run_id, signal, p,
                                               engine.clock.now()))
            return signal

        return str(await ctx.step(watched, p.glob, name=f"board:{self.name}:watch"))

    async def _unwatch(self, ctx: Context, signal: str) -> None:
        store = _board_store(ctx, self.name)

        async def unwatched(signal: str) -> None:
            await store.board_unwatch(current_step().run_id, signal)

        await ctx.step(unwatched, signal, name=f"board:{self.name}:unwatch")

    # -- knowledge sources -----------------------------------------------------------

    def knowledge_source(self, verifier: Any, *, pattern: str = "*",
                         name: str | None = None) -> None:
        """Register a verifier for the entries matching ``pattern``: an agent (asked
        the entry, best with ``output_type=sw.Verdict``) or a function of the
        :class:`BoardEntry` returning a :class:`~stalwart.Verdict` or a bool.

        Raises:
            ConfigurationError: not an agent or function; a name used twice.
            BoardPatternError: the pattern is not valid.
        """
        label = name or labels([verifier], "knowledge sources")[0]
        if label in {s.name for s in self._sources}:
            raise ConfigurationError(f"blackboard {self.name!r}: two knowledge sources "
                                     f"are named {label!r}")
        self._sources.append(_Source(verifier, label, self.pattern(pattern)))

    async def run_verifiers(self, ctx: Context, pattern: str = "*") -> list[BoardEntry]:
        """The controller: activate the knowledge sources on every unverified entry
        matching ``pattern`` that they cover; each entry is verified when every source
        covering it accepts it, refuted when one rejects it (the others are not asked).
        Returns the entries judged, as they are now. Every verdict is a journaled step.

        Raises:
            ConfigurationError: no knowledge source is registered.
            BlackboardError: a verifier raised (its entry stays unverified; the cause
                is the verifier's error).
        """
        if not self._sources:
            raise ConfigurationError(f"blackboard {self.name!r}: no knowledge source to "
                                     "run (register one with knowledge_source())")
        judged = []
        for entry in await self.read(ctx, pattern):
            if entry.state != "unverified":
                continue
            covering = [s for s in self._sources if s.pattern.regex.fullmatch(entry.key)]
            if not covering:
                continue
            verdict: tuple[bool, str, str | None] = (True, covering[-1].name, None)
            for source in covering:
                accept, note = await self._ask(ctx, source, entry)
                if not accept:
                    verdict = (False, source.name, note)
                    break
            judged.append(await self.verify(ctx, entry.key, verified=verdict[0],
                                            by=verdict[1], note=verdict[2],
                                            version=entry.version))
        return judged

    async def _ask(self, ctx: Context, source: _Source, entry: BoardEntry
                   ) -> tuple[bool, str | None]:
        prompt = (f"Check this entry of the blackboard {self.name!r}. Is it correct?\n"
                  f"key: {entry.key}\nvalue: {prompt_of(entry.value)}")
        try:
            reply = await ask(ctx, source.verifier, source.name, entry, prompt,
                              pattern=f"board:{self.name}:check", output=_VERDICT,
                              catch=False)
        except RUN_ERRORS:
            raise
        except Exception as exc:
            raise self._verifier_failed(source, entry, exc) from exc
        value = reply.value
        if isinstance(value, Verdict):
            return value.accept, "; ".join(value.reasons) or None
        return bool(value), None

    def _verifier_failed(self, source: _Source, entry: BoardEntry,
                         exc: BaseException) -> BlackboardError:
        return BlackboardError(
            f"blackboard {self.name!r}: verifier {source.name!r} failed on {entry.key!r} "
            f"(version {entry.version}): {type(exc).__name__}: {exc}; the entry stays "
            "unverified", board=self.name)

    async def poisoning(self, ctx: Context) -> list[Poisoned]:
        """The entries built on a refuted entry, with their chains (see
        :func:`poisoning`); read as one journaled step."""
        return poisoning(await self.read(ctx, "*"))


Verifier = Agent[Any] | Callable[[BoardEntry], Any]
"""A knowledge source that judges entries."""
