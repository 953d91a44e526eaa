"""The offline simulator: determinism per seed, fault rates, bursts, outages, scripts."""

from __future__ import annotations

import json
import random
import statistics
from collections import Counter
from typing import Any

import pytest

from stalwart import FakeClock
from stalwart.errors import (
    ConfigurationError,
    InvalidRequestError,
    MalformedResponseError,
    ModelError,
    ModelTimeoutError,
    ProviderOverloadedError,
    RateLimitedError,
)
from stalwart.models import (
    Latency,
    Message,
    Model,
    ModelOptions,
    ModelRequest,
    ModelResponse,
    SimFaults,
    SimulatedModel,
    ToolCallRequest,
    ToolSpec,
    parse_model,
)

PROMPT = ModelRequest.of("What is a circuit breaker?")


async def _outcomes(model: SimulatedModel, n: int) -> list[str]:
    out = []
    for _ in range(n):
        try:
            response = await model.complete(PROMPT)
        except ModelError as exc:
            out.append(type(exc).__name__)
        else:
            out.append(f"ok:{response.content}")
    return out


FLAKY = SimFaults(error_rate=0.1, rate_limit_rate=0.05, stall_rate=0.05, malformed_rate=0.05,
                  stall_seconds=2.0)


async def test_same_seed_same_behaviour() -> None:
    """Two simulators with one seed produce the same replies, faults and virtual time."""
    clocks = [FakeClock(autojump=True), FakeClock(autojump=True)]
    runs = [await _outcomes(SimulatedModel("m", seed=7, clock=c, faults=FLAKY,
                                           latency=Latency.uniform(0.1, 0.9)), 300)
            for c in clocks]
    assert runs[0] == runs[1]
    assert clocks[0].monotonic() == clocks[1].monotonic() > 0


async def test_different_seed_different_faults() -> None:
    """Another seed gives another fault sequence."""
    a = await _outcomes(SimulatedModel("m", seed=1, clock=FakeClock(autojump=True),
                                       faults=FLAKY), 300)
    b = await _outcomes(SimulatedModel("m", seed=2, clock=FakeClock(autojump=True),
                                       faults=FLAKY), 300)
    assert a != b


async def test_fault_rates_match_configuration() -> None:
    """Over 2,000 calls each fault kind occurs at its configured rate among fresh calls."""
    faults = SimFaults(error_rate=0.10, rate_limit_rate=0.04, rate_limit_burst=3,
                       stall_rate=0.05, stall_seconds=5.0, malformed_rate=0.08)
    model = SimulatedModel("m", seed=42, clock=FakeClock(autojump=True), faults=faults)
    outcomes = Counter(o.split(":")[0] for o in await _outcomes(model, 2000))

    stats = model.statistics()
    assert stats.calls == 2000
    assert stats.replies == outcomes["ok"]
    bursts = stats.faults["rate_limited"] // 3
    assert stats.faults["rate_limited"] == outcomes["RateLimitedError"]
    fresh = stats.calls - 2 * bursts  # burst continuations draw nothing
    for kind, rate in [("server_error", 0.10), ("stall", 0.05), ("malformed", 0.08)]:
        assert stats.faults[kind] / fresh == pytest.approx(rate, abs=0.02), kind
    assert bursts / fresh == pytest.approx(0.04, abs=0.015)
    assert outcomes["ProviderOverloadedError"] == stats.faults["server_error"]
    assert outcomes["ModelTimeoutError"] == stats.faults["stall"]
    assert outcomes["MalformedResponseError"] == stats.faults["malformed"]


async def test_rate_limit_bursts_carry_retry_after() -> None:
    """429s come in bursts of exactly K (or back-to-back bursts), each with retry_after."""
    faults = SimFaults(rate_limit_rate=0.2, rate_limit_burst=4, rate_limit_retry_after=2.5)
    model = SimulatedModel("m", seed=3, clock=FakeClock(autojump=True), faults=faults)
    runs: list[int] = []
    errors: list[RateLimitedError] = []
    current = 0
    for _ in range(400):
        try:
            await model.complete(PROMPT)
        except RateLimitedError as exc:
            errors.append(exc)
            current += 1
        else:
            if current:
                runs.append(current)
            current = 0
    assert {(e.retry_after, e.status_code, e.retryable) for e in errors} == {(2.5, 429, True)}
    assert runs
    assert all(run % 4 == 0 for run in runs)


async def test_rate_limit_without_header_has_no_retry_after() -> None:
    """rate_limit_retry_after=None models a 429 without a Retry-After header."""
    faults = SimFaults(rate_limit_rate=1.0, rate_limit_burst=1, rate_limit_retry_after=None)
    model = SimulatedModel("m", clock=FakeClock(), faults=faults)
    with pytest.raises(RateLimitedError) as info:
        await model.complete(PROMPT)
    assert info.value.retry_after is None


async def test_outage_window_in_clock_time() -> None:
    """Calls fail with a 503 exactly inside [start, end) of clock time since creation."""
    clock = FakeClock()
    model = SimulatedModel("m", clock=clock, faults=SimFaults(outages=((10.0, 20.0),)))
    assert (await model.complete(PROMPT)).content
    await clock.advance(10.0)
    with pytest.raises(ProviderOverloadedError) as info:
        await model.complete(PROMPT)
    assert info.value.status_code == 503
    await clock.advance(9.9)
    with pytest.raises(ProviderOverloadedError):
        await model.complete(PROMPT)
    await clock.advance(0.1)
    assert (await model.complete(PROMPT)).content
    assert model.statistics().faults == {"outage": 2}


async def test_stall_then_timeout_takes_exact_virtual_time() -> None:
    """stall_outcome='timeout' sleeps stall_seconds on the clock, then times out."""
    clock = FakeClock(autojump=True)
    model = SimulatedModel("m", clock=clock,
                           faults=SimFaults(stall_rate=1.0, stall_seconds=30.0))
    with pytest.raises(ModelTimeoutError) as info:
        await model.complete(PROMPT)
    assert info.value.retryable
    assert clock.monotonic() == 30.0


async def test_stall_then_reply_is_just_slow() -> None:
    """stall_outcome='reply' answers after the stall, leaving the cut-off to policies."""
    clock = FakeClock(autojump=True)
    model = SimulatedModel("m", clock=clock, faults=SimFaults(
        stall_rate=1.0, stall_seconds=12.0, stall_outcome="reply"))
    assert (await model.complete(PROMPT)).content
    assert clock.monotonic() == 12.0
    assert model.statistics().faults == {"stall": 1}


async def test_fixed_latency_advances_clock_exactly() -> None:
    """Each successful call sleeps its latency on the injected clock."""
    clock = FakeClock(autojump=True)
    model = SimulatedModel("m", clock=clock, latency=Latency.fixed(0.75))
    for _ in range(4):
        await model.complete(PROMPT)
    assert clock.monotonic() == 3.0


async def test_malformed_only() -> None:
    """malformed_rate=1 fails every call with a retryable MalformedResponseError."""
    model = SimulatedModel("m", clock=FakeClock(), faults=SimFaults(malformed_rate=1.0))
    with pytest.raises(MalformedResponseError) as info:
        await model.complete(PROMPT)
    assert info.value.retryable


def test_latency_distributions_stay_in_range() -> None:
    """Uniform samples stay in bounds; log-normal samples centre on the median."""
    rng = random.Random(0)
    uniform = [Latency.uniform(0.2, 0.4).sample(rng) for _ in range(1000)]
    assert all(0.2 <= x <= 0.4 for x in uniform)
    lognormal = [Latency.lognormal(median=1.5, sigma=0.6).sample(rng) for _ in range(4000)]
    assert all(x > 0 for x in lognormal)
    assert statistics.median(lognormal) == pytest.approx(1.5, rel=0.08)
    assert Latency.fixed(0.3).sample(rng) == 0.3


@pytest.mark.parametrize("kwargs", [
    {"error_rate": 0.6, "malformed_rate": 0.6},
    {"error_rate": -0.1},
    {"rate_limit_burst": 0},
    {"outages": ((5.0, 5.0),)},
    {"stall_seconds": -1.0},
])
def test_invalid_fault_config_is_rejected(kwargs: dict[str, object]) -> None:
    """Impossible fault configurations fail at construction with ConfigurationError."""
    with pytest.raises(ConfigurationError):
        SimFaults(**kwargs)  # type: ignore[arg-type]


async def test_default_reply_depends_on_prompt_and_seed_only() -> None:
    """The unscripted reply is a pure function of seed, name and last user message."""
    a = SimulatedModel("m", seed=1, clock=FakeClock())
    b = SimulatedModel("m", seed=1, clock=FakeClock())
    other = ModelRequest.of("Something else entirely")
    first = await a.complete(PROMPT)
    await b.complete(other)  # a different call order
    second = await b.complete(PROMPT)
    assert first.content == second.content
    assert first.content is not None and "circuit breaker" in first.content
    replies = {(await SimulatedModel("m", seed=s, clock=FakeClock()).complete(PROMPT)).content
               for s in range(5)}
    assert len(replies) > 1
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0
    assert (first.provider, first.model) == ("sim", "m")


async def test_scripted_tool_conversation() -> None:
    """A script drives a tool-calling exchange, and the model sees the tool result."""
    search = ToolSpec(name="search", parameters={
        "type": "object", "properties": {"q": {"type": "string"}}})
    model = SimulatedModel("agent", clock=FakeClock(), script=[
        ToolCallRequest.create("call_1", "search", {"q": "breakers"}),
        "Breakers stop retry storms.",
    ])
    messages = [Message.system("Use tools."), Message.user("Tell me about breakers.")]

    first = await model.complete(ModelRequest(messages=tuple(messages), tools=(search,)))
    assert first.finish_reason == "tool_calls"
    (call,) = first.tool_calls
    assert (call.name, call.parsed) == ("search", {"q": "breakers"})
    messages += [first.to_message(), Message.tool("3 results", tool_call_id=call.id)]

    second = await model.complete(ModelRequest(messages=tuple(messages), tools=(search,)))
    assert second.content == "Breakers stop retry storms."
    assert second.finish_reason == "stop"
    assert model.requests[1].messages[-1].content == "3 results"

    with pytest.raises(ConfigurationError, match="used up"):
        await model.complete(ModelRequest(messages=tuple(messages)))


async def test_faults_do_not_consume_script() -> None:
    """A faulted call leaves the script where it was, so the retry gets the same reply."""
    clock = FakeClock()
    model = SimulatedModel("m", clock=clock, script=["first", "second"],
                           faults=SimFaults(outages=((0.0, 1.0),)))
    with pytest.raises(ProviderOverloadedError):
        await model.complete(PROMPT)
    await clock.advance(1.0)
    assert (await model.complete(PROMPT)).content == "first"


async def test_script_can_raise_and_be_a_function() -> None:
    """Scripted errors are raised in turn; a callable script sees each request."""
    model = SimulatedModel("m", clock=FakeClock(),
                           script=[InvalidRequestError("bad"), "after"])
    with pytest.raises(InvalidRequestError):
        await model.complete(PROMPT)
    assert (await model.complete(PROMPT)).content == "after"

    echo = SimulatedModel("m", clock=FakeClock(),
                          script=lambda req: f"echo {req.messages[-1].content}")
    assert (await echo.complete(ModelRequest.of("ping"))).content == "echo ping"
    full = SimulatedModel("m", clock=FakeClock(),
                          script=lambda req: ModelResponse(content="x", finish_reason="length"))
    response = await full.complete(PROMPT)
    assert (response.finish_reason, response.provider, response.model) == ("length", "sim", "m")


def test_simulator_satisfies_model_protocol() -> None:
    """SimulatedModel is a Model, and its statistics are a frozen snapshot."""
    model = SimulatedModel("m")
    assert isinstance(model, Model)
    snapshot = model.statistics()
    with pytest.raises(AttributeError):
        snapshot.calls = 3  # type: ignore[misc]


# -- the default reply: Pydantic AI's TestModel, offline ------------------------------

WEATHER = ToolSpec(name="get_weather", description="Weather in a city.", parameters={
    "type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"enum": ["C", "F"]}, "note": {"type": "string"}},
    "required": ["city", "days", "unit"]})
CLOCK_TIME = ToolSpec(name="clock_time", parameters={"type": "object", "properties": {}})
FORECAST = {"type": "object", "properties": {
    "city": {"type": "string"}, "high": {"type": "number", "minimum": -50, "maximum": 60}},
    "required": ["city", "high"]}


async def test_default_text_is_unchanged_for_a_plain_prompt() -> None:
    """Without tools or an output schema, the reply is the text it always was (the demo's
    researchers answer with it)."""
    reply = await SimulatedModel("m", seed=1, clock=FakeClock()).complete(PROMPT)
    assert reply.content == ("[sim:m] On 'What is a circuit breaker?': observable durable "
                             "replayed consistent.")


async def test_first_turn_calls_every_tool_with_arguments_from_its_schema() -> None:
    """Offered tools are all called on the first turn, each with schema-valid arguments."""
    model = SimulatedModel("m", seed=3, clock=FakeClock())
    reply = await model.complete(ModelRequest.of("Weather?", tools=[WEATHER, CLOCK_TIME]))
    assert reply.finish_reason == "tool_calls" and reply.content is None
    assert [c.name for c in reply.tool_calls] == ["get_weather", "clock_time"]
    assert len({c.id for c in reply.tool_calls}) == 2
    args = reply.tool_calls[0].parsed
    assert args is not None and set(args) == {"city", "days", "unit"}
    assert isinstance(args["city"], str) and 1 <= args["days"] <= 7  # type: ignore[operator]
    assert args["unit"] in ("C", "F")
    assert reply.tool_calls[1].parsed == {}


async def test_after_the_tools_it_answers_with_their_results() -> None:
    """Once the conversation holds tool results, the text reply quotes them."""
    model = SimulatedModel("m", clock=FakeClock())
    first = await model.complete(ModelRequest.of("Weather?", tools=[WEATHER]))
    (call,) = first.tool_calls
    messages = [Message.user("Weather?"), first.to_message(),
                Message.tool("sunny", tool_call_id=call.id, name=call.name)]
    final = await model.complete(ModelRequest(messages=tuple(messages), tools=(WEATHER,)))
    assert final.tool_calls == () and final.finish_reason == "stop"
    assert final.content is not None
    assert final.content.endswith('Tool results: {"get_weather": "sunny"}')


async def test_an_output_schema_gets_a_value_that_fits_it() -> None:
    """Given an output schema, the final answer is JSON that fits it."""
    model = SimulatedModel("m", seed=2, clock=FakeClock())
    reply = await model.complete(ModelRequest.of("Forecast?", output_schema=FORECAST))
    value = json.loads(reply.content or "")
    assert set(value) == {"city", "high"} and -50 <= value["high"] <= 60


@pytest.mark.parametrize(("kwargs", "spec", "called"), [
    ({"call_tools": ["clock_time"]}, "sim:m?tools=clock_time", ["clock_time"]),
    ({"call_tools": []}, "sim:m?tools=", []),
    ({"call_tools": ["nope", "get_weather"]}, "sim:m?tools=nope,get_weather",
     ["get_weather"]),
])
async def test_a_subset_of_the_tools_is_called(kwargs: dict[str, Any], spec: str,
                                               called: list[str]) -> None:
    """call_tools= (or ?tools= in a spec) picks the tools called; names not offered are
    skipped; none called means the model answers at once."""
    request = ModelRequest.of("Weather?", tools=[WEATHER, CLOCK_TIME])
    for model in (SimulatedModel("m", clock=FakeClock(), **kwargs),
                  parse_model(spec, clock=FakeClock())):
        reply = await model.complete(request)
        assert [c.name for c in reply.tool_calls] == called
        assert model.name == "m"


def test_a_sim_spec_refuses_options_it_does_not_know() -> None:
    """A typo in a sim: spec's options is an error, not silently the default."""
    with pytest.raises(ConfigurationError, match="tool"):
        parse_model("sim:m?tool=a")
    with pytest.raises(ConfigurationError, match="seed"):
        parse_model("sim:m?seed=x")
    with pytest.raises(ConfigurationError, match="call_tools"):
        SimulatedModel("m", call_tools="get_weather")
    assert parse_model("sim:m?seed=5").seed == 5  # type: ignore[attr-defined]


async def test_tool_choice_none_calls_no_tool() -> None:
    """A request that forbids tool calls gets an answer."""
    reply = await SimulatedModel("m", clock=FakeClock()).complete(ModelRequest.of(
        "x", tools=[WEATHER], options=ModelOptions(tool_choice="none")))
    assert reply.tool_calls == () and reply.content


async def test_tools_do_not_change_which_calls_fail() -> None:
    """Arguments come from a generator of their own: offering tools leaves the seeded
    fault sequence exactly as it was."""
    async def outcomes(request: ModelRequest) -> list[str]:
        model = SimulatedModel("m", seed=7, clock=FakeClock(autojump=True), faults=FLAKY)
        out = []
        for _ in range(200):
            try:
                await model.complete(request)
                out.append("ok")
            except ModelError as exc:
                out.append(type(exc).__name__)
        return out

    assert await outcomes(PROMPT) == await outcomes(
        ModelRequest.of("What is a circuit breaker?", tools=[WEATHER]))


async def test_default_replies_are_deterministic_per_seed() -> None:
    """Same seed, same tool arguments and values; another seed, others."""
    async def args(seed: int) -> str:
        model = SimulatedModel("m", seed=seed, clock=FakeClock())
        return (await model.complete(ModelRequest.of("x", tools=[WEATHER]))).tool_calls[0] \
            .arguments

    assert await args(1) == await args(1)
    assert len({await args(s) for s in range(6)}) > 1
