"""The policy stack inside durable runs: journaled retries, dead letters, fallback,
breakers and bulkheads."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import stalwart as sw
from stalwart.models import Latency, SimFaults
from stalwart.store import EventKind

FAST = sw.Retry(max_attempts=4, initial=0.001, max_backoff=0.002)


async def _until_status(app: sw.Runtime, run_id: str, status: sw.RunStatus) -> None:
    for _ in range(2000):
        rec = await app.store.get_run(run_id)
        if rec is not None and rec.status == status:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"run {run_id} never reached {status}")


async def test_retries_are_journaled_with_one_key_and_rising_attempts(tmp_path: Path) -> None:
    """Each failed attempt is journaled; the key is stable, the attempt number rises."""
    seen: list[tuple[str, int]] = []

    async def flaky(call: sw.ToolCall) -> str:
        seen.append((call.idempotency_key, call.attempt))
        if call.attempt < 3:
            raise ConnectionError("reset by peer")
        return "ok"

    tool = sw.Tool(flaky, policy=sw.Policy(retry=FAST))
    app = sw.Runtime(tmp_path / "j.db")

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        return await ctx.tool(tool)

    async with app:
        h = await app.start(wf)
        assert await h.result() == "ok"
        events = await app.events(h.run_id)
    key = f"{h.run_id}:1"
    assert seen == [(key, 1), (key, 2), (key, 3)]
    failed = [json.loads(e.payload or "{}") for e in events if e.kind == EventKind.ATTEMPT_FAILED]
    assert [f["attempt"] for f in failed] == [1, 2]
    assert all(f["next"] == "retry" and f["error"]["type"] == "builtins.ConnectionError"
               for f in failed)
    assert app.policy_counts["retried"] == 2


async def test_non_retryable_errors_are_never_retried(tmp_path: Path) -> None:
    """A ValueError (not transient) fails at once: one attempt, run failed."""
    attempts: list[int] = []

    def strict(call: sw.ToolCall) -> str:
        attempts.append(call.attempt)
        raise ValueError("bad input")

    tool = sw.Tool(strict, policy=sw.Policy(retry=FAST))
    app = sw.Runtime(tmp_path / "j.db")

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        return await ctx.tool(tool)

    async with app:
        h = await app.start(wf)
        with pytest.raises(sw.RunFailedError):
            await h.result()
        assert (await app.get_run(h.run_id)).status == sw.RunStatus.FAILED
    assert attempts == [1]


async def test_exhausted_policies_dead_letter_the_run_and_redrive_resumes_it(
        tmp_path: Path) -> None:
    """A run that exhausts its retries is dead-lettered; redrive runs that step afresh."""
    healthy = asyncio.Event()
    attempts: list[int] = []
    effects: list[str] = []

    def before() -> str:
        effects.append("before")
        return "b"

    async def service(call: sw.ToolCall) -> str:
        attempts.append(call.attempt)
        if not healthy.is_set():
            raise TimeoutError("service down")
        return "served"

    tool = sw.Tool(service, policy=sw.Policy(retry=sw.Retry(max_attempts=3, initial=0.001,
                                                             max_backoff=0.002)))
    app = sw.Runtime(tmp_path / "j.db")

    @app.workflow
    async def wf(ctx: sw.Context) -> list[str]:
        return [await ctx.step(before), await ctx.tool(tool)]

    async with app:
        h = await app.start(wf)
        with pytest.raises(sw.RunFailedError) as info:
            await h.result()
        rec = await app.get_run(h.run_id)
        assert rec.status == sw.RunStatus.DEAD_LETTERED
        assert "RetryExhaustedError" in (rec.error or "")
        assert isinstance(info.value.__cause__, sw.RetryExhaustedError)
        assert attempts == [1, 2, 3]
        healthy.set()
        await app.redrive(h.run_id)
        assert await h.result() == ["b", "served"]
        with pytest.raises(sw.ConfigurationError):
            await app.redrive(h.run_id)
    assert attempts == [1, 2, 3, 1]
    assert effects == ["before"]


async def test_a_long_retry_after_parks_the_run_until_then_in_a_new_runtime(
        tmp_path: Path) -> None:
    """A one-hour Retry-After parks the run (no process holds it); a runtime opened later
    does not claim it before that hour is over, and the attempt count continues. (A crash
    during a short in-memory backoff: tests/engine/test_crash.py.)"""
    clock = sw.FakeClock(start=5_000.0)
    calls: list[tuple[int, float]] = []

    async def quota(call: sw.ToolCall) -> str:
        calls.append((call.attempt, clock.now()))
        if call.attempt == 1:
            raise sw.RateLimitedError("slow down", retry_after=3600.0)
        return "ok"

    tool = sw.Tool(quota, policy=sw.Policy(retry=sw.Retry(max_attempts=3, initial=1.0)))

    def define(app: sw.Runtime) -> sw.Workflow:  # type: ignore[type-arg]
        @app.workflow(name="quota")
        async def wf(ctx: sw.Context) -> str:
            return await ctx.tool(tool)

        return wf

    app1 = sw.Runtime(tmp_path / "j.db", clock=clock)
    wf = define(app1)
    async with app1:
        h = await app1.start(wf)
        await _until_status(app1, h.run_id, sw.RunStatus.SLEEPING)
        wake_at = (await app1.get_run(h.run_id)).wake_at
    assert wake_at is not None and wake_at >= 5_000.0 + 3600
    app2 = sw.Runtime(tmp_path / "j.db", clock=clock)
    define(app2)
    async with app2:
        await clock.advance(wake_at - clock.now() - 1)
        assert await app2.resume(h.run_id) == []  # a claim a second early finds it not due
        assert len(calls) == 1
        await clock.advance(1)
        assert await app2.handle(h.run_id).result() == "ok"
    assert [c[0] for c in calls] == [1, 2]
    assert calls[1][1] >= calls[0][1] + 3600


async def test_open_breaker_sends_calls_to_the_fallback_model(tmp_path: Path) -> None:
    """Primary in outage: its breaker opens, later calls skip it, the fallback answers."""
    primary = sw.SimulatedModel("primary", faults=SimFaults(outages=((0.0, 1e9),)))
    backup = sw.SimulatedModel("backup")
    policy = sw.Policy(
        retry=sw.Retry(max_attempts=2, initial=0.001, max_backoff=0.002),
        breaker=sw.CircuitBreakerConfig(window_size=4, minimum_calls=4, wait_in_open=600),
        fallback=("sim:backup",))
    app = sw.Runtime(tmp_path / "j.db", models={"sim:primary": primary, "sim:backup": backup})
    agent = sw.Agent("a", "sim:primary", policy=policy)

    @app.workflow
    async def wf(ctx: sw.Context, n: int) -> list[str]:
        out = []
        for i in range(n):
            res = await agent.run_result(ctx, f"q{i}")
            out.extend(res.models)
        return out

    async with app:
        handle = await app.start(wf, 10)
        models = await handle.result()
        rec = await app.get_run(handle.run_id)
        events = await app.events(handle.run_id)
    assert models == ["sim:backup"] * 10
    assert primary.statistics().calls == 4  # two calls x two attempts, then open
    assert app.breakers.get("sim:primary").statistics().state == "open"
    assert app.policy_counts["breaker_open"] == 1
    assert app.policy_counts["breaker_rejected"] == 8

    # Read back, each model is charged with its own attempts: the primary's failures
    # are its own (not the backup's), and stats sees its breaker reject calls.
    from stalwart.cli._stats import aggregate

    usage = sw.usage_report(events)
    assert (usage.total.calls, usage.total.failed) == (10, 0)
    down, up = usage.by_model["sim:primary"], usage.by_model["sim:backup"]
    assert (down.calls, down.failed, up.calls, up.failed) == (10, 10, 10, 0)
    assert down.errors == {"ProviderOverloadedError": 4, "CircuitOpenError": 8}
    assert up.errors == {} and up.tokens == usage.total.tokens > 0
    rows = aggregate([(rec, events)], sw.PriceTable())
    assert rows["sim:primary"].breaker.startswith("open@")
    assert rows["sim:backup"].breaker == "n/a"
    # Latency of the attempts sent: the 8 a breaker rejected took none.
    assert len(rows["sim:primary"].latencies) == 4 and len(rows["sim:backup"].latencies) == 10


async def test_fallback_chain_exhausted_dead_letters_with_the_chain(tmp_path: Path) -> None:
    """When every model fails the run is dead-lettered with FallbackExhaustedError."""
    down = SimFaults(outages=((0.0, 1e9),))
    app = sw.Runtime(tmp_path / "j.db", models={
        "sim:a": sw.SimulatedModel("a", faults=down), "sim:b": sw.SimulatedModel("b", faults=down)})
    agent = sw.Agent("x", "sim:a", policy=sw.Policy(retry=FAST, fallback=("sim:b",)))

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        return await agent.run(ctx, "q")

    async with app:
        h = await app.start(wf)
        with pytest.raises(sw.RunFailedError) as info:
            await h.result()
        assert (await app.get_run(h.run_id)).status == sw.RunStatus.DEAD_LETTERED
    cause = info.value.__cause__
    assert isinstance(cause, sw.FallbackExhaustedError)
    assert cause.keys == ("sim:a", "sim:b")


async def test_bulkhead_pool_caps_concurrent_model_calls(tmp_path: Path) -> None:
    """A pool's bulkhead never lets more than max_concurrent calls run at once."""
    model = sw.SimulatedModel("slow", latency=Latency.fixed(0.02))
    policy = sw.Policy(bulkhead=sw.BulkheadConfig(max_concurrent=2, max_queue=50))
    app = sw.Runtime(tmp_path / "j.db", models={"sim:slow": model})
    agent = sw.Agent("researcher", "sim:slow", policy=policy, pool="research")

    @app.workflow
    async def wf(ctx: sw.Context) -> int:
        outs = await ctx.gather(*(agent.run(ctx, f"angle {i}") for i in range(8)))
        return len(outs)

    async with app:
        assert await app.run(wf) == 8
    stats = app.bulkheads.get("research").statistics()
    assert stats.max_seen == 2 and stats.rejected == 0


async def test_a_tools_bulkhead_caps_its_concurrent_calls(tmp_path: Path) -> None:
    """A bulkhead on a tool's policy holds its calls (it was once silently ignored)."""
    running: list[int] = []
    most = 0

    async def slow(i: int) -> int:
        nonlocal most
        running.append(i)
        most = max(most, len(running))
        await asyncio.sleep(0.02)
        running.remove(i)
        return i

    tool = sw.Tool(slow, policy=sw.Policy(
        bulkhead=sw.BulkheadConfig(max_concurrent=2, max_queue=50)))
    app = sw.Runtime(tmp_path / "j.db")

    @app.workflow
    async def wf(ctx: sw.Context) -> list[int]:
        return await ctx.gather(*(ctx.tool(tool, i=i) for i in range(8)))

    async with app:
        assert await app.run(wf) == list(range(8))
    assert most == 2
    stats = app.bulkheads.get("tool:slow").statistics()
    assert stats.max_seen == 2 and stats.rejected == 0


async def test_nearest_policy_level_wins(tmp_path: Path) -> None:
    """Call level over tool level over runtime level, field by field."""
    attempts: list[int] = []

    def fail(call: sw.ToolCall) -> str:
        attempts.append(call.attempt)
        raise ConnectionError("x")

    tool = sw.Tool(fail, policy=sw.Policy(retry=FAST))
    app = sw.Runtime(tmp_path / "j.db", policy=sw.Policy(retry=sw.Retry(max_attempts=9)))

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        try:
            await ctx.tool(tool, policy=sw.Policy(retry=None))
        except ConnectionError:
            return "raised as it was"
        except sw.RetryExhaustedError:
            return "wrapped"
        return "?"

    async with app:
        assert await app.run(wf) == "raised as it was"  # no retry policy: one attempt
    assert attempts == [1]
    assert app.effective_policy(tool.policy).retry == FAST
    assert app.effective_policy(None).retry == sw.Retry(max_attempts=9)


class _TickingClock(sw.FakeClock):
    """Virtual time in which every reading of the wall clock is 1 ms later than the
    one before: what a busy machine does to two readings in a row."""

    def now(self) -> float:
        self._offset += 0.001
        return super().now()


async def test_a_retry_is_due_after_the_failure_it_follows(tmp_path: Path) -> None:
    """A backoff shorter than the time between two readings of the clock: the journaled
    retry is still due at or after its failure (one reading serves both)."""
    async def flaky(call: sw.ToolCall) -> str:
        if call.attempt < 4:
            raise ConnectionError("reset by peer")
        return "ok"

    tool = sw.Tool(flaky, policy=sw.Policy(retry=sw.Retry(
        max_attempts=4, initial=0.0001, max_backoff=0.0001, jitter="none")))
    app = sw.Runtime(tmp_path / "j.db", clock=_TickingClock(autojump=True))

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        return await ctx.tool(tool)

    async with app:
        handle = await app.start(wf)
        assert await handle.result() == "ok"
        events = await app.events(handle.run_id)
    failed = [json.loads(e.payload or "{}") for e in events
              if e.kind == EventKind.ATTEMPT_FAILED]
    assert len(failed) == 3
    for attempt in failed:
        # (at 1.7e9 s a float's step is ~2.4e-7 s)
        assert attempt["retry_at"] - attempt["at"] == pytest.approx(0.0001, abs=1e-6)


@pytest.mark.parametrize(("fields", "message"), [
    ({"timeout": "0.5"}, "Policy.timeout must be a Timeout"),  # once silently not applied
    ({"timeout": -1.0}, "positive seconds"),
    ({"retry": "x"}, "Policy.retry must be a Retry"),
    ({"breaker": 5}, "Policy.breaker must be a CircuitBreakerConfig"),
    ({"bulkhead": 2}, "Policy.bulkhead must be a BulkheadConfig"),
    ({"rate_limit": 60}, "Policy.rate_limit must be a RateLimit"),
    ({"fallback": ("sim:a", 3)}, "Policy.fallback lists models"),
    ({"fallback": ("backup",)}, "Policy.fallback lists models"),
])
def test_a_policy_of_the_wrong_types_is_refused_where_it_is_made(
        fields: dict[str, object], message: str) -> None:
    with pytest.raises(sw.ConfigurationError, match=message):
        sw.Policy(**fields)  # type: ignore[arg-type]


def test_a_policy_takes_one_fallback_model_and_lists_and_seconds() -> None:
    assert sw.Policy(fallback="sim:backup").fallback == ("sim:backup",)  # type: ignore[arg-type]
    assert sw.Policy(fallback=["sim:a", "sim:b"]).fallback == ("sim:a", "sim:b")  # type: ignore[arg-type]
    model = sw.SimulatedModel("x")
    assert sw.Policy(fallback=(model,)).fallback == (model,)
    assert sw.Policy(timeout=2).timeout == sw.Timeout(per_attempt=2.0)
