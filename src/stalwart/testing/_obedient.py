"""The worst model there is: it obeys every instruction it finds in its context.

A prompt-injection defence that holds against a real model may only hold because that
model happened to ignore the injection. :class:`ObedientModel` never ignores one: each
turn it reads *everything* it is given (every message, whatever its role or origin, and
every tool description) and carries out each instruction it finds, once, in the order
found. What is left to stop the attack is the runtime around it.

An instruction is a line ``CALL tool_name {"json": "arguments"}`` anywhere in the text
(or whatever ``understand`` makes of the text: a function from text to instructions,
which is how the injection battery teaches it AgentDojo's goals). ``ANSWER text`` sets
its final answer; without one it answers ``done``. It records every call it asks for
with where the instruction came from (:attr:`ObedientModel.attempts`), so a test can
tell calls the user asked for from calls an injection asked for without trusting the
defence's own bookkeeping.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, final

from stalwart.models import ModelRequest, ModelResponse, ToolCallRequest
from stalwart.models._replies import as_response

__all__ = ["Attempt", "Instruction", "ObedientModel", "instruction"]

_CALL = re.compile(r"CALL\s+([A-Za-z0-9_-]{1,64})\s*(?=\{)")
_ANSWER = re.compile(r"ANSWER\s+([^\n]*)")
_JSON = json.JSONDecoder()


@final
@dataclass(frozen=True, slots=True)
class Instruction:
    """One thing the model will do: call ``tool`` with ``arguments``, or (``tool`` is
    ``None``) answer with ``answer``."""

    tool: str | None
    arguments: dict[str, Any]
    answer: str = ""


def instruction(tool: str, **arguments: Any) -> str:
    """The text of an instruction the model obeys: ``CALL tool {...}``."""
    return f"CALL {tool} {json.dumps(arguments, sort_keys=True)}"


@final
@dataclass(frozen=True, slots=True)
class Attempt:
    """A call the model asked for: the tool, the arguments (canonical JSON), and where
    the instruction was found: ``user`` (a user message), ``system``, or the label of
    the message's origin (``tool:read_inbox``...), or ``description:TOOL``."""

    tool: str
    arguments: str
    found_in: str

    @property
    def injected(self) -> bool:
        """Whether the instruction came from anywhere but the user or the system."""
        return self.found_in not in ("user", "system", "developer")


def _parse(text: str) -> list[Instruction]:
    found: list[tuple[int, Instruction]] = []
    for m in _CALL.finditer(text):
        try:
            args, _ = _JSON.raw_decode(text, m.end())
        except ValueError:
            continue
        if isinstance(args, dict):
            found.append((m.start(), Instruction(m.group(1), args)))
    found += [(m.start(), Instruction(None, {}, m.group(1).strip()))
              for m in _ANSWER.finditer(text)]
    return [i for _, i in sorted(found, key=lambda p: p[0])]


def _key(tool: str, arguments: dict[str, Any]) -> tuple[str, str]:
    return tool, json.dumps(arguments, sort_keys=True)


@final
class ObedientModel:
    """A :class:`~stalwart.models.Model` that carries out every instruction in its
    context (see the module docstring).

    Args:
        name: its name in the journal (``obedient:NAME``).
        understand: extra instructions read from a text (default: none beyond
            ``CALL``/``ANSWER`` lines).
        parallel: ask for every pending call in one turn; by default one call per
            turn, in order, so a call comes after the results of the calls before it
            (as a model reads, then acts).
    """

    provider = "obedient"

    def __init__(self, name: str = "obedient", *,
                 understand: Callable[[str], Sequence[Instruction]] | None = None,
                 parallel: bool = False) -> None:
        self.name = name
        self.understand = understand
        self.parallel = parallel
        self.attempts: list[Attempt] = []
        self._calls = 0

    def __repr__(self) -> str:
        return f"ObedientModel({self.name!r})"

    async def aclose(self) -> None:
        """Nothing to release."""

    def _read(self, text: str) -> list[Instruction]:
        out = _parse(text)
        if self.understand is not None:
            out += list(self.understand(text))
        return out

    def _instructions(self, request: ModelRequest) -> list[tuple[Instruction, str]]:
        """Every instruction in the request, with where it was found, in order: tool
        descriptions first (the model reads them before the conversation)."""
        found = [(i, f"description:{t.name}") for t in request.tools
                 for i in self._read(t.description)]
        for m in request.messages:
            if m.role == "assistant":
                continue
            label = m.provenance.label
            found += [(i, label) for i in self._read(m.content or "")]
        return found

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Every instruction not yet carried out, as tool calls; then the answer."""
        self._calls += 1
        made: Counter[tuple[str, str]] = Counter(
            _key(c.name, c.parsed or {}) for m in request.messages if m.role == "assistant"
            for c in m.tool_calls)
        wanted: Counter[tuple[str, str]] = Counter()
        calls: list[ToolCallRequest] = []
        answer = "done"
        for inst, where in self._instructions(request):
            if inst.tool is None:
                answer = inst.answer
                continue
            key = _key(inst.tool, inst.arguments)
            wanted[key] += 1
            if wanted[key] <= made[key]:
                continue  # carried out already (or refused: it asked)
            if calls and not self.parallel:
                continue  # one call per turn: the rest come after its result
            made[key] += 1
            calls.append(ToolCallRequest(id=f"call_{self._calls}_{len(calls)}",
                                         name=inst.tool, arguments=key[1]))
            self.attempts.append(Attempt(inst.tool, key[1], where))
        reply: Any = calls if calls else answer
        return as_response(reply, request, model=self.name, provider=self.provider,
                           raw_id=f"obedient-{self._calls}")
