"""A context window: a bounded buffer of messages with an explicit overflow policy.

This module is the pure part: what a window holds, how a request is measured, and
what a policy decides when the request would not fit. It does no I/O; the agent's
history (:mod:`._history`) carries the decisions out and journals each one.

Measuring is incremental: each message is counted once, when it enters the window, and
the window keeps the running total, so the bookkeeping of a call costs the new messages,
not the history (``bench/bench_context.py`` measures it at 100k tokens).

What a window never does: drop a *pinned* message (the system prompt, the task — the
first user message — and the latest user turn; a fan-in's results are not pinned), send
a request over its limit, or move anything without saying so (every decision is a
:class:`Decision` the history journals).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Literal, TypeAlias, final

from ..errors import ConfigurationError, ContextOverflowError
from ..models import Message, ModelLimits, Tokenizer, ToolSpec, get_tokenizer, model_limits
from ._warm import Memory

__all__ = [
    "ContextWindow",
    "Decision",
    "Evict",
    "Moved",
    "Page",
    "Reject",
    "Summarize",
    "WindowLimit",
    "WindowPolicy",
    "WindowState",
]

MESSAGE_OVERHEAD = 4
"""Tokens a message costs besides its text (role and separators; OpenAI's figure)."""
REQUEST_OVERHEAD = 3
"""Tokens a request costs besides its messages (the reply's priming)."""
STUB = "[tool result evicted by the context window: {tokens} tokens]"
"""What an evicted tool result becomes: the call keeps its answer (providers refuse a
tool call without one), the content goes."""


@final
@dataclass(frozen=True, slots=True)
class Reject:
    """Refuse a request that would not fit: :class:`~stalwart.errors.ContextOverflowError`
    with the numbers, before any call."""

    def describe(self) -> str:
        return "reject"


EvictOrder = Literal["oldest", "lru", "priority"]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Evict:
    """Drop what matters least until the request fits.

    Tool results go first (each becomes a short stub, so its call keeps an answer), then
    whole turns of dialogue (an assistant turn with its tool calls and their results go
    together); within each, by ``order``: ``"oldest"`` first, ``"lru"`` (least recently
    referenced: a later assistant turn that mentions one of a message's words of six
    letters or more refers to it), or ``"priority"`` (lowest ``priority(message)``
    first, then oldest). With ``ttl``, messages that entered more than ``ttl`` model
    turns ago are evicted before each call whether or not they fit.
    """

    order: EvictOrder = "oldest"
    ttl: int | None = None
    priority: Callable[[Message], int] | None = None

    def __post_init__(self) -> None:
        if self.order not in ("oldest", "lru", "priority"):
            raise ConfigurationError(
                f"Evict.order must be 'oldest', 'lru' or 'priority', not {self.order!r}")
        if self.order == "priority" and self.priority is None:
            raise ConfigurationError("Evict(order='priority') needs priority=fn(message)")
        if self.ttl is not None and (isinstance(self.ttl, bool) or self.ttl < 1):
            raise ConfigurationError("Evict.ttl must be an int >= 1 (model turns) or None")

    def describe(self) -> str:
        return f"evict({self.order}{f', ttl={self.ttl}' if self.ttl else ''})"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Summarize:
    """Replace the oldest contiguous span of unpinned turns with a summary, written by
    ``model`` in a durable step (``chat:{agent}/summary``): a resumed run reads the
    summary from the journal and does not summarize again.

    Args:
        model: the summarizer (``"provider:name"``); default: the agent's model.
        max_summary_tokens: the summary's length limit (the summarizer's ``max_tokens``;
            a longer answer is cut to it).
        max_span_tokens: the most text one summarization reads (it must fit the
            summarizer's own window); a larger overflow takes several steps.
        instructions: the summarizer's system prompt.
    """

    model: str | None = None
    max_summary_tokens: int = 512
    max_span_tokens: int = 32_000
    instructions: str = (
        "Summarize the conversation excerpt below for the assistant that is having it. "
        "Keep every fact, name, number, decision and open question; drop pleasantries. "
        "Write plain prose, no preamble.")

    def __post_init__(self) -> None:
        for name in ("max_summary_tokens", "max_span_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 16:
                raise ConfigurationError(f"Summarize.{name} must be an int >= 16")

    def describe(self) -> str:
        return f"summarize({self.model or 'the agent model'})"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Page:
    """Move the oldest contiguous span of unpinned turns to warm memory (an agent's
    :class:`~stalwart.Memory`, under its ``memory_key``), in a durable step
    (``memory:{agent}/page``), and put a short stub in its place telling the model the
    content can be fetched with the ``recall`` tool, which the agent is offered.

    Turns go whole (an assistant turn with its tool calls and their results), one
    memory entry each; pinned messages never move. A run resumed after a crash finds the
    entries written and writes nothing twice.

    Args:
        memory: where paged turns go; default: the agent's ``memory``, else
            ``sw.Memory("memory")``.
        max_page_tokens: the most one page step moves (a larger overflow takes several).
        recall_tokens: the most a ``recall`` answer holds (also at most a quarter of
            the window's limit), so recalling cannot overflow the window.
    """

    memory: Memory | None = None
    max_page_tokens: int = 32_000
    recall_tokens: int = 1_000

    def __post_init__(self) -> None:
        if self.memory is not None and not isinstance(self.memory, Memory):
            raise ConfigurationError("Page.memory must be a sw.Memory or None")
        for name in ("max_page_tokens", "recall_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 64:
                raise ConfigurationError(f"Page.{name} must be an int >= 64")

    def describe(self) -> str:
        return f"page(memory {self.memory.name if self.memory else 'of the agent'})"


WindowPolicy: TypeAlias = Reject | Evict | Summarize | Page
_NAMED: dict[str, WindowPolicy] = {"reject": Reject(), "evict": Evict(),
                                   "summarize": Summarize(), "page": Page()}


@final
@dataclass(frozen=True, slots=True)
class WindowLimit:
    """A window's numbers for one model: what a request may hold."""

    capacity: int
    reserve_output: int
    margin: float
    tokenizer: Tokenizer

    @property
    def limit(self) -> int:
        """Tokens a request may count: the capacity less the output reserve, less the
        tokenizer's error margin when its counts are estimates."""
        return math.floor((self.capacity - self.reserve_output) / (1.0 + self.margin))


@final
@dataclass(frozen=True, slots=True)
class ContextWindow:
    """The capacity contract of an agent's history (``Agent(context=...)``).

    Args:
        capacity: tokens the model reads and writes in one call; ``None``: the model's
            entry in :data:`~stalwart.models.MODEL_LIMITS` (or ``limits``).
        reserve_output: tokens kept free for the answer; ``None``: the agent's
            ``options.max_tokens`` if set, else the table's reserve.
        policy: what to do when a request would not fit: :class:`Reject` (the
            default), :class:`Evict`, :class:`Summarize` or :class:`Page`, or the
            name of one (``"evict"``...) for its defaults.
        tokenizer: how to count; default :func:`~stalwart.models.get_tokenizer` of the
            model.
        limits: entries that override the built-in table (``{"openai:my-ft":
            ModelLimits(...)}``).
        margin: headroom for an estimating tokenizer, as a fraction (``0.2``: count the
            limit 20 % lower); ``None``: the tokenizer's ``error_bound`` (0 when exact).

    Raises:
        ConfigurationError: a reserve not smaller than the capacity, a bad policy.
    """

    capacity: int | None = None
    _: KW_ONLY
    reserve_output: int | None = None
    policy: WindowPolicy | str = field(default_factory=Reject)
    tokenizer: Tokenizer | None = None
    limits: Mapping[str, ModelLimits] | None = None
    margin: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.policy, str):
            named = _NAMED.get(self.policy)
            if named is None:
                raise ConfigurationError(
                    f"ContextWindow.policy must be one of {sorted(_NAMED)} or a policy "
                    f"object, not {self.policy!r}")
            object.__setattr__(self, "policy", named)
        elif not isinstance(self.policy, Reject | Evict | Summarize | Page):
            raise ConfigurationError(
                "ContextWindow.policy must be Reject(), Evict(), Summarize() or Page()")
        for name in ("capacity", "reserve_output"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigurationError(f"ContextWindow.{name} must be an int >= 1 or None")
        if (self.capacity is not None and self.reserve_output is not None
                and self.reserve_output >= self.capacity):
            raise ConfigurationError(
                f"ContextWindow: reserve_output ({self.reserve_output}) must be smaller "
                f"than capacity ({self.capacity})")
        if self.margin is not None and not 0.0 <= self.margin < 1.0:
            raise ConfigurationError("ContextWindow.margin must be in [0, 1) or None")

    @property
    def window_policy(self) -> WindowPolicy:
        """The policy object (a name given is resolved at construction)."""
        assert not isinstance(self.policy, str)
        return self.policy

    def resolve(self, model: str, *, max_tokens: int | None = None) -> WindowLimit:
        """The numbers of this window for ``model`` (``"provider:name"``).

        Raises:
            ConfigurationError: no capacity given and none known for the model (the
                message says how to give one), or a reserve not below the capacity.
        """
        known = model_limits(model, self.limits)
        capacity = self.capacity if self.capacity is not None else (
            known.context if known is not None else None)
        if capacity is None:
            raise ConfigurationError(
                f"no context limit is known for model {model!r}: give the window one, "
                f"ContextWindow(capacity=..., reserve_output=...), or add the model to "
                f"its table, ContextWindow(limits={{{model!r}: "
                f"ModelLimits(context=..., reserve_output=...)}})")
        reserve = self.reserve_output
        if reserve is None:
            reserve = max_tokens if max_tokens is not None else (
                known.reserve_output if known is not None else max(1, capacity // 8))
        if reserve >= capacity:
            raise ConfigurationError(
                f"context window for {model!r}: reserve_output ({reserve}) must be smaller "
                f"than capacity ({capacity})")
        tok = self.tokenizer if self.tokenizer is not None else get_tokenizer(model)
        margin = self.margin
        if margin is None:
            margin = 0.0 if tok.exact else float(getattr(tok, "error_bound", 0.25))
        return WindowLimit(capacity, reserve, margin, tok)


# -- measuring -------------------------------------------------------------------------


def message_tokens(tok: Tokenizer, message: Message) -> int:
    """What ``message`` costs in a request: its text, its tool calls, and overhead."""
    n = MESSAGE_OVERHEAD + tok.count(message.content or "")
    for call in message.tool_calls:
        n += tok.count(call.name) + tok.count(call.arguments) + 3
    if message.name:
        n += tok.count(message.name) + 1
    return n


def fixed_tokens(tok: Tokenizer, tools: Sequence[ToolSpec],
                 output_schema: Mapping[str, object] | None) -> int:
    """What a request costs besides its messages: tool definitions, the schema."""
    n = REQUEST_OVERHEAD
    if tools:
        n += tok.count(json.dumps([t.to_openai() for t in tools], sort_keys=True))
    if output_schema is not None:
        n += tok.count(json.dumps(output_schema, sort_keys=True))
    return n


# -- the state ---------------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_]{5,}")


@dataclass(slots=True)
class Entry:
    """One message in the window."""

    index: int
    """Its position in the whole conversation (its id: it never changes)."""
    message: Message
    tokens: int
    turn: int
    """The model turn before which it entered."""
    used: int
    """The last model turn that referred to it (LRU)."""
    unit: int
    """The index of its unit's first message: an assistant turn with tool calls and the
    results of those calls form one unit, which goes (or stays) whole."""
    pinned: bool = False
    stubbed: bool = False
    paged: bool = False
    """A page's stub (what it stood for is in memory already)."""


@final
@dataclass(frozen=True, slots=True)
class Moved:
    """One message a decision moved."""

    index: int
    role: str
    tokens: int
    preview: str
    sha256: str

    def as_json(self) -> dict[str, object]:
        return {"index": self.index, "role": self.role, "tokens": self.tokens,
                "preview": self.preview, "sha256": self.sha256}


@final
@dataclass(frozen=True, slots=True)
class Decision:
    """What a policy did (or must do) before one call, and why.

    ``action``: ``"stub"`` (tool results replaced by a stub), ``"evict"``, ``"expire"``
    (TTL), ``"summarize"`` (the span replaced by a summary), ``"page"`` (moved to warm
    memory) or ``"reject"``. A page names the memory entries it wrote (``keys``) and
    the memory (``memory``: its name and the memory key)."""

    action: str
    reason: str
    moved: tuple[Moved, ...]
    before: int
    after: int
    limit: int
    keys: tuple[str, ...] = ()
    memory: str | None = None

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "action": self.action, "reason": self.reason, "before": self.before,
            "after": self.after, "limit": self.limit,
            "moved": [m.as_json() for m in self.moved]}
        if self.action == "page":
            out["memory"] = self.memory
            out["keys"] = list(self.keys)
        return out


def _moved(e: Entry) -> Moved:
    text = e.message.content or ""
    if e.message.tool_calls:
        text = " ".join(f"{c.name}({c.arguments})" for c in e.message.tool_calls) + text
    digest = hashlib.sha256(e.message.model_dump_json().encode()).hexdigest()
    return Moved(e.index, e.message.role, e.tokens, text[:80], digest)


@final
class WindowState:
    """The messages a window holds, their counts, and the running total.

    ``track_references`` keeps an index of words to messages for ``Evict(order="lru")``
    (each message is indexed once, when it enters)."""

    __slots__ = ("_by_word", "_latest_user", "_task", "entries", "fixed", "next_index",
                 "tokenizer", "total", "turn")

    def __init__(self, tokenizer: Tokenizer, fixed: int, *,
                 track_references: bool = False) -> None:
        self.tokenizer = tokenizer
        self.fixed = fixed
        self.entries: list[Entry] = []
        self.total = fixed
        self.turn = 0
        self.next_index = 0
        self._task: int | None = None
        self._latest_user: Entry | None = None
        self._by_word: dict[str, set[int]] | None = {} if track_references else None

    def add(self, message: Message, *, supporting: bool = False) -> Entry:
        """Take ``message`` into the window (counted once, here). A ``supporting``
        message (a fan-in's result: material for the task, not a turn of the user's) is
        never pinned and never becomes the latest user turn: the policy may move it."""
        index = self.next_index
        self.next_index += 1
        unit = index
        if message.role == "tool":
            for prev in reversed(self.entries):
                if prev.message.role == "assistant":
                    if any(c.id == message.tool_call_id for c in prev.message.tool_calls):
                        unit = prev.unit
                    break
        entry = Entry(index, message, message_tokens(self.tokenizer, message), self.turn,
                      self.turn, unit)
        if message.role == "system":
            entry.pinned = True
        elif message.role == "user" and not supporting:
            if self._task is None:
                self._task = index
            elif self._latest_user is not None and self._latest_user.index != self._task:
                self._latest_user.pinned = False
            entry.pinned = True
            self._latest_user = entry
        if self._by_word is not None:
            self._reference(entry)
        self.entries.append(entry)
        self.total += entry.tokens
        return entry

    def _reference(self, entry: Entry) -> None:
        assert self._by_word is not None
        text = entry.message.content or ""
        words = {w.lower() for w in _WORD.findall(text)}
        if entry.message.role == "assistant":
            text += " ".join(c.arguments for c in entry.message.tool_calls)
            words |= {w.lower() for w in _WORD.findall(text)}
            live = {e.index: e for e in self.entries}
            for w in words:
                for i in self._by_word.get(w, ()):
                    hit = live.get(i)
                    if hit is not None:
                        hit.used = self.turn
        for w in words:
            self._by_word.setdefault(w, set()).add(entry.index)

    def messages(self) -> tuple[Message, ...]:
        """The request's messages, in order."""
        return tuple(e.message for e in self.entries)

    @property
    def pinned_tokens(self) -> int:
        return self.fixed + sum(e.tokens for e in self.entries if e.pinned)

    def remove(self, indices: set[int]) -> list[Entry]:
        """Take the messages ``indices`` out; returns them."""
        gone = [e for e in self.entries if e.index in indices]
        self.entries = [e for e in self.entries if e.index not in indices]
        self.total -= sum(e.tokens for e in gone)
        return gone

    def stub(self, entry: Entry) -> Moved:
        """Replace a tool result's content by a stub; returns what it was."""
        was = _moved(entry)
        message = Message.tool(STUB.format(tokens=entry.tokens),
                               tool_call_id=entry.message.tool_call_id or "",
                               name=entry.message.name)
        tokens = message_tokens(self.tokenizer, message)
        self.total += tokens - entry.tokens
        entry.message, entry.tokens, entry.stubbed = message, tokens, True
        return was

    def replace_span(self, indices: Sequence[int], message: Message) -> Entry:
        """Put ``message`` where the contiguous span ``indices`` was (a summary)."""
        first = min(indices)
        at = next(i for i, e in enumerate(self.entries) if e.index == first)
        self.remove(set(indices))
        entry = Entry(first, message, message_tokens(self.tokenizer, message), self.turn,
                      self.turn, first)
        self.entries.insert(at, entry)
        self.total += entry.tokens
        return entry

    def units(self) -> list[list[Entry]]:
        """The removable units, oldest first: groups with no pinned message."""
        groups: dict[int, list[Entry]] = {}
        for e in self.entries:
            groups.setdefault(e.unit, []).append(e)
        return [g for g in groups.values() if not any(e.pinned for e in g)]


# -- deciding ----------------------------------------------------------------------------


def overflow(state: WindowState, limit: WindowLimit, *, model: str) -> ContextOverflowError:
    """The error for a request that cannot be made to fit, with its numbers."""
    return ContextOverflowError(
        f"the request to {model} needs {state.total} tokens; the window allows "
        f"{limit.limit} (capacity {limit.capacity} - reserve_output "
        f"{limit.reserve_output}{f', margin {limit.margin:.0%}' if limit.margin else ''})"
        f"; pinned messages alone need {state.pinned_tokens}",
        needed=state.total, limit=limit.limit, capacity=limit.capacity,
        reserve_output=limit.reserve_output, pinned=state.pinned_tokens)


def _rank(policy: Evict, entries: list[Entry]) -> tuple[int, int]:
    first = entries[0]
    if policy.order == "lru":
        return (max(e.used for e in entries), first.index)
    if policy.order == "priority":
        assert policy.priority is not None
        return (min(policy.priority(e.message) for e in entries), first.index)
    return (first.index, 0)


def evict(state: WindowState, policy: Evict, limit: WindowLimit) -> list[Decision]:
    """Carry out ``policy`` on ``state`` until it fits ``limit`` (or nothing is left to
    evict: the caller then raises :func:`overflow`); the decisions, in order."""
    out: list[Decision] = []
    if policy.ttl is not None:
        old = [u for u in state.units() if state.turn - u[0].turn > policy.ttl]
        if old:
            before = state.total
            gone = state.remove({e.index for u in old for e in u})
            out.append(Decision("expire", f"older than ttl={policy.ttl} model turns",
                                tuple(_moved(e) for e in gone), before, state.total,
                                limit.limit))
    if state.total <= limit.limit:
        return out
    reason = f"over the limit: {state.total} > {limit.limit} tokens"
    tools = [[e] for u in state.units() for e in u
             if e.message.role == "tool" and not e.stubbed]
    before = state.total
    stubbed: list[Moved] = []
    for (e,) in sorted(tools, key=lambda g: _rank(policy, g)):
        if state.total <= limit.limit:
            break
        if e.tokens > message_tokens(state.tokenizer, Message.tool(
                STUB.format(tokens=e.tokens), tool_call_id="x")):
            stubbed.append(state.stub(e))
    if stubbed:
        out.append(Decision("stub", f"{reason}; tool results go first", tuple(stubbed),
                            before, state.total, limit.limit))
    if state.total <= limit.limit:
        return out
    before = state.total
    dropped: list[Moved] = []
    for unit in sorted(state.units(), key=lambda g: _rank(policy, g)):
        if state.total <= limit.limit:
            break
        dropped.extend(_moved(e) for e in state.remove({e.index for e in unit}))
    if dropped:
        out.append(Decision("evict", f"over the limit: {before} > {limit.limit} tokens "
                            f"({policy.describe()})", tuple(dropped), before, state.total,
                            limit.limit))
    return out


def oldest_span(state: WindowState, *, need: int, cap: int) -> list[Entry]:
    """The oldest contiguous run of removable units whose tokens reach ``need`` (taking
    at most ``cap`` tokens), else the largest such run: what a summary or a page
    replaces. A span never straddles a pinned message."""
    units = {u[0].unit: u for u in state.units()}
    runs: list[list[list[Entry]]] = [[]]
    for e in state.entries:
        unit = units.get(e.unit)
        if unit is None:
            if runs[-1]:
                runs.append([])
        elif e is unit[0]:
            runs[-1].append(unit)
    best: list[Entry] = []
    for run in runs:
        span: list[Entry] = []
        got = 0
        for unit in run:
            size = sum(x.tokens for x in unit)
            if span and got + size > cap:
                break
            span.extend(unit)
            got += size
            if got >= need:
                return span
        if got > sum(x.tokens for x in best):
            best = span
    return best


def moved(entries: Sequence[Entry]) -> tuple[Moved, ...]:
    """What ``entries`` were, for a decision."""
    return tuple(_moved(e) for e in entries)
