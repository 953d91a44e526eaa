"""The offline model: deterministic replies, virtual latency, injected faults.

``sim:NAME`` is the default model of the demo and of most tests. It needs no network
and no key, and it misbehaves on purpose, reproducibly: all randomness comes from one
``random.Random(seed)`` and all time from an injected :class:`~stalwart.Clock`, so a
test with a :class:`~stalwart.FakeClock` can drive 2,000 calls with 429 bursts, stalls
and outages through the whole policy stack in milliseconds and assert exact numbers.

Per call, in order:

1. an outage window covering the current time fails the call with
   :class:`~stalwart.errors.ProviderOverloadedError` (no randomness consumed);
2. an active 429 burst fails it with :class:`~stalwart.errors.RateLimitedError`
   carrying ``retry_after``;
3. one uniform draw picks at most one fresh fault: server error, the start of a 429
   burst (this call is its first 429), a stall, or a malformed response; the fault
   probabilities are disjoint slices of [0, 1), so each is exactly its configured rate
   among fresh calls;
4. otherwise, after a latency drawn from :class:`Latency`, the next scripted reply,
   or the default reply.

A fault never consumes a scripted reply, so a retried call gets the reply the failed
one would have.

The default reply (no script) behaves like Pydantic AI's ``TestModel``, so an agent runs
its whole loop offline: on the first turn of a conversation that offers tools, it calls
each of them (or the ``call_tools`` subset; ``sim:NAME?tools=a,b`` in a spec) with
arguments made from the tool's JSON schema; then, given an output schema (an agent's
``output_type``), it answers with a value that fits it; otherwise with a short text that
names the prompt and quotes the tools' results. Arguments and values come from a
generator seeded by the model's seed, name and the turn, never from the fault draws, so
adding a tool does not change which calls fail.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal, TypeAlias, final
from urllib.parse import parse_qs

from stalwart._clock import Clock, SystemClock
from stalwart.errors import (
    ConfigurationError,
    MalformedResponseError,
    ModelError,
    ModelTimeoutError,
    ProviderOverloadedError,
    RateLimitedError,
)

from ._replies import ScriptedReply, as_response
from ._schema_data import sample_json
from ._types import ModelRequest, ModelResponse, ToolCallRequest, ToolSpec

__all__ = ["Latency", "ScriptedReply", "SimFaults", "SimStatistics", "SimulatedModel"]


FaultKind = Literal["server_error", "rate_limited", "stall", "outage", "malformed"]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Latency:
    """How long a successful call takes, in seconds of the model's clock.

    Build with :meth:`fixed`, :meth:`uniform` or :meth:`lognormal`.
    """

    kind: Literal["fixed", "uniform", "lognormal"] = "fixed"
    a: float = 0.0
    b: float = 0.0

    def __post_init__(self) -> None:
        if self.kind == "fixed" and self.a < 0:
            raise ConfigurationError("fixed latency must be >= 0")
        if self.kind == "uniform" and not 0 <= self.a <= self.b:
            raise ConfigurationError("uniform latency needs 0 <= low <= high")
        if self.kind == "lognormal" and (self.a <= 0 or self.b < 0):
            raise ConfigurationError("lognormal latency needs median > 0 and sigma >= 0")

    @classmethod
    def fixed(cls, seconds: float) -> Latency:
        """Always ``seconds``."""
        return cls(kind="fixed", a=seconds)

    @classmethod
    def uniform(cls, low: float, high: float) -> Latency:
        """Uniform on ``[low, high]``."""
        return cls(kind="uniform", a=low, b=high)

    @classmethod
    def lognormal(cls, median: float, sigma: float) -> Latency:
        """Log-normal with the given median and shape: the long tail real APIs have."""
        return cls(kind="lognormal", a=median, b=sigma)

    def sample(self, rng: random.Random) -> float:
        """One latency. Always consumes exactly one draw, so sequences stay aligned."""
        u = rng.random()
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return self.a + (self.b - self.a) * u
        # The inverse CDF keeps it to one draw (Box-Muller would take two).
        z = NormalDist().inv_cdf(min(max(u, 1e-12), 1 - 1e-12))
        return self.a * math.exp(self.b * z)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SimFaults:
    """What goes wrong, and how often.

    Attributes:
        error_rate: probability a fresh call fails with a 500
            (:class:`~stalwart.errors.ProviderOverloadedError`).
        rate_limit_rate: probability a fresh call starts a burst of
            ``rate_limit_burst`` consecutive 429s
            (:class:`~stalwart.errors.RateLimitedError`), each with ``retry_after``
            set to ``rate_limit_retry_after`` (``None``: the header was absent).
        stall_rate: probability a fresh call stalls for ``stall_seconds`` of clock
            time. With ``stall_outcome="timeout"`` it then raises
            :class:`~stalwart.errors.ModelTimeoutError`, like an HTTP client whose read
            timeout is ``stall_seconds``. With ``"reply"`` it then answers normally: a
            slow call that only stalwart's Timeout policy (or a breaker's slow-call
            threshold) can cut short.
        malformed_rate: probability a fresh call fails with
            :class:`~stalwart.errors.MalformedResponseError`.
        outages: ``[start, end)`` windows, in seconds of clock time since the model
            was created, during which every call fails with a 503.
    """

    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    rate_limit_burst: int = 3
    rate_limit_retry_after: float | None = 1.0
    stall_rate: float = 0.0
    stall_seconds: float = 30.0
    stall_outcome: Literal["timeout", "reply"] = "timeout"
    malformed_rate: float = 0.0
    outages: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        rates = (self.error_rate, self.rate_limit_rate, self.stall_rate, self.malformed_rate)
        if any(not 0.0 <= r <= 1.0 for r in rates):
            raise ConfigurationError("fault rates must be within [0, 1]")
        if sum(rates) > 1.0 + 1e-9:
            raise ConfigurationError(f"fault rates sum to {sum(rates):g} > 1")
        if self.rate_limit_burst < 1:
            raise ConfigurationError("rate_limit_burst must be >= 1")
        if self.rate_limit_retry_after is not None and self.rate_limit_retry_after < 0:
            raise ConfigurationError("rate_limit_retry_after must be >= 0")
        if self.stall_seconds < 0:
            raise ConfigurationError("stall_seconds must be >= 0")
        for start, end in self.outages:
            if not start < end:
                raise ConfigurationError(f"outage window [{start}, {end}) is empty")


@final
@dataclass(frozen=True, slots=True)
class SimStatistics:
    """A snapshot of what the simulator has done."""

    calls: int
    replies: int
    faults: Mapping[str, int] = field(default_factory=dict)

    @property
    def faults_total(self) -> int:
        """All injected faults together."""
        return sum(self.faults.values())


Script: TypeAlias = Sequence[ScriptedReply | ModelError] | Callable[[ModelRequest], ScriptedReply]


@final
class SimulatedModel:
    """A deterministic, offline :class:`~stalwart.models.Model` with fault injection.

    Args:
        name: any label; ``sim:NAME`` resolves to ``SimulatedModel(NAME)``.
        seed: seeds the fault and latency draws and the default replies.
        clock: where latency and stalls sleep, and what outage windows read.
        latency: how long successful calls take (default: instant).
        faults: what goes wrong (default: nothing).
        script: replies in order (a list, exhausted -> ``ConfigurationError``), or a
            function of the request; without one, the default reply (the module
            docstring): tool calls with arguments from their schemas, then a value
            fitting the output schema, or a short deterministic text.
        call_tools: which of the offered tools the default reply calls: ``"all"``
            (default), or the names of some (an empty list: none). Names the request
            does not offer are skipped, so one model can serve several agents.
    """

    provider = "sim"

    def __init__(
        self,
        name: str = "default",
        *,
        seed: int = 0,
        clock: Clock | None = None,
        latency: Latency | None = None,
        faults: SimFaults | None = None,
        script: Script | None = None,
        call_tools: Literal["all"] | Sequence[str] = "all",
    ) -> None:
        if isinstance(call_tools, str) and call_tools != "all":
            raise ConfigurationError(
                f"sim:{name}: call_tools must be 'all' or a list of tool names, "
                f"not {call_tools!r}")
        self.name = name
        self.call_tools: Literal["all"] | tuple[str, ...] = (
            "all" if call_tools == "all" else tuple(call_tools))
        self.seed = seed
        self._clock = clock or SystemClock()
        self._t0 = self._clock.monotonic()
        self._rng = random.Random(seed)
        self._latency = latency or Latency.fixed(0.0)
        self._faults = faults or SimFaults()
        self._script = script
        self._script_pos = 0
        self._burst_left = 0
        self._calls = 0
        self._replies = 0
        self._fault_counts: Counter[str] = Counter()
        self._requests: list[ModelRequest] = []

    def __repr__(self) -> str:
        return f"SimulatedModel({self.name!r}, seed={self.seed})"

    @classmethod
    def from_spec(cls, spec: str, **kwargs: Any) -> SimulatedModel:
        """The model for the part of a ``sim:`` spec after the colon:
        ``NAME[?tools=a,b][&seed=N]``. ``tools=`` with nothing after it calls no tools.

        Raises:
            ConfigurationError: an unknown or malformed query parameter.
        """
        name, _, query = spec.partition("?")
        params = parse_qs(query, keep_blank_values=True, strict_parsing=False)
        unknown = sorted(set(params) - {"tools", "seed"})
        if unknown:
            raise ConfigurationError(f"sim:{spec}: unknown option(s) {', '.join(unknown)} "
                                     "(known: tools, seed)")
        if "tools" in params:
            names = [n.strip() for v in params["tools"] for n in v.split(",") if n.strip()]
            kwargs.setdefault("call_tools", names)
        if "seed" in params:
            try:
                kwargs.setdefault("seed", int(params["seed"][-1]))
            except ValueError:
                raise ConfigurationError(
                    f"sim:{spec}: seed must be an integer") from None
        return cls(name or "default", **kwargs)

    @property
    def requests(self) -> tuple[ModelRequest, ...]:
        """Every request received, in order (faulted ones included)."""
        return tuple(self._requests)

    def statistics(self) -> SimStatistics:
        """Calls, successful replies and injected faults by kind, as a frozen snapshot."""
        return SimStatistics(calls=self._calls, replies=self._replies,
                             faults=dict(self._fault_counts))

    async def aclose(self) -> None:
        """Nothing to release; present so every adapter can be closed the same way."""

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Reply, or fail as configured (see the module docstring for the order)."""
        self._calls += 1
        self._requests.append(request)
        f = self._faults
        elapsed = self._clock.monotonic() - self._t0
        if any(start <= elapsed < end for start, end in f.outages):
            raise self._fault("outage", ProviderOverloadedError, "simulated outage (503)",
                              status_code=503)
        if self._burst_left > 0:
            self._burst_left -= 1
            raise self._rate_limited()
        u = self._rng.random()
        delay = self._latency.sample(self._rng)
        if u < f.error_rate:
            raise self._fault("server_error", ProviderOverloadedError,
                              "simulated server error (500)", status_code=500)
        u -= f.error_rate
        if u < f.rate_limit_rate:
            self._burst_left = f.rate_limit_burst - 1
            raise self._rate_limited()
        u -= f.rate_limit_rate
        if u < f.stall_rate:
            self._fault_counts["stall"] += 1
            await self._clock.sleep(f.stall_seconds)
            if f.stall_outcome == "timeout":
                raise ModelTimeoutError(
                    f"sim:{self.name}: simulated stall of {f.stall_seconds:g}s",
                    provider=self.provider, model=self.name)
        else:
            u -= f.stall_rate
            if u < f.malformed_rate:
                raise self._fault("malformed", MalformedResponseError,
                                  "simulated malformed response body")
            await self._clock.sleep(delay)
        response = self._reply(request)
        self._replies += 1
        return response

    # -- faults -------------------------------------------------------------------------

    def _rate_limited(self) -> ModelError:
        return self._fault("rate_limited", RateLimitedError, "simulated rate limit (429)",
                           status_code=429, retry_after=self._faults.rate_limit_retry_after)

    def _fault(self, kind: FaultKind, cls: type[ProviderOverloadedError]
               | type[RateLimitedError] | type[MalformedResponseError], message: str, *,
               status_code: int | None = None, retry_after: float | None = None,
               ) -> ModelError:
        self._fault_counts[kind] += 1
        return cls(f"sim:{self.name}: {message}", provider=self.provider, model=self.name,
                   status_code=status_code, retry_after=retry_after)

    # -- replies ------------------------------------------------------------------------

    def _reply(self, request: ModelRequest) -> ModelResponse:
        script = self._script
        if script is None:
            item: ScriptedReply = self._default_reply(request)
        elif callable(script):
            item = script(request)
        else:
            if self._script_pos >= len(script):
                raise ConfigurationError(
                    f"sim:{self.name}: the script's {len(script)} replies are used up")
            entry = script[self._script_pos]
            self._script_pos += 1
            if isinstance(entry, ModelError):
                raise entry
            item = entry
        return as_response(item, request, model=self.name, provider=self.provider,
                           raw_id=f"sim-{self.seed}-{self._calls}")

    def _default_reply(self, request: ModelRequest) -> ScriptedReply:
        """Tool calls on a conversation's first turn, then a typed value or text."""
        turn = sum(1 for m in request.messages if m.role == "assistant")
        tools = self._tools_to_call(request)
        if tools and turn == 0:
            return [ToolCallRequest.create(f"call_{i + 1}", spec.name, sample_json(
                        spec.parameters, self._draws(f"tool:{spec.name}", turn)))
                    for i, spec in enumerate(tools)]
        if request.output_schema is not None:
            value = sample_json(request.output_schema, self._draws("output", turn))
            return json.dumps(value, ensure_ascii=False)
        return self._default_text(request)

    def _tools_to_call(self, request: ModelRequest) -> list[ToolSpec]:
        if request.options.tool_choice == "none":
            return []
        if self.call_tools == "all":
            return list(request.tools)
        offered = {t.name: t for t in request.tools}
        return [offered[n] for n in self.call_tools if n in offered]

    def _draws(self, what: str, turn: int) -> random.Random:
        """A generator of its own per (seed, name, what, turn): the fault draws stay
        as they were."""
        return random.Random(f"{self.seed}\0{self.name}\0{what}\0{turn}")

    def _default_text(self, request: ModelRequest) -> str:
        last = next((m.content for m in reversed(request.messages)
                     if m.role == "user" and m.content), "")
        digest = hashlib.sha256(f"{self.seed}\0{self.name}\0{last}".encode()).digest()
        words = [_WORDS[b % len(_WORDS)] for b in digest[:4]]
        topic = " ".join(last.split()[:8])
        text = f"[sim:{self.name}] On {topic!r}: {' '.join(words)}."
        results = {m.name or m.tool_call_id or "?": m.content
                   for m in request.messages if m.role == "tool"}
        if results:
            text += " Tool results: " + json.dumps(results, ensure_ascii=False)
        return text


_WORDS = ("resilient", "durable", "bounded", "idempotent", "observable", "replayed",
          "journaled", "isolated", "backpressured", "deterministic", "consistent",
          "recoverable", "throttled", "fenced", "leased", "quorate")
