"""Fan-in with backpressure: ``await sw.fan_in(ctx, aggregator, task, results)``.

Sub-agents' results gathered into one aggregator agent can together overflow its context
window. Here they enter the aggregator's conversation as separate, unpinned messages
after the (pinned) task, so the aggregator's window policy acts on them *before* the
call, journaled as every window decision is: ``Evict`` drops the oldest results (the
journal names each), ``Summarize`` replaces them by a durable summary, ``Reject`` raises
:class:`~stalwart.errors.ContextOverflowError` with the numbers. The provider never sees
a request over the aggregator's limit, so never answers it with a 400.

An aggregator without a context window is refused: it would send every result, whatever
their size (give it ``context=sw.ContextWindow(...)``; ``agent.run(ctx, task,
results=...)`` is the same call without this check).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .._agent import Agent, AgentResult
from ..engine._budget import Budget
from ..engine._policy import Policy
from ..errors import ConfigurationError
from ._members import Reply

if TYPE_CHECKING:
    from .._context import Context

__all__ = ["fan_in"]

T = TypeVar("T")


async def fan_in(ctx: Context, aggregator: Agent[T], task: Any,
                 results: Mapping[str, Any] | Sequence[Any], *,
                 policy: Policy | None = None, budget: Budget | None = None) -> T:
    """Ask ``aggregator`` the ``task`` with ``results`` as supporting messages its window
    may move, and return its answer.

    Args:
        aggregator: an agent with a context window.
        task: the task (the first user message: pinned).
        results: by label (``{"researcher": notes}``; the origin of each is
            ``agent:<label>``) or in order; an :class:`~stalwart.AgentResult` counts as
            its output, a :class:`~stalwart.Reply` (an ensemble member's) as its value
            under its member's label, and a failed ``Reply`` is left out.
        policy, budget: for the aggregator's run (see :meth:`Agent.run_result`).

    Raises:
        ConfigurationError: the aggregator has no context window.
        ContextOverflowError: its policy is ``Reject`` (or could not make room) and the
            results do not fit: raised before the call.
    """
    if not isinstance(aggregator, Agent):
        raise ConfigurationError(f"fan_in: the aggregator must be an Agent, not "
                                 f"{type(aggregator).__name__}")
    if aggregator.context is None:
        raise ConfigurationError(
            f"fan_in: the aggregator {aggregator.name!r} has no context window, so "
            "nothing would stop its results from overflowing the model's limit: give it "
            "context=sw.ContextWindow(...) (or call agent.run(ctx, task, results=...))")
    given: Mapping[str, Any] | Sequence[Any]
    if isinstance(results, Mapping):
        given = {k: _value(v) for k, v in results.items()}
    elif any(isinstance(r, Reply) for r in results):
        given = {r.member if isinstance(r, Reply) else f"result {i}": _value(r)
                 for i, r in enumerate(results, 1) if not isinstance(r, Reply) or r.ok}
    else:
        given = [_value(r) for r in results]
    return await aggregator.run(ctx, task, policy=policy, budget=budget, results=given)


def _value(result: Any) -> Any:
    if isinstance(result, AgentResult):
        return result.output
    if isinstance(result, Reply):
        return result.value
    return result
