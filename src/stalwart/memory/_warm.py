"""Warm and cold memory: what an agent keeps out of its window, in the store, searchable.

``sw.Memory("notes")`` names a memory in the runtime's store. It is built on the
blackboard's tables (:mod:`stalwart.store._board`: no table of its own, no migration,
the same on SQLite, PostgreSQL and the in-memory store): the warm tier is the board
``memory:<name>``, the cold tier ``memory:<name>:cold``. Entries belong to a *memory
key* (an agent's ``memory_key``, by default its name), so what one run of an agent
paged out or remembered is found by the next run of the same key, and never by another
key's. An entry's key is ``<memory key, %-quoted>/<run id>/<step id>/<n>``: written
from one step, known before the write, the same on every replay.

Every write goes through the board's idempotent operation (keyed ``run_id:step_id``
plus the entry's suffix), inside a journaled step: a step re-run after a crash finds its
operations applied and writes nothing twice. Every read inside a workflow is a journaled
step: a replay sees what the first execution saw, whatever was written since.

Search (:mod:`._search`): BM25 over keywords by default; cosine similarity with
``embed=``. The ``auto`` tier searches warm entries, and the cold tier only when no warm
entry matches. :meth:`Memory.archive` moves warm entries to the cold tier (older than a
time, or all but the newest ``keep``): cold entries stay searchable (``tier="cold"``, or
``auto`` when warm has nothing), they just stop competing with warm ones.

What this is not: a vector database. A search reads every entry of the memory key (one
indexed prefix scan) and scores them in the process; that is fine for thousands of
entries per key, not for millions. Archive what you no longer need warm.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, final
from urllib.parse import quote

from ..engine._scope import current_step
from ..engine._tools import Tool
from ..errors import ConfigurationError, MemoryQueryError, MemoryStoreError
from ..store._board import BoardEntry, BoardOp, BoardStore, parse_pattern
from ._search import Candidate, Scored, cut, rank, vector

if TYPE_CHECKING:
    from .._context import Context

__all__ = ["Memory", "MemoryHit", "Tier", "memory_prefix", "recall_tool"]

Tier = Literal["auto", "warm", "cold"]
TIERS: tuple[str, ...] = ("auto", "warm", "cold")
Embed = Callable[[str], Sequence[float]]


def memory_prefix(key: str) -> str:
    """The entry-key prefix of memory key ``key`` (``/`` and ``%`` quoted, so one key is
    never a prefix of another's entries)."""
    return quote(key, safe="") + "/"


def check_key(key: object) -> str:
    if not isinstance(key, str) or not key or any(ord(c) < 32 for c in key):
        raise ConfigurationError(f"a memory key is a non-empty printable string, not {key!r}")
    return key


@final
@dataclass(frozen=True, slots=True)
class MemoryHit:
    """One memory entry a search or a listing returned.

    Attributes:
        key: the entry's key.
        text: what it holds.
        score: its search score (BM25, or cosine similarity with ``embed``; 0 in a
            listing by recency).
        tier: ``"warm"`` or ``"cold"``.
        at: when it was written (the runtime clock's time).
        source: where it came from: ``kind`` (``"page"``: paged out of a window;
            ``"note"``: remembered explicitly), ``run_id``, ``agent``, and for a page
            ``messages`` (the conversation's message indices it held).
    """

    key: str
    text: str
    score: float
    tier: str
    at: float
    source: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "text": self.text, "score": self.score, "tier": self.tier,
                "at": self.at, "source": self.source}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MemoryHit:
        return cls(str(d["key"]), str(d["text"]), float(d["score"]), str(d["tier"]),
                   float(d["at"]), dict(d.get("source") or {}))


@final
class Memory:
    """A named memory in the runtime's store: warm and cold tiers of text entries, per
    memory key (see the module docstring).

    Args:
        name: the memory's name (memories of one store are separate).
        embed: a function of a text returning its vector (any fixed size); ``None``:
            keyword search (BM25). Called in the writing and searching steps.
        min_similarity: with ``embed``, the cosine similarity an entry must reach to
            match (below it, the ``auto`` tier goes on to the cold entries).

    Raises:
        ConfigurationError: an empty name, ``embed`` not callable, ``min_similarity``
            outside [-1, 1].
    """

    def __init__(self, name: str = "memory", *, embed: Embed | None = None,
                 min_similarity: float = 0.3) -> None:
        if not isinstance(name, str) or not name or any(ord(c) < 32 for c in name):
            raise ConfigurationError(f"a memory needs a printable name, not {name!r}")
        if embed is not None and not callable(embed):
            raise ConfigurationError(f"memory {name!r}: embed must be a function of a text")
        if (isinstance(min_similarity, bool) or not isinstance(min_similarity, int | float)
                or not -1.0 <= min_similarity <= 1.0):
            raise ConfigurationError(f"memory {name!r}: min_similarity must be in [-1, 1]")
        self.name = name
        self.embed = embed
        self.min_similarity = float(min_similarity)

    def __repr__(self) -> str:
        return f"<Memory {self.name}>"

    @property
    def warm_board(self) -> str:
        return f"memory:{self.name}"

    @property
    def cold_board(self) -> str:
        return f"memory:{self.name}:cold"

    # -- in a workflow (each call one journaled step) ---------------------------------

    async def remember(self, ctx: Context, text: str, *, key: str) -> str:
        """Write ``text`` to the warm tier of memory key ``key``; returns the entry's key.

        Raises:
            ConfigurationError: an empty text or key.
            EmbeddingError: the embedding function misbehaved (nothing written).
        """
        check_key(key)
        if not isinstance(text, str) or not text.strip():
            raise ConfigurationError(f"memory {self.name!r}: remember() needs a non-empty text")
        store, engine = self.board_store(ctx.execution.engine.store), ctx.execution.engine

        async def remembered(text: str) -> str:
            step = current_step()
            keys = await self.write(store, key=key, op_key=step.idempotency_key,
                                    run_id=step.run_id, step_id=step.step_id,
                                    now=engine.clock.now(), chunks=[("note", text, {})],
                                    source={"kind": "note", "run_id": step.run_id,
                                            "workflow": ctx.workflow_name})
            return keys[0]

        return str(await ctx.step(remembered, text, name=f"memory:{self.name}:remember"))

    async def search(self, ctx: Context, query: str, *, key: str, k: int = 5,
                     tier: Tier = "auto") -> list[MemoryHit]:
        """The ``k`` best entries of memory key ``key`` matching ``query``, best first
        (``tier="auto"``: warm, and cold only when nothing warm matches). One journaled
        step.

        Raises:
            MemoryQueryError: an empty query, ``k`` below 1, an unknown tier.
            EmbeddingError: the embedding function misbehaved.
        """
        self.check_query(query, k, tier)
        check_key(key)
        store = self.board_store(ctx.execution.engine.store)

        async def searched(query: str) -> list[dict[str, Any]]:
            return [h.as_json() for h in await self.find(store, key=key, query=query, k=k,
                                                         tier=tier)]

        rows = await ctx.step(searched, query, name=f"memory:{self.name}:search")
        return [MemoryHit.from_json(r) for r in rows]

    async def recent(self, ctx: Context, *, key: str, k: int = 5,
                     tier: Literal["warm", "cold"] = "warm") -> list[MemoryHit]:
        """The ``k`` newest entries of memory key ``key``, newest first. One journaled
        step.

        Raises:
            MemoryQueryError: ``k`` below 1, an unknown tier.
        """
        self.check_query("recent", k, tier)
        if tier not in ("warm", "cold"):
            raise MemoryQueryError(f"memory {self.name!r}: recent() lists one tier, "
                                   "'warm' or 'cold'", memory=self.name)
        check_key(key)
        store = self.board_store(ctx.execution.engine.store)

        async def listed(key: str) -> list[dict[str, Any]]:
            hits = await self.entries(store, key=key, tier=tier)
            return [h.as_json() for h in hits[:k]]

        rows = await ctx.step(listed, key, name=f"memory:{self.name}:recent")
        return [MemoryHit.from_json(r) for r in rows]

    async def archive(self, ctx: Context, *, key: str, before: float | None = None,
                      keep: int | None = None) -> list[str]:
        """Move warm entries of memory key ``key`` to the cold tier: those written
        before ``before`` (the runtime clock's time, e.g. ``await ctx.now() - 86400``),
        and all but the newest ``keep``. Returns the keys moved.

        Two journaled steps: the choice, then the moves (each entry taken from the warm
        board and posted to the cold one by idempotent operations), so a crash between
        them moves the chosen entries, once.

        Raises:
            ConfigurationError: neither ``before`` nor ``keep``, or ``keep`` below 0.
        """
        check_key(key)
        if before is None and keep is None:
            raise ConfigurationError(f"memory {self.name!r}: archive() needs before= or keep=")
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int)
                                 or keep < 0):
            raise ConfigurationError(f"memory {self.name!r}: keep must be an int >= 0")
        store, engine = self.board_store(ctx.execution.engine.store), ctx.execution.engine

        async def chosen(key: str) -> list[str]:
            hits = await self.entries(store, key=key, tier="warm")  # newest first
            old = {h.key for h in hits if before is not None and h.at < before}
            if keep is not None:
                old |= {h.key for h in hits[keep:]}
            return sorted(old)

        keys = await ctx.step(chosen, key, name=f"memory:{self.name}:archive-plan")

        async def moved(keys: list[str]) -> list[str]:
            op_key, now = current_step().idempotency_key, engine.clock.now()
            out = []
            for k in keys:
                exact = "".join("\\" + c if c in "*?\\" else c for c in k)
                taken = await store.board_apply(BoardOp(
                    "take", self.warm_board, f"{op_key}#take:{k}",
                    pattern=parse_pattern(self.warm_board, exact)), now=now)
                if taken is None:
                    continue  # archived or gone meanwhile
                await store.board_apply(BoardOp(
                    "post", self.cold_board, f"{op_key}#put:{k}", key=k, value=taken.value,
                    provenance=dict(taken.provenance)), now=now)
                out.append(k)
            return out

        return list(await ctx.step(moved, list(keys), name=f"memory:{self.name}:archive"))

    # -- outside a workflow, and the engine's use --------------------------------------

    async def entries(self, store: object, *, key: str,
                      tier: Literal["warm", "cold"] = "warm") -> list[MemoryHit]:
        """Every entry of memory key ``key`` in ``tier``, newest first, read from
        ``store`` directly (not journaled: for inspection and tests, e.g.
        ``await memory.entries(app.store, key="reader")``)."""
        board = self.warm_board if tier == "warm" else self.cold_board
        rows = await self.board_store(store).board_entries(board, prefix=memory_prefix(key))
        hits = [_hit(e, tier, 0.0) for e in rows if not e.taken]
        hits.sort(key=lambda h: (-h.at, h.key))
        return hits

    def check_query(self, query: object, k: object, tier: object) -> None:
        """Refuse a search that cannot be made (:class:`MemoryQueryError`)."""
        if not isinstance(query, str) or not query.strip():
            raise MemoryQueryError(f"memory {self.name!r}: a search needs a non-empty "
                                   f"query, not {query!r}", memory=self.name)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise MemoryQueryError(f"memory {self.name!r}: k must be an int >= 1, not {k!r}",
                                   memory=self.name)
        if tier not in TIERS:
            raise MemoryQueryError(f"memory {self.name!r}: tier must be one of {TIERS}, "
                                   f"not {tier!r}", memory=self.name)

    async def write(self, store: BoardStore, *, key: str, op_key: str, run_id: str,
                    step_id: str, now: float, chunks: Sequence[tuple[str, str, dict[str, Any]]],
                    source: dict[str, Any]) -> list[str]:
        """Post each ``(suffix, text, extra source)`` chunk as a warm entry; returns their
        keys. Idempotent: each post is keyed ``op_key#suffix``, so a step run again
        after a crash writes nothing twice. Embeddings are computed before any write."""
        vectors = [None if self.embed is None else list(vector(self.name, self.embed(text)))
                   for _, text, _ in chunks]
        keys = []
        for (suffix, text, extra), vec in zip(chunks, vectors, strict=True):
            entry_key = f"{memory_prefix(key)}{run_id}/{step_id}/{suffix}"
            value: dict[str, Any] = {"text": text, "at": now, "source": {**source, **extra}}
            if vec is not None:
                value["embedding"] = vec
            await store.board_apply(BoardOp(
                "post", self.warm_board, f"{op_key}#{suffix}", key=entry_key, value=value,
                provenance={"run_id": run_id, "step_id": step_id,
                            "agent": source.get("agent"), "at": now}), now=now)
            keys.append(entry_key)
        return keys

    async def find(self, store: BoardStore, *, key: str, query: str, k: int,
                   tier: Tier) -> list[MemoryHit]:
        """The search itself (see :meth:`search`), not journaled: the caller's step is."""
        self.check_query(query, k, tier)
        found: list[MemoryHit] = []
        for t in (("warm", "cold") if tier == "auto" else (tier,)):
            board = self.warm_board if t == "warm" else self.cold_board
            rows = [e for e in await store.board_entries(board, prefix=memory_prefix(key))
                    if not e.taken]
            scored = rank(self.name, query, [_candidate(e) for e in rows], embed=self.embed,
                          min_similarity=self.min_similarity)
            found = [_scored_hit(s, t) for s in scored if s.match][:k]
            if found:
                break
        return found

    def board_store(self, store: object) -> BoardStore:
        """``store`` as a board store (:class:`MemoryStoreError` if it keeps none)."""
        if not isinstance(store, BoardStore):
            raise MemoryStoreError(f"memory {self.name!r}: the store "
                                   f"({type(store).__name__}) keeps no blackboards",
                                   memory=self.name)
        return store


def _candidate(e: BoardEntry) -> Candidate:
    value = e.value if isinstance(e.value, dict) else {"text": str(e.value)}
    emb = value.get("embedding")
    return Candidate(e.key, str(value.get("text", "")), float(value.get("at", e.created_at)),
                     None if emb is None else tuple(float(x) for x in emb), e)


def _hit(e: BoardEntry, tier: str, score: float) -> MemoryHit:
    c = _candidate(e)
    value = e.value if isinstance(e.value, dict) else {}
    return MemoryHit(e.key, c.text, score, tier, c.created_at,
                     dict(value.get("source") or {}))


def _scored_hit(s: Scored, tier: str) -> MemoryHit:
    entry = s.candidate.meta
    assert isinstance(entry, BoardEntry)
    return _hit(entry, tier, round(s.score, 6))


RECALL_DESCRIPTION = (
    "Search your memory: earlier parts of this conversation that were paged out of your "
    "context window, and what you remembered in earlier runs. Give a few specific "
    "keywords (names, numbers, topics). Returns the best matching entries, best first.")


def render(query: str, hits: Sequence[MemoryHit], *, max_tokens: int,
           count: Callable[[str], int]) -> str:
    """What the recall tool answers: the hits best first, within ``max_tokens`` (the
    first hit is cut to fit; the ones that do not fit are counted, not shown)."""
    if not hits:
        return f"No memory matches {query!r}. Try other keywords."
    head = f"Memory entries matching {query!r}, best first:"
    out, used = [head], count(head)
    shown = 0
    for h in hits:
        block = f"--- {h.key} ({h.tier}, score {h.score:.2f})\n{h.text}"
        n = count(block) + 1
        if used + n > max_tokens:
            if shown == 0:
                block = cut(block, max(0, max_tokens - used - 16), count) + " [cut]"
                out.append(block)
                shown = 1
            break
        out.append(block)
        used += n
        shown += 1
    if shown < len(hits):
        out.append(f"({len(hits) - shown} more matches not shown: use narrower keywords)")
    return cut("\n".join(out), max_tokens, count)


def recall_tool(memory: Memory, key: str, *, store: object, max_tokens: int,
                count: Callable[[str], int]) -> Tool[Any, Any]:
    """The ``recall`` tool an agent with memory is offered: a search of its memory key
    (warm, then cold), answered within ``max_tokens`` tokens. A tool call is a journaled
    step, so a replay sees what the first execution read."""
    board = memory.board_store(store) if store is not None else None

    async def recall(query: str, k: int = 5) -> str:
        assert board is not None
        hits = await memory.find(board, key=key, query=query, k=k, tier="auto")
        return render(query, hits, max_tokens=max_tokens, count=count)

    return Tool(recall, name="recall", description=RECALL_DESCRIPTION, effect="read")

