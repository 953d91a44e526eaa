"""An agent run's conversation behind its context window: the window's decisions,
carried out and journaled.

Before each model turn the agent hands its conversation to :meth:`History.request`.
Without a window that is the whole conversation, as before. With one, the new messages
are counted (only those), and if the request would not fit, the window's policy acts;
each action is journaled as a ``context_window`` event on the step of the call it
prepares (``runs trace`` and ``runs show`` print it under that call) before the call is
made. A summary is itself a durable model step, so a resumed run reads it back instead
of summarizing again. A page (:class:`Page`) writes the span's turns to the agent's
warm memory in a durable step (``memory:{agent}/page``; the store's idempotent board
operations, so a step re-run after a crash writes nothing twice) and puts a stub in the
window. The decisions are a pure function of the conversation, which a
replay reproduces from the journal; a replay that decides otherwise than the journal
says raises :class:`~stalwart.errors.NonDeterminismError`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from ..engine._execution import Execution
from ..engine._llm import model_turn
from ..engine._policy import Policy
from ..engine._privilege import STALWART
from ..engine._scope import current_step
from ..engine._steps import run_step
from ..errors import NonDeterminismError
from ..models import (
    Message,
    Model,
    ModelOptions,
    ModelRequest,
    Origin,
    ToolSpec,
    count_tokens,
)
from ..store._base import EventKind, NewEvent
from ._search import cut, terms
from ._warm import Memory
from ._window import (
    ContextWindow,
    Decision,
    Entry,
    Evict,
    Page,
    Reject,
    Summarize,
    WindowLimit,
    WindowState,
    evict,
    fixed_tokens,
    message_tokens,
    moved,
    oldest_span,
    overflow,
)

__all__ = ["History", "model_key"]

SUMMARY_HEADER = "[Summary of earlier conversation, messages {first}-{last}]\n"
PAGE_STUB = ("[Messages {first}-{last}{about} were paged out of the "
             "context window to memory. They are not lost: call the recall tool with a "
             "few keywords to fetch what you need.]")
STUB_TOKENS = 96
"""The most a page's stub may cost (its topic words are dropped when over)."""


def model_key(ex: Execution, model: str | Model) -> str:
    """``provider:name`` of the model an agent names (what the limits table is keyed by)."""
    m = ex.engine.model(model)
    return f"{m.provider}:{m.name}"


class History:
    """The conversation of one agent run and, with a window, what its requests hold.

    Args:
        agent: the agent's name (the journal's ``name`` of each window event).
        window, limit: the window and its numbers for the agent's model (``None``: no
            window; every request carries the whole conversation).
        tools, output_schema: what each request carries besides messages.
        model, policy, pool: the agent's model and call policy (a summary's defaults).
        trusts: the agent's trust in an origin (``None``: it checks none). A summary
            takes the origin of the first message of its span the agent does not trust,
            so summarizing never launders untrusted content into trusted text.
        memory, memory_key: where a :class:`Page` policy writes (required with one).
        supporting: the positions in the conversation of supporting messages (a
            fan-in's results): never pinned, so the policy acts on them.
    """

    __slots__ = (
        "_counted",
        "_limit",
        "_memory",
        "_memory_key",
        "_policy",
        "_pool",
        "_supporting",
        "_trusts",
        "_window",
        "agent",
        "model",
        "state",
        "tokens",
    )

    def __init__(self, *, agent: str, window: ContextWindow | None,
                 limit: WindowLimit | None, tools: Sequence[ToolSpec],
                 output_schema: dict[str, Any] | None, model: str | Model, policy: Policy,
                 pool: str | None, trusts: Callable[[Origin], bool] | None = None,
                 memory: Memory | None = None, memory_key: str | None = None,
                 supporting: frozenset[int] = frozenset()) -> None:
        self.agent = agent
        self.model = model
        self._window = window
        self._limit = limit
        self._policy = policy
        self._pool = pool
        self._counted = 0
        self._trusts = trusts
        self._supporting = supporting
        self.tokens = 0
        """The tokens of the latest request, counted incrementally (the window's total;
        without a window, the running count of the messages' text): the estimate a model
        turn gives the rate limiter, with no recount of the history."""
        self._memory = memory
        self._memory_key = memory_key
        self.state: WindowState | None = None
        if window is not None and limit is not None:
            lru = isinstance(window.window_policy, Evict) and window.window_policy.order == "lru"
            self.state = WindowState(limit.tokenizer,
                                     fixed_tokens(limit.tokenizer, tools, output_schema),
                                     track_references=lru)

    async def request(self, ex: Execution, transcript: Sequence[Message],
                      ) -> tuple[Message, ...]:
        """The messages of the next request: ``transcript`` (the whole conversation so
        far) as the window lets it through, after its policy acted (journaled)."""
        state, limit, window = self.state, self._limit, self._window
        if state is None or limit is None or window is None:
            for message in transcript[self._counted:]:
                self.tokens += count_tokens(message.content or "")
            self._counted = len(transcript)
            return tuple(transcript)
        for i in range(self._counted, len(transcript)):
            state.add(transcript[i], supporting=i in self._supporting)
        self._counted = len(transcript)
        state.turn += 1
        policy = window.window_policy
        decisions: Sequence[tuple[str | None, Decision]] = []
        if isinstance(policy, Evict):
            step = ex.next_step_id()
            decisions = [(step, d) for d in evict(state, policy, limit)]
        elif state.total > limit.limit and isinstance(policy, Summarize):
            decisions = list(await self._summarize(ex, state, limit, policy))
        elif state.total > limit.limit and isinstance(policy, Page):
            decisions = await self._page(ex, state, limit, policy)
        step = ex.next_step_id()
        for i, (at, d) in enumerate(decisions):
            await self._journal(ex, at or step, f"window:{i}", d)
        if state.total > limit.limit:
            err = overflow(state, limit, model=model_key(ex, self.model))
            await self._journal(ex, step, "window:reject", Decision(
                "reject", str(err) if isinstance(policy, Reject) else
                f"{policy.describe()} could not make room: {err}", (), state.total,
                state.total, limit.limit))
            raise err.located(run_id=ex.run_id, step_id=step)
        self.tokens = state.total
        return state.messages()

    async def _journal(self, ex: Execution, step_id: str, key: str, d: Decision) -> None:
        body = {"key": key, **d.as_json()}
        recorded = ex.recorded_note(step_id, key)
        if recorded is not None and json.loads(recorded) != body:
            raise NonDeterminismError(
                f"run {ex.run_id}: the context window of agent {self.agent!r} decided "
                f"otherwise at step {step_id} than the journal records ({d.action} now; "
                f"{json.loads(recorded).get('action')} recorded): the window, the "
                "tokenizer or the conversation changed under a recorded run",
                run_id=ex.run_id, step_id=step_id, recorded=f"context_window:{key}",
                current=f"context_window:{key}")
        await ex.note(NewEvent(EventKind.CONTEXT_WINDOW, step_id, self.agent,
                               json.dumps(body)), key=key)

    async def _summarize(self, ex: Execution, state: WindowState, limit: WindowLimit,
                         policy: Summarize) -> list[tuple[str, Decision]]:
        """Replace the oldest spans by summaries until the request fits (each one a
        durable model step, bounded by ``policy``'s sizes)."""
        out: list[tuple[str, Decision]] = []
        header = message_tokens(state.tokenizer, Message.user(
            SUMMARY_HEADER.format(first=0, last=0)))
        while state.total > limit.limit:
            need = state.total - limit.limit + policy.max_summary_tokens + header
            span = oldest_span(state, need=need, cap=policy.max_span_tokens)
            if sum(e.tokens for e in span) <= policy.max_summary_tokens + header:
                break  # a summary would not save anything: the call is refused
            before = state.total
            step = ex.next_step_id()
            summary = await self._summary_of(ex, span, policy, state)
            first, last = span[0].index, span[-1].index
            state.replace_span([e.index for e in span], Message.user(
                SUMMARY_HEADER.format(first=first, last=last) + summary,
                origin=self._origin_of(span)))
            out.append((step, Decision(
                "summarize", f"over the limit: {before} > {limit.limit} tokens; messages "
                f"{first}-{last} summarized by {policy.model or model_key(ex, self.model)}",
                moved(span), before, state.total, limit.limit)))
        return out

    async def _page(self, ex: Execution, state: WindowState, limit: WindowLimit,
                    policy: Page) -> list[tuple[str | None, Decision]]:
        """Move the oldest spans to warm memory (each one durable step) and put a stub in
        each one's place, until the request fits. The decisions are journaled on the
        model call they prepare (``runs trace`` shows them under it)."""
        memory, key = self._memory, self._memory_key
        assert memory is not None, "Page needs the agent's memory"
        assert key is not None
        out: list[tuple[str | None, Decision]] = []
        while state.total > limit.limit:
            need = state.total - limit.limit + STUB_TOKENS
            span = oldest_span(state, need=need, cap=policy.max_page_tokens)
            stub = Message.user(page_stub(span, state), origin=STALWART)
            if sum(e.tokens for e in span) <= message_tokens(state.tokenizer, stub):
                break  # a stub would not save anything: the call is refused
            before = state.total
            chunks = _chunks(span)
            keys = await self._page_out(ex, memory, key, chunks) if chunks else []
            first, last = span[0].index, span[-1].index
            state.replace_span([e.index for e in span], stub).paged = True
            out.append((None, Decision(
                "page", f"over the limit: {before} > {limit.limit} tokens; messages "
                f"{first}-{last} moved to memory {memory.name!r} (key {key!r})",
                moved(span), before, state.total, limit.limit, keys=tuple(keys),
                memory=f"{memory.name}:{key}")))
        return out

    async def _page_out(self, ex: Execution, memory: Memory, key: str,
                        chunks: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
        """Write the chunks to warm memory in one journaled step; their entry keys."""
        board = memory.board_store(ex.engine.store)
        clock, agent = ex.engine.clock, self.agent

        async def paged(n: int) -> list[str]:
            step = current_step()
            return await memory.write(
                board, key=key, op_key=step.idempotency_key, run_id=step.run_id,
                step_id=step.step_id, now=clock.now(), chunks=chunks,
                source={"kind": "page", "agent": agent, "run_id": step.run_id})

        return list(await run_step(ex, paged, (len(chunks),), {},
                                   name=f"memory:{agent}/page"))

    def _origin_of(self, span: Sequence[Entry]) -> Origin:
        """A summary's origin: the first origin in ``span`` the agent does not trust,
        else the model's (it wrote the summary)."""
        for e in span:
            m = e.message
            if m.role == "assistant" and m.origin is None:
                continue  # the model's own turn: not a source (see engine._privilege)
            trusted = (m.provenance.kind in ("system", "developer", "user", "model")
                       if self._trusts is None else self._trusts(m.provenance))
            if not trusted:
                return m.provenance
        return Origin.model("summary")

    async def _summary_of(self, ex: Execution, span: Sequence[Entry], policy: Summarize,
                          state: WindowState) -> str:
        lines = []
        for e in span:
            m = e.message
            calls = "".join(f" [calls {c.name}({c.arguments})]" for c in m.tool_calls)
            lines.append(f"{m.role}{f' ({m.name})' if m.name else ''}: "
                         f"{m.content or ''}{calls}")
        request = ModelRequest(
            messages=(Message.system(policy.instructions), Message.user("\n".join(lines))),
            options=ModelOptions(max_tokens=policy.max_summary_tokens))
        response = await model_turn(
            ex, name=f"{self.agent}/summary", model=policy.model or self.model,
            request=request, policy=self._policy, pool=self._pool)
        return cut(response.content or "", policy.max_summary_tokens, state.tokenizer.count)


def page_stub(span: Sequence[Entry], state: WindowState) -> str:
    """The stub a paged span leaves: which messages, their most frequent words (a hint
    for recall), and how to get them back (at most ``STUB_TOKENS``)."""
    counts: dict[str, int] = {}
    for e in span:
        if not e.paged:
            for t in terms(e.message.content or ""):
                if len(t) >= 5 and not t.isdigit():
                    counts[t] = counts.get(t, 0) + 1
    words = sorted(counts, key=lambda w: -counts[w])[:6]
    fill = {"first": span[0].index if span else 0, "last": span[-1].index if span else 0}
    text = PAGE_STUB.format(about=f" (about: {', '.join(words)})" if words else "", **fill)
    if state.tokenizer.count(text) > STUB_TOKENS - 8:
        text = PAGE_STUB.format(about="", **fill)
    return text


def _render(e: Entry) -> str:
    m = e.message
    calls = "".join(f" [called {c.name}({c.arguments})]" for c in m.tool_calls)
    who = f"{m.role} {m.name}" if m.name else m.role
    return f"{who}: {m.content or ''}{calls}"


def _chunks(span: Sequence[Entry]) -> list[tuple[str, str, dict[str, Any]]]:
    """The memory entries a span becomes: one per unit (a turn with its tool calls and
    results), a page's stub left out (what it stood for is in memory already)."""
    units: dict[int, list[Entry]] = {}
    for e in span:
        if not e.paged:
            units.setdefault(e.unit, []).append(e)
    return [(str(u[0].index), "\n".join(_render(e) for e in u),
             {"messages": [u[0].index, u[-1].index]}) for u in units.values()]
