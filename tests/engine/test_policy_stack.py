"""The policy stack counts the right things, inside durable runs (issue 13, item 4).

Each test is one of the issue's repro scenarios, in virtual time on the in-memory store
(and on SQLite with two runtimes where a crash is the point).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import stalwart as sw
from stalwart.models import SimFaults
from stalwart.store import EventKind
from stalwart.testing import MemoryStore


def failed_attempts(events: list[sw.store.Event]) -> list[dict[str, object]]:
    return [json.loads(e.payload or "{}") for e in events
            if e.kind == EventKind.ATTEMPT_FAILED]


async def test_ten_runs_each_answered_one_429_all_complete_under_the_default_policy(
) -> None:
    """Ten concurrent runs, each answered one 429 with Retry-After: 8: all ten complete
    (the 429s never reach the breaker), and no retry comes before its Retry-After."""
    clock = sw.FakeClock(start=0.0, autojump=True)
    calls: list[tuple[str, int, float]] = []

    async def quota(call: sw.ToolCall) -> str:
        calls.append((call.run_id, call.attempt, clock.monotonic()))
        if call.attempt == 1:
            raise sw.RateLimitedError("429: slow down", retry_after=8.0)
        return "ok"

    tool = sw.Tool(quota)  # the default policy: 3 attempts, a breaker per dependency
    app = sw.Runtime(MemoryStore(), clock=clock)

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        return await ctx.tool(tool)

    async with app:
        handles = [await app.start(wf) for _ in range(10)]
        outcomes = await asyncio.gather(*(h.result() for h in handles),
                                        return_exceptions=True)
    assert outcomes == ["ok"] * 10
    assert app.breakers.get("tool:quota").state is sw.policies.BreakerState.CLOSED
    assert app.policy_counts["breaker_open"] == 0
    firsts = {run: at for run, attempt, at in calls if attempt == 1}
    seconds = {run: at for run, attempt, at in calls if attempt == 2}
    assert all(seconds[run] >= firsts[run] + 8.0 for run in firsts)


@pytest.mark.parametrize("failure", ["hang", "connection"])
async def test_calls_hanging_past_their_timeout_open_the_breaker(failure: str) -> None:
    """Four calls hanging past Policy(timeout=1.0) open the breaker, as four dropped
    connections do: a timeout is the dependency's failure. The fifth is not made."""
    clock = sw.FakeClock(start=0.0, autojump=True)
    made: list[float] = []

    async def stuck() -> str:
        made.append(clock.monotonic())
        if failure == "hang":
            await clock.sleep(3600.0)
        raise ConnectionError("connection reset")

    tool = sw.Tool(stuck, policy=sw.Policy(timeout=1.0, retry=None, breaker=(
        sw.CircuitBreakerConfig(window_size=4, minimum_calls=4, wait_in_open=600.0))))
    app = sw.Runtime(MemoryStore(), clock=clock)

    @app.workflow
    async def wf(ctx: sw.Context) -> list[str]:
        out = []
        for _ in range(5):
            try:
                await ctx.tool(tool)
            except Exception as exc:  # the test records what each call raised
                out.append(type(exc).__name__)
        return out

    async with app:
        raised = await app.run(wf)
    first = "RetryExhaustedError" if failure == "hang" else "ConnectionError"
    assert raised == [first] * 4 + ["RetryExhaustedError"]
    assert len(made) == 4
    assert app.breakers.get("tool:stuck").state is sw.policies.BreakerState.OPEN


async def test_a_rate_limit_in_front_of_an_instant_dependency_never_opens_its_breaker(
) -> None:
    """RateLimit(6/min, burst=1) before a tool that answers at once: twelve concurrent
    calls, the last after 110 s of waiting; a breaker slow after 5 s stays closed, since
    it times the call itself, not the wait in the limiter."""
    clock = sw.FakeClock(start=0.0, autojump=True)
    starts: list[float] = []

    def instant(i: int) -> int:
        starts.append(clock.monotonic())
        return i

    tool = sw.Tool(instant, policy=sw.Policy(
        rate_limit=sw.RateLimit(requests_per_minute=6, burst=1),
        breaker=sw.CircuitBreakerConfig(window_size=10, minimum_calls=5,
                                        slow_call_duration=5.0, slow_call_rate_threshold=50)))
    app = sw.Runtime(MemoryStore(), clock=clock)

    @app.workflow
    async def wf(ctx: sw.Context) -> list[int]:
        return await ctx.gather(*(ctx.tool(tool, i=i) for i in range(12)))

    async with app:
        assert await app.run(wf) == list(range(12))
    assert starts == [10.0 * i for i in range(12)]
    stats = app.breakers.get("tool:instant").statistics()
    assert (stats.state, stats.slow_calls) == (sw.policies.BreakerState.CLOSED, 0)


async def test_the_overall_timeout_stops_retrying_at_its_deadline() -> None:
    """Timeout(overall=2.0) with ten attempts 0.5 s apart: no attempt starts at or after
    2 s (the fourth is the last), and the run is dead-lettered at 1.5 s, when the next
    backoff would reach the deadline."""
    clock = sw.FakeClock(start=0.0, autojump=True)
    starts: list[float] = []

    def down() -> str:
        starts.append(clock.monotonic())
        raise ConnectionError("refused")

    tool = sw.Tool(down, policy=sw.Policy(
        timeout=sw.Timeout(overall=2.0),
        retry=sw.Retry(max_attempts=10, initial=0.5, multiplier=1.0, jitter="none")))
    app = sw.Runtime(MemoryStore(), clock=clock)

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        return await ctx.tool(tool)

    async with app:
        handle = await app.start(wf)
        with pytest.raises(sw.RunFailedError) as info:
            await handle.result()
        rec = await app.get_run(handle.run_id)
    assert starts == [0.0, 0.5, 1.0, 1.5]
    assert rec.status == sw.RunStatus.DEAD_LETTERED
    cause = info.value.__cause__
    assert isinstance(cause, sw.RetryExhaustedError)
    assert cause.attempts == 4 and "deadline" in cause.reason


async def test_the_overall_timeout_cuts_an_attempt_in_flight() -> None:
    """The second attempt hangs: it is cut at exactly 2 s, as a timeout of that attempt
    (journaled), and nothing is retried after the deadline."""
    clock = sw.FakeClock(start=0.0, autojump=True)
    starts: list[float] = []

    async def flaky() -> str:
        starts.append(clock.monotonic())
        if len(starts) == 1:
            raise ConnectionError("refused")
        await clock.sleep(3600.0)
        return "late"

    tool = sw.Tool(flaky, policy=sw.Policy(
        timeout=sw.Timeout(overall=2.0, per_attempt=60.0),
        retry=sw.Retry(max_attempts=10, initial=0.5, jitter="none")))
    app = sw.Runtime(MemoryStore(), clock=clock)

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        return await ctx.tool(tool)

    async with app:
        handle = await app.start(wf)
        with pytest.raises(sw.RunFailedError):
            await handle.result()
        events = await app.events(handle.run_id)
        ended = (await app.get_run(handle.run_id)).updated_at
    assert starts == [0.0, 0.5]
    attempts = failed_attempts(events)
    assert [a["error"]["type"] for a in attempts] == [  # type: ignore[index]
        "builtins.ConnectionError", "stalwart.errors.CallTimeoutError"]
    assert attempts[1]["at"] == pytest.approx(clock.now() - clock.monotonic() + 2.0)
    assert ended == pytest.approx(clock.now() - clock.monotonic() + 2.0)


async def test_the_overall_timeout_counts_from_the_calls_first_start_across_a_crash(
        tmp_path: Path) -> None:
    """Timeout(overall=30): attempt 1 gets Retry-After 20 and the run parks; another
    runtime resumes it at t=20, and attempt 2 gets Retry-After 20 again: 20 s more would
    pass the deadline the journal still knows (t=30), so it gives up there."""
    clock = sw.FakeClock(start=5_000.0)
    calls: list[float] = []

    async def quota() -> str:
        calls.append(clock.now())
        raise sw.RateLimitedError("slow down", retry_after=20.0)

    tool = sw.Tool(quota, policy=sw.Policy(timeout=sw.Timeout(overall=30.0),
                                           retry=sw.Retry(max_attempts=5, initial=1.0)))

    def define(app: sw.Runtime) -> sw.Workflow:  # type: ignore[type-arg]
        @app.workflow(name="quota")
        async def wf(ctx: sw.Context) -> str:
            return await ctx.tool(tool)

        return wf

    app1 = sw.Runtime(tmp_path / "j.db", clock=clock)
    wf = define(app1)
    async with app1:
        handle = await app1.start(wf)
        for _ in range(400):
            rec = await app1.get_run(handle.run_id)
            if rec is not None and rec.status == sw.RunStatus.SLEEPING:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the run never parked")
    app2 = sw.Runtime(tmp_path / "j.db", clock=clock)
    define(app2)
    async with app2:
        await clock.advance(20.0)
        with pytest.raises(sw.RunFailedError):
            await app2.handle(handle.run_id).result()
        assert (await app2.get_run(handle.run_id)).status == sw.RunStatus.DEAD_LETTERED
    assert calls == [5_000.0, 5_020.0]


async def test_an_open_breaker_is_waited_out_when_no_fallback_can_answer() -> None:
    """The tool's breaker opens on two failures; the third attempt is rejected and, with
    attempts left and no fallback, waits for the half-open trial instead of failing:
    the fourth attempt, after the open time, is answered."""
    clock = sw.FakeClock(start=0.0, autojump=True)
    starts: list[float] = []

    def recovering() -> str:
        starts.append(clock.monotonic())
        if clock.monotonic() < 10.0:
            raise ConnectionError("refused")
        return "back"

    tool = sw.Tool(recovering, policy=sw.Policy(
        retry=sw.Retry(max_attempts=4, initial=0.5, jitter="none"),
        breaker=sw.CircuitBreakerConfig(window_size=2, minimum_calls=2, wait_in_open=30.0,
                                        permitted_calls_in_half_open=1)))
    app = sw.Runtime(MemoryStore(), clock=clock, park_after=60.0)

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        return await ctx.tool(tool)

    async with app:
        handle = await app.start(wf)
        assert await handle.result() == "back"
        events = await app.events(handle.run_id)
    attempts = failed_attempts(events)
    assert [a["next"] for a in attempts] == ["retry", "retry", "retry"]
    rejected = attempts[2]
    assert rejected["error"]["type"] == "stalwart.errors.CircuitOpenError"  # type: ignore[index]
    # opened at t=0.5; retried at its open time's end plus the backoff (jitter "none": 2 s)
    assert rejected["retry_at"] == pytest.approx(clock.now() - clock.monotonic() + 32.5)
    assert starts == [0.0, 0.5, 32.5]
    assert app.policy_counts["breaker_rejected"] == 1


async def test_an_open_primary_is_waited_out_when_the_fallback_cannot_answer_now() -> None:
    """Primary's breaker opens, the fallback's is open already: the call waits for the
    primary's half-open trial (answered, the primary has recovered) rather than moving on
    to a fallback that would only be rejected."""
    clock = sw.FakeClock(start=0.0, autojump=True)
    primary = sw.SimulatedModel("primary", clock=clock, faults=SimFaults(outages=((0.0, 10.0),)))
    backup = sw.SimulatedModel("backup", clock=clock)
    breaker = sw.CircuitBreakerConfig(window_size=2, minimum_calls=2, wait_in_open=30.0,
                                      permitted_calls_in_half_open=1)
    app = sw.Runtime(MemoryStore(), clock=clock, park_after=120.0,
                     models={"sim:primary": primary, "sim:backup": backup})
    agent = sw.Agent("asker", "sim:primary", policy=sw.Policy(
        retry=sw.Retry(max_attempts=4, initial=0.5, jitter="none"), breaker=breaker,
        fallback=("sim:backup",)))
    backup_breaker = app.breakers.get("sim:backup", breaker)
    for _ in range(2):  # the backup is known to be down
        backup_breaker.acquire()
        backup_breaker.on_error(0.0, sw.ProviderOverloadedError("503"))

    @app.workflow
    async def wf(ctx: sw.Context) -> list[str]:
        return (await agent.run_result(ctx, "q")).models

    async with app:
        assert await app.run(wf) == ["sim:primary"]
    assert backup.statistics().calls == 0
    assert primary.statistics().calls == 3


async def test_an_open_breaker_goes_to_a_fallback_that_can_answer_now() -> None:
    """Primary's breaker open, the fallback's closed: no wait, the fallback answers."""
    clock = sw.FakeClock(start=0.0, autojump=True)
    primary = sw.SimulatedModel("primary", clock=clock, faults=SimFaults(outages=((0.0, 1e9),)))
    backup = sw.SimulatedModel("backup", clock=clock)
    app = sw.Runtime(MemoryStore(), clock=clock,
                     models={"sim:primary": primary, "sim:backup": backup})
    agent = sw.Agent("asker", "sim:primary", policy=sw.Policy(
        retry=sw.Retry(max_attempts=4, initial=0.5, jitter="none"),
        breaker=sw.CircuitBreakerConfig(window_size=2, minimum_calls=2, wait_in_open=30.0),
        fallback=("sim:backup",)))

    @app.workflow
    async def wf(ctx: sw.Context) -> list[str]:
        return (await agent.run_result(ctx, "q")).models

    async with app:
        assert await app.run(wf) == ["sim:backup"]
    assert clock.monotonic() < 30.0
    assert primary.statistics().calls == 2


async def test_an_open_breaker_ends_a_call_exhausted_even_under_a_narrow_retry_on() -> None:
    """A retry_on that names only ConnectionError does not retry CircuitOpenError; the
    call still ends as Retry exhausted (dead-lettered), never raising the rejection as if
    the tool had raised it."""
    clock = sw.FakeClock(start=0.0, autojump=True)

    def down() -> str:
        raise ConnectionError("refused")

    tool = sw.Tool(down, policy=sw.Policy(
        retry=sw.Retry(max_attempts=5, initial=0.5, retry_on=sw.RetryOn.types(ConnectionError)),
        breaker=sw.CircuitBreakerConfig(window_size=2, minimum_calls=2, wait_in_open=30.0)))
    app = sw.Runtime(MemoryStore(), clock=clock)

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        return await ctx.tool(tool)

    async with app:
        handle = await app.start(wf)
        with pytest.raises(sw.RunFailedError) as info:
            await handle.result()
        rec = await app.get_run(handle.run_id)
        events = await app.events(handle.run_id)
    assert rec.status == sw.RunStatus.DEAD_LETTERED
    assert isinstance(info.value.__cause__, sw.RetryExhaustedError)
    assert [a["next"] for a in failed_attempts(events)] == ["retry", "retry", "fail"]
