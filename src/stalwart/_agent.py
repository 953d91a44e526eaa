"""Agents: a bounded, journaled tool-calling loop (ReAct).

``await agent.run(ctx, input)`` alternates model turns and tool calls until the model
answers without asking for tools. Every model turn and every tool call is a journaled
step behind the policy stack, so a resumed run replays the conversation up to where it
stopped without calling anything again.

The loop is bounded: ``max_iterations`` model turns (then ``fallback_output`` or
:class:`MaxIterationsError`); the same tool with the same arguments ``loop_limit`` times
raises :class:`ToolLoopError`; malformed tool calls from the model (bad JSON, wrong
types, unknown tools) go back to the model as structured tool errors, at most
``max_repairs`` of them; a final answer that fails ``output_type`` (or the agent's
``check``) is re-asked at most ``max_reasks`` times, then :class:`OutputValidationError`.
Such an answer is a semantic failure of the model that gave it: it counts against that
model's circuit breaker and is journaled (``check_failed``) for the statistics.

An agent's :class:`~stalwart.Budget` holds one ``run`` of it, on top of the run's.

With a :class:`~stalwart.ContextWindow` (``context=``), each request is measured before
it is sent and one that would not fit is handled by the window's policy, explicitly and
journaled (see :mod:`stalwart.memory`); without one, every request carries the whole
conversation.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, final

from pydantic import TypeAdapter
from typing_extensions import TypeVar

from ._context import Context
from ._serde import error_type_name
from .engine._budget import Budget, agent_budget
from .engine._calls import tool_call
from .engine._execution import Execution
from .engine._health import ToolHealthView, health_note, unavailable_tools
from .engine._interceptor import AgentEndInput, AgentStartInput, CaptureContent
from .engine._llm import model_turn, read_output, system_prompt
from .engine._policy import INHERIT, Policy, _Inherit
from .engine._privilege import (
    DEFAULT_TRUST,
    STALWART,
    Grant,
    Trust,
    Verdict,
    decide,
    input_messages,
    input_text,
    origins_payload,
    untrusted_sources,
)
from .engine._scope import outcome_problem
from .engine._tools import Tool, ToolArgumentsError
from .errors import (
    BudgetExceededError,
    ConfigurationError,
    MaxIterationsError,
    OutputValidationError,
    RepairBudgetExceededError,
    StoreError,
    ToolLoopError,
)
from .memory._fanin import Results, result_messages
from .memory._history import History, model_key
from .memory._warm import Memory, check_key, recall_tool
from .memory._window import ContextWindow, Page, fixed_tokens, message_tokens
from .models import (
    MAX_ARGUMENT_BYTES,
    MAX_ARGUMENT_DEPTH,
    Message,
    Model,
    ModelOptions,
    ModelRequest,
    ModelResponse,
    Origin,
    ToolCallRequest,
    ToolSpec,
    Usage,
    get_tokenizer,
    parse_tool_arguments,
)
from .store._base import EventKind, NewEvent

__all__ = ["Agent", "AgentResult", "HandoffOffer"]

OutT = TypeVar("OutT", default=str)
_MISSING: Any = object()


@final
@dataclass(frozen=True, slots=True)
class AgentResult(Generic[OutT]):
    """What an agent run produced, with its accounting.

    Attributes:
        output: the validated answer (``str`` without an ``output_type``).
        messages: the whole conversation.
        usage: tokens summed over every model turn of this run of the agent.
        iterations: model turns taken.
        tool_calls: tool calls executed (repairs not counted).
        models: which model answered each turn (fallbacks show here).
        fallback_used: True when ``fallback_output`` was returned.
        handoff: ``(tool name, arguments)`` when the model handed off instead of
            answering (a :class:`HandoffOffer` it accepted); ``output`` is then ``None``.
        refused: tool calls refused by least privilege (not executed; each audited
            as a ``tool_call_refused`` event).
    """

    output: OutT
    messages: tuple[Message, ...]
    usage: Usage
    iterations: int
    tool_calls: int
    models: tuple[str, ...] = field(default=())
    fallback_used: bool = False
    handoff: tuple[str, dict[str, Any]] | None = None
    refused: int = 0


@final
@dataclass(frozen=True, slots=True)
class HandoffOffer:
    """A handoff an agent's loop offers its model as a tool (how the handoff pattern,
    :mod:`stalwart.patterns._handoff`, talks to the loop).

    When the model calls ``spec.name``, the loop asks ``check(arguments)``: an empty list
    accepts the handoff and ends the loop (:attr:`AgentResult.handoff`); otherwise the
    problems go back to the model as a ``handoff_refused`` tool error it can correct, at
    most ``max_reasks`` times, then ``on_exhausted(problems)`` is raised.
    """

    spec: ToolSpec
    check: Callable[[dict[str, Any]], list[str]]
    max_reasks: int
    on_exhausted: Callable[[list[str]], BaseException]


@dataclass(slots=True)
class _Turns:
    """The conversation of one agent run, and its loop's counters."""

    messages: list[Message]
    ctx: Context | None = None
    """The workflow's context (for an approval)."""
    answered_by: list[str] = field(default_factory=list)
    seen: Counter[str] = field(default_factory=Counter)
    """Tool calls by name and arguments (the same call too often is a loop)."""
    refused: Counter[str] = field(default_factory=Counter)
    """Handoffs refused, by tool name."""
    repairs: int = 0
    reasks: int = 0
    refused_calls: int = 0
    """Tool calls least privilege refused."""
    journaled: int = 0
    """How many messages have had their origins journaled (``context_origins``)."""
    untrusted: tuple[str, ...] = ()
    """The untrusted origins of everything that entered the context up to the latest
    model turn (what the window evicted or summarized since included)."""
    unavailable: dict[str, str] = field(default_factory=dict)
    """Tools unavailable this turn (``health=``), with why."""
    tools: dict[str, Tool[Any, Any]] = field(default_factory=dict)
    """The tools of this run: the agent's, and its ``recall`` tool with memory."""


@dataclass(slots=True)
class _Spent:
    """What one agent run has used so far: its result's figures, and what its span and
    metrics report when it fails part-way (a budget stop after paid turns)."""

    input_tokens: int = 0
    output_tokens: int = 0
    iterations: int = 0
    tool_calls: int = 0

    def usage(self) -> Usage:
        return Usage(input_tokens=self.input_tokens, output_tokens=self.output_tokens)


@final
class Agent(Generic[OutT]):
    """An LLM agent: a model, instructions, tools, and a bounded control loop.

    Args:
        name: identifies the agent in the journal, metrics and traces.
        model: ``"provider:name"`` (``"sim:..."`` is the offline simulator) or a Model.
        instructions: the system prompt.
        tools: tools the model may call.
        output_type: validate the final answer as this type (JSON); ``None``: text.
        policy: resilience policies for this agent's calls (over the runtime's).
        pool: the bulkhead pool its model calls share (default: the agent's name).
        options: sampling options for every turn.
        max_iterations, loop_limit, max_repairs, max_reasks: the loop's bounds.
        fallback_output: returned instead of raising when max_iterations is reached.
        budget: limits on one run of this agent (tokens, cost, calls, run age).
        check: an outcome check on the validated output (``False``, a reason string or
            an exception fails it): a failing answer is re-asked like an invalid one,
            and counts as a failure of the model that gave it.
        capture_content: record this agent's prompts, completions and tool
            arguments/results on its trace spans (``True``), only their SHA-256 digests
            (``"hash"``) or not at all (``False``); default: the runtime's ``Tracing``.
        max_argument_bytes, max_argument_depth: caps on the arguments of a tool call
            the model sends (size of the JSON text, default 1 MiB; nesting depth,
            default 64), unless the tool sets its own. A call over them goes back to
            the model as ``invalid_json``, like any malformed call.
        grant: the allowlist of tool calls its model may make, by the tools' effects
            and scopes (:class:`~stalwart.Grant`); tools outside it are not shown to
            the model, and a call to one is refused (a ``permission_denied`` tool
            error, a ``tool_call_refused`` audit event), never executed. ``None``
            (default): every tool in ``tools``.
        trust: which origins of its context the agent trusts (:class:`~stalwart.Trust`;
            default: the system prompt, the developer, the user and the model). While
            the context its model saw holds content from any other origin (a tool's
            output, a retrieved document, another agent...), a ``privileged`` tool call
            is refused, or held for a human's approval, as the policy says; ``None``
            turns the check off. Every message's origin is journaled
            (``context_origins``) and shown by ``runs trace``.
        health: where the agent learns which of its tools are unavailable (a
            :class:`~stalwart.ToolRegistry`): before each model turn it asks (a
            journaled step, ``tools:<agent>``); unavailable tools leave the model's tool
            list, the model is told which and why (and when they are back), and a call
            to one anyway gets a ``tool_unavailable`` error, not executed.
        context: a :class:`~stalwart.ContextWindow` over the agent's history: a
            capacity (default: the model's, from the limits table) and the policy that
            acts, journaled, when a request would not fit. ``None``: no window.
        memory: the agent's warm memory (:class:`~stalwart.Memory`): an agent with one
            (or with a ``Page`` window, whose default is ``sw.Memory("memory")``) is
            offered the ``recall`` tool, a search of its entries (read only, answered
            within the page policy's ``recall_tokens``, default 1,000 tokens).
        memory_key: whose entries in that memory are this agent's (default: its name):
            runs of agents with one key share them; other keys never see them.

    Raises:
        ConfigurationError: bad bounds or tools; a context window for a model with no
            known limit and no ``capacity``; a capacity the system prompt alone exceeds.
    """

    def __init__(
        self,
        name: str,
        model: str | Model,
        *,
        instructions: str = "",
        tools: Sequence[Tool[Any, Any]] = (),
        output_type: type[OutT] | None = None,
        policy: Policy | None = None,
        pool: str | None = None,
        options: ModelOptions | None = None,
        max_iterations: int = 10,
        loop_limit: int = 3,
        max_repairs: int = 3,
        max_reasks: int = 2,
        fallback_output: Any = _MISSING,
        budget: Budget | None = None,
        check: Callable[[OutT], object] | None = None,
        capture_content: CaptureContent | _Inherit = INHERIT,
        max_argument_bytes: int = MAX_ARGUMENT_BYTES,
        max_argument_depth: int = MAX_ARGUMENT_DEPTH,
        grant: Grant | None = None,
        trust: Trust | None = DEFAULT_TRUST,
        health: ToolHealthView | None = None,
        context: ContextWindow | None = None,
        memory: Memory | None = None,
        memory_key: str | None = None,
    ) -> None:
        if not name:
            raise ConfigurationError("an agent needs a name")
        _check_bounds(name, tools, max_iterations=max_iterations, loop_limit=loop_limit,
                      max_repairs=max_repairs, max_reasks=max_reasks,
                      max_argument_bytes=max_argument_bytes,
                      max_argument_depth=max_argument_depth)
        self.name = name
        self.model = model
        self.instructions = instructions
        self.tools = {t.name: t for t in tools}
        self.grant, self.trust = _checked_privilege(name, grant, trust)
        self.health = _checked_health(name, health)
        self.output_type = output_type
        self.policy = policy
        self.pool = pool or name
        self.options = options or ModelOptions()
        self.max_iterations = max_iterations
        self.loop_limit = loop_limit
        self.max_repairs = max_repairs
        self.max_reasks = max_reasks
        self.max_argument_bytes = max_argument_bytes
        self.max_argument_depth = max_argument_depth
        self.fallback_output = fallback_output
        self.budget = budget
        self.check = check
        self.capture_content = _checked_capture(name, capture_content)
        self._adapter: TypeAdapter[Any] | None = (
            TypeAdapter(output_type) if output_type is not None else None)
        self.memory_key = check_key(name if memory_key is None else memory_key)
        self.memory = _checked_memory(name, memory, context, self.tools)
        self.context: ContextWindow | None = None
        self.context = None if context is None else self._checked_window(context)

    def _checked_window(self, window: object) -> ContextWindow:
        """``window``, unless its model has no known limit, or the pinned system prompt
        (with the tool definitions) does not fit it."""
        if not isinstance(window, ContextWindow):
            raise ConfigurationError(f"agent {self.name!r}: context must be a ContextWindow")
        key = (self.model if isinstance(self.model, str)
               else f"{self.model.provider}:{self.model.name}")
        limit = window.resolve(key, max_tokens=self.options.max_tokens)
        tok = limit.tokenizer
        system = self._system_prompt()
        pinned = fixed_tokens(tok, [t.spec for t in (*self.tools.values(),
                                                     *self._memory_tools(None, limit.limit))],
                              self._adapter.json_schema() if self._adapter else None)
        if system:
            pinned += message_tokens(tok, Message.system(system))
        if pinned > limit.limit:
            raise ConfigurationError(
                f"agent {self.name!r}: the context window allows {limit.limit} tokens "
                f"(capacity {limit.capacity} - reserve_output {limit.reserve_output}"
                f"{f', margin {limit.margin:.0%}' if limit.margin else ''}) but the "
                f"system prompt and tool definitions alone take {pinned}, and they are "
                "pinned: give a larger capacity or shorter instructions")
        return window

    def __repr__(self) -> str:
        return f"<Agent {self.name} model={self.model!r}>"

    def _memory_tools(self, store: object, limit: int | None) -> list[Tool[Any, Any]]:
        """The ``recall`` tool (none without memory), bound to ``store``."""
        if self.memory is None:
            return []
        page = self.context.window_policy if self.context is not None else None
        bound = page.recall_tokens if isinstance(page, Page) else Page().recall_tokens
        if limit is not None:
            bound = min(bound, max(16, limit // 4))
        key = (self.model if isinstance(self.model, str)
               else f"{self.model.provider}:{self.model.name}")
        count = (self.context.resolve(key, max_tokens=self.options.max_tokens).tokenizer.count
                 if self.context is not None else get_tokenizer(key).count)
        return [recall_tool(self.memory, self.memory_key, store=store, max_tokens=bound,
                            count=count)]

    async def remember(self, ctx: Context, text: str) -> str:
        """Write ``text`` to this agent's memory under its ``memory_key`` (one journaled
        step); its ``recall`` tool finds it in this run and later ones. Returns the
        entry's key.

        Raises:
            ConfigurationError: the agent has no memory (give it ``memory=``).
        """
        if self.memory is None:
            raise ConfigurationError(f"agent {self.name!r} has no memory: give it "
                                     "memory=sw.Memory(...) or a Page window")
        return await self.memory.remember(ctx, text, key=self.memory_key)

    def _system_prompt(self) -> str:
        return system_prompt(self.instructions, self._adapter)

    async def run(self, ctx: Context, input: Any, *, policy: Policy | None = None,
                  budget: Budget | None = None, results: Results = ()) -> OutT:
        """Run the loop and return the validated output (see :meth:`run_result`)."""
        return (await self.run_result(ctx, input, policy=policy, budget=budget,
                                      results=results)).output

    def _verdict(self, response: ModelResponse) -> tuple[Any, str | None]:
        """A final answer's output, and what is wrong with it (``None``: nothing)."""
        if response.tool_calls:
            return None, None
        output, problem = read_output(
            self._adapter, str(getattr(self.output_type, "__name__", self.output_type)),
            response.content or "")
        if problem is not None:
            return None, problem
        if self.check is not None:
            problem = outcome_problem(self.check, output)
            if problem is not None:
                return output, f"the answer failed its check: {problem}"
        return output, None

    async def run_result(self, ctx: Context, input: Any, *,
                         policy: Policy | None = None,
                         handoffs: Sequence[HandoffOffer] = (),
                         budget: Budget | None = None,
                         results: Results = ()) -> AgentResult[OutT]:
        """Run the loop and return the output with the conversation and accounting.

        ``results`` (a fan-in: other agents' results, by label or in order) follow the
        task as separate, unpinned messages, so this agent's context window acts on them
        before the call (see :func:`~stalwart.fan_in`); the task stays pinned.

        ``budget`` holds this run of the agent besides the agent's own ``budget`` (both
        apply, as do the run's): a sub-agent's share of a
        :meth:`~stalwart.Budget.split`. A call past it fails with
        :class:`~stalwart.errors.BudgetExceededError` naming the agent.

        ``handoffs`` are offered to the model beside the agent's tools; one it calls and
        that accepts its arguments ends the loop with :attr:`AgentResult.handoff` set
        (see :class:`HandoffOffer`; the handoff pattern uses this)."""
        offers = {o.spec.name: o for o in handoffs}
        clash = sorted(set(offers) & set(self.tools))
        if clash:
            raise ConfigurationError(f"agent {self.name!r}: handoff tools {clash} have the "
                                     "names of its own tools")
        ex = ctx.execution  # the engine's step API (the context's internal API)
        ic = ex.interceptor
        if not ic.active:
            with agent_budget(self.name, self.budget), agent_budget(self.name, budget):
                return await self._loop(ctx, input, policy, _Spent(), offers, results)
        primary = ex.engine.model(self.model)
        first_step_id = ex.next_step_id()
        handle = ic.agent_started(AgentStartInput(
            ex.run_id, self.name, first_step_id, primary.provider, primary.name,
            live=not ex.replaying,
            capture_content=None if self.capture_content is INHERIT else self.capture_content,
            since=ex.first_seen(first_step_id)))
        spent = _Spent()
        try:
            with agent_budget(self.name, self.budget), agent_budget(self.name, budget):
                result = await self._loop(ctx, input, policy, spent, offers, results)
        except BaseException as exc:
            # What it used before it failed is spent all the same (and on its span).
            ic.agent_ended(AgentEndInput(
                handle, iterations=spent.iterations, tool_calls=spent.tool_calls,
                input_tokens=spent.input_tokens, output_tokens=spent.output_tokens,
                error=exc))
            raise
        ic.agent_ended(AgentEndInput(
            handle, iterations=result.iterations, tool_calls=result.tool_calls,
            input_tokens=result.usage.input_tokens, output_tokens=result.usage.output_tokens))
        return result

    async def _loop(self, ctx: Context, input: Any, policy: Policy | None,
                    spent: _Spent, offers: dict[str, HandoffOffer],
                    results: Results = ()) -> AgentResult[OutT]:
        ex = ctx.execution
        effective = ex.engine.effective_policy(self.policy, policy)
        opening = self._opening(input)
        supporting = result_messages(results)
        turns = _Turns([*opening, *supporting], ctx=ctx)
        offered = [t for t in self.tools.values() if decide(t, grant=self.grant).action
                   == "allow"]
        window_limit = (None if self.context is None else self.context.resolve(
            model_key(ex, self.model), max_tokens=self.options.max_tokens).limit)
        recall = [t for t in self._memory_tools(ex.engine.store, window_limit)
                  if decide(t, grant=self.grant).action == "allow"]
        turns.tools = {**self.tools, **{t.name: t for t in recall}}
        specs = (*(t.spec for t in offered), *(o.spec for o in offers.values()),
                 *(t.spec for t in recall))
        output_schema = self._adapter.json_schema() if self._adapter is not None else None
        history = self._history(ex, specs, output_schema, effective, frozenset(
            range(len(opening), len(opening) + len(supporting))))
        for _turn in range(self.max_iterations):
            if self.health is not None:
                specs = (*await self._healthy_specs(ex, turns, offered, offers),
                         *(t.spec for t in recall))
            request = ModelRequest(messages=await history.request(ex, turns.messages),
                                   tools=specs, options=self.options,
                                   output_schema=output_schema)
            turn_id = ex.next_step_id()
            origins = NewEvent(EventKind.CONTEXT_ORIGINS, turn_id, f"chat:{self.name}",
                               origins_payload(turns.messages, turns.journaled, self.trust))
            response = await model_turn(
                ex, name=self.name, model=self.model, request=request, policy=effective,
                pool=self.pool, check=lambda r: self._verdict(r)[1], also=[origins],
                estimate=history.tokens)
            turns.journaled = len(turns.messages)
            # The whole conversation, not the request: what a window evicted or
            # summarized, the model saw all the same (taint is sticky).
            turns.untrusted = (() if self.trust is None else untrusted_sources(
                turns.messages, self.trust, offered))
            spent.input_tokens += response.usage.input_tokens
            spent.output_tokens += response.usage.output_tokens
            spent.iterations += 1
            turns.answered_by.append(f"{response.provider}:{response.model}")
            turns.messages.append(response.to_message())
            if response.tool_calls:
                handoff = await self._tool_calls(ex, response, turn_id, turns, spent, offers)
                if handoff is not None:
                    return self._result(None, turns, spent, handoff=handoff)
                continue
            output, problem = self._verdict(response)
            if problem is None:
                return self._result(output, turns, spent)
            self._reask(ex, turns, problem)
        if self.fallback_output is not _MISSING:
            return self._result(self.fallback_output, turns, spent, fallback_used=True)
        raise MaxIterationsError(
            f"agent {self.name!r}: no final answer after {self.max_iterations} model turns",
            agent=self.name, run_id=ex.run_id)

    async def _healthy_specs(self, ex: Execution, turns: _Turns,
                             offered: list[Tool[Any, Any]],
                             offers: dict[str, HandoffOffer]) -> tuple[ToolSpec, ...]:
        """This turn's tools without the unavailable ones (journaled); the model is told
        what changed since the last turn."""
        down = await unavailable_tools(ex, self.name, self.health, [t.name for t in offered])
        note = health_note(turns.unavailable, down)
        if note is not None:
            turns.messages.append(Message.user(note, origin=STALWART))
        turns.unavailable = down
        return (*(t.spec for t in offered if t.name not in down),
                *(o.spec for o in offers.values()))

    def _history(self, ex: Execution, specs: Sequence[ToolSpec],
                 output_schema: dict[str, Any] | None, policy: Policy,
                 supporting: frozenset[int] = frozenset()) -> History:
        """The conversation's window for this run (none without ``context``)."""
        window = self.context
        limit = None
        if window is not None:
            limit = window.resolve(model_key(ex, self.model),
                                   max_tokens=self.options.max_tokens)
        return History(agent=self.name, window=window, limit=limit, tools=specs,
                       output_schema=output_schema, model=self.model, policy=policy,
                       pool=self.pool,
                       trusts=None if self.trust is None else self.trust.trusts,
                       memory=self.memory, memory_key=self.memory_key,
                       supporting=supporting)

    def _opening(self, input: Any) -> list[Message]:
        """The conversation's start: the system prompt (if any) and the input, each
        message with its origin."""
        system = self._system_prompt()
        return [*([Message.system(system, origin=Origin.system())] if system else []),
                *input_messages(input)]

    def _result(self, output: Any, turns: _Turns, spent: _Spent, *,
                fallback_used: bool = False,
                handoff: tuple[str, dict[str, Any]] | None = None) -> AgentResult[OutT]:
        return AgentResult(output=output, messages=tuple(turns.messages),
                           usage=spent.usage(), iterations=spent.iterations,
                           tool_calls=spent.tool_calls, models=tuple(turns.answered_by),
                           fallback_used=fallback_used, handoff=handoff,
                           refused=turns.refused_calls)

    def _reask(self, ex: Execution, turns: _Turns, problem: str) -> None:
        """Ask again after an answer that is not valid (at most ``max_reasks`` times)."""
        turns.reasks += 1
        if turns.reasks > self.max_reasks:
            raise OutputValidationError(
                f"agent {self.name!r}: {problem} (after {self.max_reasks} "
                "re-asks)", agent=self.name, run_id=ex.run_id) from None
        again = ("Reply again with JSON only, matching the schema."
                 if self._adapter is not None else "Reply again.")
        turns.messages.append(Message.user(
            f"Your answer was not valid: {problem[:2000]}\n{again}", origin=STALWART))

    async def _tool_calls(self, ex: Execution, response: ModelResponse, turn_id: str,
                          turns: _Turns, spent: _Spent, offers: dict[str, HandoffOffer],
                          ) -> tuple[str, dict[str, Any]] | None:
        """Execute the tool calls a model turn asked for; malformed ones go back to the
        model (at most ``max_repairs`` in the whole run of the agent). Returns the
        handoff the model made, when an offer accepted it (the loop ends there)."""
        for call in response.tool_calls:
            offer = offers.get(call.name)
            if offer is not None:
                args, content = self._handoff(call, offer, turns.refused)
                if args is not None:
                    return call.name, args
                await _journal_repair(ex, turn_id, call, content)
                turns.messages.append(Message.tool(content, tool_call_id=call.id,
                                                   name=call.name, origin=STALWART))
                continue
            tool = turns.tools.get(call.name)
            verdict = None if tool is None else decide(
                tool, grant=self.grant, trust=self.trust, untrusted=turns.untrusted)
            held = tool is not None and verdict is not None and verdict.action == "approve"
            if held and tool is not None and verdict is not None and self.trust is not None:
                verdict = await _held_for_approval(
                    ex, turns.ctx, turn_id, call, tool, verdict,
                    timeout=self.trust.approval_timeout)  # journals the decision
            if tool is not None and verdict is not None and verdict.action == "refuse":
                if not held:
                    await _journal_refusal(ex, turn_id, call, tool, verdict)
                content = self._refuse(ex, call, verdict, turns)
                turns.messages.append(Message.tool(content, tool_call_id=call.id,
                                                   name=call.name, origin=STALWART))
                continue
            if call.name in turns.unavailable:
                turns.messages.append(Message.tool(_tool_error(
                    "tool_unavailable", f"the tool {call.name} is unavailable now "
                    f"({turns.unavailable[call.name]}). The call was not executed."),
                    tool_call_id=call.id, name=call.name, origin=STALWART))
                continue
            content, repaired = await self._run_tool(ex, call, turns.seen, turns.tools)
            if repaired:
                await _journal_repair(ex, turn_id, call, content)
                turns.repairs += 1
                if turns.repairs > self.max_repairs:
                    raise RepairBudgetExceededError(
                        f"agent {self.name!r}: more than {self.max_repairs} "
                        f"malformed tool calls (last: {content})", agent=self.name,
                        run_id=ex.run_id)
            else:
                spent.tool_calls += 1
            origin = STALWART if repaired or tool is None else tool.origin
            turns.messages.append(Message.tool(content, tool_call_id=call.id,
                                               name=call.name, origin=origin))
        return None

    def _refuse(self, ex: Execution, call: ToolCallRequest, verdict: Verdict,
                turns: _Turns) -> str:
        """A refused call: counted (the same refused call ``loop_limit`` times is a
        loop, as for an allowed one) and the tool error the model gets."""
        turns.refused_calls += 1
        signature = f"{call.name}:{call.arguments}"
        turns.seen[signature] += 1
        if turns.seen[signature] >= self.loop_limit:
            raise ToolLoopError(
                f"agent {self.name!r}: tool {call.name!r} was refused {turns.seen[signature]}"
                " times with the same arguments", agent=self.name, run_id=ex.run_id)
        return _tool_error("permission_denied",
                           f"{verdict.message}. The call was not executed.")

    def _handoff(self, call: ToolCallRequest, offer: HandoffOffer,
                 refused: Counter[str]) -> tuple[dict[str, Any] | None, str]:
        """A handoff the model asked for: its arguments if the offer accepts them, else
        the tool error that tells the model why (raising once it was told too often)."""
        parsed, problem = parse_tool_arguments(
            call.arguments, max_bytes=self.max_argument_bytes,
            max_depth=self.max_argument_depth)
        problems = ([f"arguments are not a JSON object: {problem}"] if parsed is None
                    else offer.check(dict(parsed)))
        if not problems:
            return dict(parsed or {}), ""
        refused[call.name] += 1
        if refused[call.name] > offer.max_reasks:
            raise offer.on_exhausted(problems)
        return None, json.dumps({"error": {
            "type": "handoff_refused",
            "message": f"the handoff {call.name} does not satisfy its contract: "
                       f"{'; '.join(problems)}. Fix the arguments and call it again.",
            "problems": problems}})

    async def _run_tool(self, ex: Execution, call: ToolCallRequest, seen: Counter[str],
                        tools: dict[str, Tool[Any, Any]]) -> tuple[str, bool]:
        """Execute one requested tool call; returns (message content, was a repair)."""
        tool = tools.get(call.name)
        if tool is None:
            return _tool_error("unknown_tool", f"there is no tool named {call.name!r}; "
                               f"available: {sorted(tools)}"), True
        parsed, problem = parse_tool_arguments(
            call.arguments,
            max_bytes=_own(tool.max_argument_bytes, self.max_argument_bytes),
            max_depth=_own(tool.max_argument_depth, self.max_argument_depth))
        if parsed is None:
            return _tool_error("invalid_json",
                               f"arguments are not a JSON object: {problem}"), True
        try:
            arguments = tool.validate(dict(parsed))
        except ToolArgumentsError as exc:
            return _tool_error("invalid_arguments", json.dumps(exc.errors)), True
        signature = f"{call.name}:{json.dumps(parsed, sort_keys=True)}"
        seen[signature] += 1
        if seen[signature] >= self.loop_limit:
            raise ToolLoopError(
                f"agent {self.name!r}: tool {call.name!r} was called {seen[signature]} times "
                f"with the same arguments {call.arguments}", agent=self.name,
                run_id=ex.run_id)
        try:
            result = await tool_call(ex, tool, arguments, policy=None, check=None,
                                     tool_call_id=call.id)
        except (StoreError, BudgetExceededError):
            raise
        except Exception as exc:
            return _tool_error("tool_failed", f"{error_type_name(exc)}: {exc}"), False
        return (result if isinstance(result, str) else input_text(result)), False


async def _journal_repair(ex: Execution, turn_id: str, call: ToolCallRequest,
                          content: str) -> None:
    """Journal a malformed tool call sent back to the model (``tool_call_repaired``, on
    the model turn that made it), so ``runs events`` and ``runs trace`` show it; a replay
    finds it journaled already."""
    try:
        error = json.loads(content)["error"]
    except (ValueError, KeyError, TypeError):
        error = {"type": "?", "message": content}
    payload = json.dumps({"call_id": call.id, "tool": call.name, "error": error.get("type"),
                          "message": str(error.get("message", ""))[:2000],
                          "arguments": call.arguments[:2000]})
    await ex.note(NewEvent(EventKind.TOOL_CALL_REPAIRED, turn_id, call.name, payload),
                       key=call.id)


def _checked_memory(agent: str, memory: object, context: object,
                    tools: Mapping[str, object]) -> Memory | None:
    """The agent's memory: ``memory``, else its Page window's, else the default one for
    a Page window; ``None`` without either (no recall tool). A tool of the agent's may
    not take the name of the recall tool it is offered."""
    chosen = _chosen_memory(agent, memory, context)
    if chosen is not None and "recall" in tools:
        raise ConfigurationError(f"agent {agent!r}: a tool is named 'recall', the name "
                                 "of the memory tool the agent is offered")
    return chosen


def _chosen_memory(agent: str, memory: object, context: object) -> Memory | None:
    if memory is not None and not isinstance(memory, Memory):
        raise ConfigurationError(f"agent {agent!r}: memory must be a sw.Memory, not "
                                 f"{type(memory).__name__}")
    page = context.window_policy if isinstance(context, ContextWindow) else None
    if not isinstance(page, Page):
        return memory
    if memory is not None and page.memory is not None and page.memory is not memory:
        raise ConfigurationError(
            f"agent {agent!r}: memory={memory!r} and Page(memory={page.memory!r}) differ; "
            "give one (paged turns go where recall searches)")
    return memory or page.memory or Memory()


def _checked_health(agent: str, health: object) -> ToolHealthView | None:
    if health is not None and not isinstance(health, ToolHealthView):
        raise ConfigurationError(f"agent {agent!r}: health must be a sw.ToolRegistry "
                                 f"(a ToolHealthView), not {type(health).__name__}")
    return health


def _checked_capture(agent: str, capture: CaptureContent | _Inherit,
                     ) -> CaptureContent | _Inherit:
    if capture not in (True, False, "hash", INHERIT):
        raise ConfigurationError(
            f"agent {agent!r}: capture_content must be True, False, 'hash' or INHERIT")
    return capture


def _checked_privilege(agent: str, grant: object,
                       trust: object) -> tuple[Grant | None, Trust | None]:
    if grant is not None and not isinstance(grant, Grant):
        raise ConfigurationError(f"agent {agent!r}: grant must be a sw.Grant, not "
                                 f"{type(grant).__name__}")
    if trust is not None and not isinstance(trust, Trust):
        raise ConfigurationError(f"agent {agent!r}: trust must be a sw.Trust or None, not "
                                 f"{type(trust).__name__}")
    return grant, trust


async def _held_for_approval(ex: Execution, ctx: Context | None, turn_id: str,
                             call: ToolCallRequest, tool: Tool[Any, Any], verdict: Verdict,
                             *, timeout: float | None) -> Verdict:
    """A privileged call with untrusted content in the context, held for a human: asks
    ``ctx.approval`` with the exact arguments (its token binds the decision to them),
    journals the decision with the untrusted sources, and returns what to do: ``allow``
    the very call the model made (the arguments journaled with its turn), or
    ``refuse`` it (denied, or not decided within the trust policy's timeout)."""
    arguments = json.dumps(call.parsed or {}, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(f"{tool.name}\0{arguments}".encode()).hexdigest()
    assert ctx is not None
    trust = verdict.untrusted
    decision = await ctx.approval(f"tool:{tool.name}", {
        "tool": tool.name, "effect": tool.effect, "arguments": json.loads(arguments),
        "digest": digest, "untrusted": list(trust), "reason": verdict.message},
        timeout=timeout, default="deny")
    approved = decision.approved
    await ex.note(NewEvent(EventKind.TOOL_CALL_APPROVAL, turn_id, call.name, json.dumps({
        "call_id": call.id, "tool": call.name, "effect": tool.effect,
        "untrusted": list(trust), "digest": digest, "approved": approved,
        "message": verdict.message[:2000], "arguments": call.arguments[:2000]})),
        key=call.id)
    if approved:
        return Verdict("allow", "approved", verdict.message, verdict.untrusted)
    return Verdict("refuse", "not_approved",
                   f"{verdict.message}; a human did not approve it", verdict.untrusted)


async def _journal_refusal(ex: Execution, turn_id: str, call: ToolCallRequest,
                           tool: Tool[Any, Any], verdict: Verdict) -> None:
    """The audit record of a refused call (``tool_call_refused``, on the model turn that
    asked for it): the tool, its effect and scopes, why, and the arguments as sent."""
    payload = json.dumps({"call_id": call.id, "tool": call.name, "effect": tool.effect,
                          "scopes": sorted(tool.scopes), "reason": verdict.reason,
                          "message": verdict.message[:2000],
                          "untrusted": list(verdict.untrusted),
                          "arguments": call.arguments[:2000]})
    await ex.note(NewEvent(EventKind.TOOL_CALL_REFUSED, turn_id, call.name, payload),
                  key=call.id)


_LOWEST = {"max_iterations": 1, "loop_limit": 2, "max_repairs": 0, "max_reasks": 0,
           "max_argument_bytes": 1, "max_argument_depth": 1}


def _check_bounds(name: str, tools: Sequence[Tool[Any, Any]], **bounds: int) -> None:
    """Refuse a bound of the loop below its lowest value, and tools sharing a name."""
    for label, value in bounds.items():
        low = _LOWEST[label]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigurationError(f"Agent.{label} must be an int >= {low}")
    names = [t.name for t in tools]
    if len(names) != len(set(names)):
        raise ConfigurationError(f"agent {name!r}: duplicate tool names {names}")


def _own(tool_limit: int | _Inherit, agent_limit: int) -> int:
    return agent_limit if isinstance(tool_limit, _Inherit) else tool_limit


def _tool_error(kind: str, message: str) -> str:
    return json.dumps({"error": {"type": kind, "message": message}})
