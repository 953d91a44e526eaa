"""Handoffs between agents, with an explicit state contract.

The OpenAI Agents SDK represents a handoff as a tool, ``transfer_to_<agent>``, that
the model calls; by default the next agent sees the whole conversation, an
``input_type`` types the tool's arguments and an ``input_filter`` edits the history.
Here a handoff is a *contract* between two agents, checked, journaled and bounded:

* **canonical state must transfer**: the handoff's ``contract`` (a Pydantic model) is
  the tool's argument schema, and its required fields must be there and valid;
* **local state must not**: the names in ``local`` (the sender's private fields: a card
  number, internal notes) are refused if the sender puts them in the handoff, and so is
  any field the contract does not declare;
* **fields are transformed on the way**: ``transform`` maps a field to a function
  applied to its value (redact, summarize) inside the handoff's journaled step, so it
  runs once and its result is what every replay hands over.

The receiving agent sees only the contract (its input is the transferred model, not
the sender's conversation). A handoff that does not satisfy the contract goes back to
the sender's model as a structured tool error (``handoff_refused`` with each problem),
at most ``max_reasks`` times; then :class:`~stalwart.errors.HandoffContractError`.

Each handoff is a journaled step, ``handoff:{source}->{target}``, whose result is what
transferred (the hop, both agents and the contract's JSON). A chain of handoffs is
bounded (``max_hops``: :class:`~stalwart.errors.HandoffLimitError`), and a handoff that
repeats an earlier one of the chain (same agents, same contract) is a loop that could
only go round: :class:`~stalwart.errors.HandoffLoopError`. The sender's model turn that
asked for the handoff is journaled like any turn, so a resumed run replays the chain
without calling a model or a transform again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, final

from pydantic import BaseModel, ValidationError

from .._agent import Agent, HandoffOffer
from ..engine._privilege import Sourced
from ..errors import (
    ConfigurationError,
    HandoffContractError,
    HandoffLimitError,
    HandoffLoopError,
)
from ..models import Origin, ToolSpec

if TYPE_CHECKING:
    from .._context import Context

__all__ = ["Handoff", "Team", "TeamResult"]

T = TypeVar("T")


@final
@dataclass(frozen=True, slots=True)
class Handoff:
    """A handoff agent ``source`` may make to agent ``target`` (by name).

    Args:
        contract: a Pydantic model: what must transfer (its fields; required ones must
            be given), and all that may.
        local: names of the sender's fields that must never transfer; a handoff that
            carries one is refused, with a reason the sender's model can act on.
        transform: field name -> function applied to the field's value on the way.
        description: when to use it, for the sender's model.
        tool_name: the tool the sender's model calls (default ``transfer_to_{target}``).
    """

    source: str
    target: str
    contract: type[BaseModel]
    local: tuple[str, ...] = ()
    transform: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    description: str = ""
    tool_name: str | None = None

    @property
    def tool(self) -> str:
        return self.tool_name or "transfer_to_" + re.sub(r"[^a-zA-Z0-9_-]", "_",
                                                         self.target)[:52]

    def problems(self, arguments: Mapping[str, Any]) -> list[str]:
        """What is wrong with a handoff carrying ``arguments`` (empty: nothing)."""
        fields = self.contract.model_fields
        out = [f"field {k!r} is local to {self.source} and must not be handed off"
               for k in arguments if k in self.local]
        out += [f"field {k!r} is not part of the contract {self.contract.__name__} "
                f"(it takes: {', '.join(fields)})"
                for k in arguments if k not in self.local and k not in fields]
        try:
            self.contract.model_validate({k: v for k, v in arguments.items() if k in fields})
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                where = ".".join(str(p) for p in err["loc"]) or "(contract)"
                out.append(f"field {where!r}: {err['msg']}")
        return out


@final
@dataclass(frozen=True, slots=True)
class TeamResult(Generic[T]):
    """How a team's run ended.

    Attributes:
        output: the answer of the agent that answered (not handed off).
        agent: that agent's name.
        chain: every agent that held the conversation, in order (``chain[-1] == agent``).
        transfers: what each handoff transferred (the contracts, as JSON values).
    """

    output: T
    agent: str
    chain: tuple[str, ...]
    transfers: tuple[dict[str, Any], ...] = ()


def _check(handoff: Handoff, agents: Mapping[str, Agent[Any]]) -> None:
    for role, name in (("from", handoff.source), ("to", handoff.target)):
        if name not in agents:
            raise ConfigurationError(
                f"a handoff {role} an unknown agent {name!r} ({handoff.source!r} -> "
                f"{handoff.target!r}); the team's agents are: {', '.join(agents)}")
    if not (isinstance(handoff.contract, type) and issubclass(handoff.contract, BaseModel)):
        raise ConfigurationError(f"handoff {handoff.source!r} -> {handoff.target!r}: the "
                                 f"contract must be a pydantic model class")
    fields = handoff.contract.model_fields
    both = sorted(set(handoff.local) & set(fields))
    if both:
        raise ConfigurationError(f"handoff {handoff.source!r} -> {handoff.target!r}: "
                                 f"{both} are both local and in the contract")
    unknown = sorted(set(handoff.transform) - set(fields))
    if unknown:
        raise ConfigurationError(f"handoff {handoff.source!r} -> {handoff.target!r}: "
                                 f"transform names {unknown}, not fields of the contract")


@final
class Team:
    """Agents that hand a conversation to one another along declared handoffs.

    Args:
        agents: the agents (names unique).
        handoffs: the handoffs allowed; each names its source and target agents.
        max_hops: the most handoffs one run of the team makes.
        max_reasks: how often a sender may be told its handoff broke the contract.

    Raises:
        ConfigurationError: a handoff from or to an agent not in ``agents``, duplicate
            names, a contract that is not a model, a field both local and canonical.
    """

    def __init__(self, agents: Sequence[Agent[Any]], handoffs: Sequence[Handoff], *,
                 max_hops: int = 5, max_reasks: int = 2) -> None:
        self.agents: dict[str, Agent[Any]] = {}
        for agent in agents:
            if not isinstance(agent, Agent):
                raise ConfigurationError(f"Team() takes agents, not {agent!r}")
            if agent.name in self.agents:
                raise ConfigurationError(f"two agents of the team are named {agent.name!r}")
            self.agents[agent.name] = agent
        for label, value, low in (("max_hops", max_hops, 0), ("max_reasks", max_reasks, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigurationError(f"Team.{label} must be an int >= {low}")
        self.handoffs = list(handoffs)
        tools: set[tuple[str, str]] = set()
        for h in self.handoffs:
            if not isinstance(h, Handoff):
                raise ConfigurationError(f"Team() takes Handoff(...) routes, not {h!r}")
            _check(h, self.agents)
            if (h.source, h.tool) in tools:
                raise ConfigurationError(f"agent {h.source!r} has two handoffs named "
                                         f"{h.tool!r}")
            tools.add((h.source, h.tool))
        self.max_hops = max_hops
        self.max_reasks = max_reasks

    def _offers(self, source: str, chain: list[str]) -> dict[str, tuple[Handoff,
                                                                        HandoffOffer]]:
        out = {}
        for h in self.handoffs:
            if h.source != source:
                continue
            desc = (f"Hand the conversation off to {h.target}. {h.description}".strip()
                    + f" Only these arguments reach {h.target}.")

            def exhausted(problems: list[str], h: Handoff = h) -> BaseException:
                return HandoffContractError(
                    f"agent {h.source!r} kept handing off to {h.target!r} with arguments "
                    f"that break the contract {h.contract.__name__} (after "
                    f"{self.max_reasks} re-asks): {'; '.join(problems)}",
                    problems=problems, source=h.source, target=h.target, chain=chain)

            spec = ToolSpec(name=h.tool, description=desc,
                            parameters=h.contract.model_json_schema())
            out[h.tool] = (h, HandoffOffer(spec, h.problems, self.max_reasks, exhausted))
        return out

    async def run(self, ctx: Context, input: Any, *, start: str) -> TeamResult[Any]:
        """Give ``input`` to agent ``start`` and follow its handoffs until an agent
        answers; returns that answer, who gave it and the chain.

        Raises:
            ConfigurationError: ``start`` is not an agent of the team.
            HandoffContractError, HandoffLimitError, HandoffLoopError: see the module.
        """
        if start not in self.agents:
            raise ConfigurationError(f"the team has no agent {start!r} to start with (its "
                                     f"agents: {', '.join(self.agents)})")
        agent, payload = self.agents[start], input
        chain = [start]
        transfers: list[dict[str, Any]] = []
        seen: set[tuple[str, str, str]] = set()
        while True:
            offers = self._offers(agent.name, list(chain))
            result = await agent.run_result(ctx, payload,
                                            handoffs=[o for _, o in offers.values()])
            if result.handoff is None:
                return TeamResult(result.output, agent.name, tuple(chain), tuple(transfers))
            tool, arguments = result.handoff
            h = offers[tool][0]
            key = (h.source, h.target, json.dumps(arguments, sort_keys=True))
            if len(transfers) >= self.max_hops:
                raise HandoffLimitError(
                    f"agent {h.source!r} handed off to {h.target!r}, which would be handoff "
                    f"{len(transfers) + 1} of a chain bounded at max_hops={self.max_hops} "
                    f"({' -> '.join(chain)})", max_hops=self.max_hops, source=h.source,
                    target=h.target, chain=chain)
            if key in seen:
                raise HandoffLoopError(
                    f"agent {h.source!r} handed off to {h.target!r} with the same contract "
                    f"as before in this chain ({' -> '.join(chain)}): a loop",
                    source=h.source, target=h.target, chain=chain)
            seen.add(key)
            moved = await ctx.step(_transfer, h, len(transfers) + 1, arguments,
                                   name=f"handoff:{h.source}->{h.target}")
            transfers.append(moved["contract"])
            chain.append(h.target)
            agent = self.agents[h.target]
            # What the receiver is handed is another agent's output: its provenance.
            payload = Sourced(h.contract.model_validate(moved["contract"]),
                              Origin.agent(h.source))


async def _transfer(h: Handoff, hop: int, arguments: dict[str, Any]) -> dict[str, Any]:
    """The handoff's step: the contract with its fields transformed, as JSON."""
    data = h.contract.model_validate(arguments).model_dump()
    for name, fn in h.transform.items():
        data[name] = fn(data[name])
    contract = h.contract.model_validate(data).model_dump(mode="json")
    return {"hop": hop, "from": h.source, "to": h.target, "contract": contract}
