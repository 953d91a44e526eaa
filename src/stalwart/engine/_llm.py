"""One model call as a journaled step: an agent's model turn, and ``ctx.llm``.

Both go the same way: the model of the call (or the one ``runs fork --model`` put in its
place) and the policy's fallback chain become the candidates of one
:func:`~stalwart.engine._calls.guarded_call` step named ``chat:{name}``, whose recorded result
is the :class:`~stalwart.models.ModelResponse`. Cost accounting, ``stats``, ``runs
trace`` and forks read such steps whoever made them, so a single ``ctx.llm`` call is
counted, drawn and forked like an agent's turn.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import TypeAdapter

from ..errors import ConfigurationError, OutputValidationError
from ..models import Message, Model, ModelOptions, ModelRequest, ModelResponse, count_tokens
from ..store._base import NewEvent
from ._calls import Candidate, guarded_call
from ._execution import Execution
from ._interceptor import ModelCallEndInput, ModelCallStartInput
from ._policy import Policy
from ._scope import outcome_problem

__all__ = ["llm", "model_turn", "read_output", "system_prompt"]

RESPONSE = TypeAdapter(ModelResponse)

Prompt = str | Message | Sequence[Message | str]


def system_prompt(instructions: str, adapter: TypeAdapter[Any] | None) -> str:
    """The instructions, plus the output schema when the answer is typed."""
    if adapter is None:
        return instructions
    schema = json.dumps(adapter.json_schema())
    return f"{instructions}\n\nAnswer with JSON only, matching this JSON schema:\n{schema}".strip()


def _strip_fences(text: str) -> str:
    t = text.strip()
    if t.startswith("```"):
        t = t.split("\n", 1)[1] if "\n" in t else ""
        if t.rstrip().endswith("```"):
            t = t.rstrip()[:-3]
    return t.strip()


def read_output(adapter: TypeAdapter[Any] | None, type_name: str,
                text: str) -> tuple[Any, str | None]:
    """A final answer read as its type: ``(value, None)``, or ``(None, what is wrong)``.
    Without a type the text is the answer; a typed answer is JSON (code fences allowed)."""
    if adapter is None:
        return text, None
    try:
        return adapter.validate_json(_strip_fences(text)), None
    except Exception as exc:
        return None, f"the answer does not match {type_name}: {exc}"


async def model_turn(ex: Execution, *, name: str, model: str | Model, request: ModelRequest,
                     policy: Policy, pool: str | None,
                     check: Callable[[ModelResponse], object] | None = None,
                     reject_failed_check: bool = False,
                     also: Sequence[NewEvent] = (),
                     estimate: int | None = None) -> ModelResponse:
    """One model call of ``request`` as the journaled step ``chat:{name}`` under
    ``policy`` (its fallback chain included); see :func:`guarded_call` for ``check``
    and ``also``.

    ``estimate``: the request's tokens as the caller keeps them (the rate limiter's
    draw). An agent passes its history's running count, so a turn costs its new
    messages; without one, the messages are counted here (fine for one call, quadratic
    over a long conversation)."""
    override = ex.model_override(ex.next_step_id())
    chain = [model if override is None else override, *policy.fallback_chain]
    if estimate is None:
        estimate = sum(count_tokens(m.content or "") for m in request.messages)
    candidates = []
    for spec in chain:
        m = ex.engine.model(spec)
        candidates.append(Candidate(
            key=f"{m.provider}:{m.name}", call=_completer(m, request, ex, name),
            estimate_tokens=estimate,
            actual_tokens=lambda r: int(r.usage.input_tokens + r.usage.output_tokens)))
    response: ModelResponse = await guarded_call(
        ex, name=f"chat:{name}", candidates=candidates, policy=policy, pool=pool,
        encode_result=lambda r: RESPONSE.dump_json(r).decode(),
        decode_result=RESPONSE.validate_json, check=check,
        reject_failed_check=reject_failed_check, also=also)
    return response


def _completer(model: Model, request: ModelRequest, ex: Execution, agent: str) -> Any:
    ic = ex.interceptor

    async def call(step_id: str, attempt: int) -> ModelResponse:
        if not ic.active:
            return await model.complete(request)
        handle = ic.model_call_started(ModelCallStartInput(
            ex.run_id, step_id, attempt, f"{model.provider}:{model.name}", model.provider,
            model.name, request, agent))
        try:
            with ic.activated(ex.run_id, step_id, handle):
                response = await model.complete(request)
        except BaseException as exc:
            ic.model_call_ended(ModelCallEndInput(handle, error=exc))
            raise
        ic.model_call_ended(ModelCallEndInput(handle, response=response))
        return response

    return call


def _messages(prompt: Prompt, system: str) -> list[Message]:
    if isinstance(prompt, str | Message):
        given: list[Message | str] = [prompt]
    elif isinstance(prompt, Sequence):
        given = list(prompt)
    else:
        raise ConfigurationError(f"ctx.llm: the prompt must be a str, a Message or a list of "
                                 f"them, not {type(prompt).__name__}")
    messages = [Message.user(m) if isinstance(m, str) else m for m in given]
    if not messages:
        raise ConfigurationError("ctx.llm: the prompt is empty")
    if system:
        if messages[0].role == "system":
            first = messages[0].content or ""
            messages[0] = Message.system(f"{first}\n\n{system}".strip())
        else:
            messages.insert(0, Message.system(system))
    return messages


async def llm(ex: Execution, model: str | Model, prompt: Prompt, *, output_type: Any,
              instructions: str, policy: Policy | None, options: ModelOptions | None,
              name: str, pool: str | None, check: Callable[[Any], object] | None) -> Any:
    """``ctx.llm``: see :meth:`stalwart.Context.llm`."""
    if not name:
        raise ConfigurationError("ctx.llm: name must not be empty")
    adapter = TypeAdapter(output_type) if output_type is not None else None
    type_name = str(getattr(output_type, "__name__", output_type))
    request = ModelRequest(
        messages=tuple(_messages(prompt, system_prompt(instructions, adapter))),
        options=options or ModelOptions(),
        output_schema=adapter.json_schema() if adapter is not None else None)

    def problem(response: ModelResponse) -> str | None:
        value, wrong = read_output(adapter, type_name, response.content or "")
        if wrong is None and check is not None:
            wrong = outcome_problem(check, value)
        return wrong

    response = await model_turn(
        ex, name=name, model=model, request=request,
        policy=ex.engine.effective_policy(policy), pool=pool or name, check=problem,
        reject_failed_check=True)
    value, wrong = read_output(adapter, type_name, response.content or "")
    if wrong is not None:  # only a replay with another output_type can get here
        raise OutputValidationError(f"ctx.llm {name!r}: {wrong}", agent=name,
                                    run_id=ex.run_id)
    return value
