"""The back-pressure gate: a 429 holds every caller, one probe goes first, in virtual time."""

from __future__ import annotations

import asyncio

import pytest

from stalwart._clock import FakeClock
from stalwart.errors import ThrottledError
from stalwart.policies import Backpressure, BackpressureRegistry
from stalwart.policies._timeout import call_deadline


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_a_flowing_gate_lets_calls_through_without_waiting() -> None:
    """No 429 yet: enter() returns at once, no probe, no waiting."""
    gate = Backpressure(clock=FakeClock(), key="k")
    ticket = await gate.enter()
    assert not ticket.probe
    gate.leave(ticket, answered=True)
    stats = gate.statistics()
    assert (stats.holds, stats.waiting, stats.probing, stats.held_for) == (0, 0, False, 0.0)


async def test_a_429_holds_every_caller_then_one_probe_goes_first() -> None:
    """Held for 8 s: nobody starts before t=8; the first waiter probes, the others wait
    for its answer and then go in arrival order."""
    clock = FakeClock(start=0.0)
    gate = Backpressure(clock=clock, key="k")
    first = await gate.enter()
    gate.leave(first, answered=True, hold=8.0)
    assert gate.statistics().held_for == 8.0
    passed: list[tuple[int, float, bool]] = []
    tickets = {}

    async def caller(i: int) -> None:
        ticket = await gate.enter()
        tickets[i] = ticket
        passed.append((i, clock.monotonic(), ticket.probe))

    tasks = [asyncio.create_task(caller(i)) for i in range(4)]
    await settle()
    await clock.advance(7.999)
    await settle()
    assert passed == []
    await clock.advance(0.001)
    await settle()
    assert passed == [(0, 8.0, True)]  # the probe, alone
    assert gate.statistics().probing
    await clock.advance(3.0)
    await settle()
    assert len(passed) == 1  # still waiting on the probe's answer
    gate.leave(tickets[0], answered=True)
    await asyncio.gather(*tasks)
    assert passed[1:] == [(1, 11.0, False), (2, 11.0, False), (3, 11.0, False)]
    assert not gate.statistics().probing


async def test_a_probe_answered_429_holds_again_and_the_next_waiter_probes() -> None:
    """A refused probe renews the hold; the turn passes to the next in line, not to the
    caller that just probed (it queues behind the others)."""
    clock = FakeClock(start=0.0)
    gate = Backpressure(clock=clock, key="k")
    gate.leave(await gate.enter(), answered=True, hold=1.0)
    order: list[tuple[str, float, bool]] = []
    tickets: dict[str, object] = {}

    async def caller(name: str) -> None:
        ticket = await gate.enter()
        tickets[name] = ticket
        order.append((name, clock.monotonic(), ticket.probe))

    a, b = asyncio.create_task(caller("a")), asyncio.create_task(caller("b"))
    await settle()
    await clock.advance(1.0)
    await settle()
    assert order == [("a", 1.0, True)]
    gate.leave(tickets["a"], answered=True, hold=1.0)  # 429 again
    again = asyncio.create_task(caller("a-again"))
    await settle()
    await clock.advance(1.0)
    await settle()
    assert order[1] == ("b", 2.0, True)
    gate.leave(tickets["b"], answered=True)
    await asyncio.gather(a, b, again)
    assert order[2] == ("a-again", 2.0, False)
    assert gate.statistics().holds == 2


async def test_a_probe_that_was_never_made_passes_its_turn_on() -> None:
    """A probe stopped before the call (our own limit, cancelled) hands the probe to the
    next waiter instead of holding the gate shut."""
    clock = FakeClock(start=0.0)
    gate = Backpressure(clock=clock, key="k")
    gate.leave(await gate.enter(), answered=True, hold=1.0)
    got: list[bool] = []

    async def caller() -> None:
        ticket = await gate.enter()
        got.append(ticket.probe)
        gate.leave(ticket, answered=False)

    await clock.advance(1.0)
    await asyncio.gather(*(caller() for _ in range(3)))
    assert got == [True, True, True]
    assert gate.statistics().probing is False


async def test_a_waiter_cancelled_as_the_probe_reaches_it_passes_it_on() -> None:
    """The probe's turn lands on a caller being cancelled: the next waiter gets it."""
    clock = FakeClock(start=0.0)
    gate = Backpressure(clock=clock, key="k")
    gate.leave(await gate.enter(), answered=True, hold=1.0)
    doomed = asyncio.create_task(gate.enter())
    heir = asyncio.create_task(gate.enter())
    await settle()
    clock.advance_sync(1.0)
    await asyncio.sleep(0)  # the timer hands the probe to `doomed`...
    doomed.cancel()  # ...which is cancelled before it runs
    await settle()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert (await heir).probe


async def test_a_hold_longer_than_max_wait_is_refused_at_once() -> None:
    """The hold left is known: a caller who may wait 2 s is throttled at once (our own
    limit, retryable, with the hold left as retry_after)."""
    clock = FakeClock(start=0.0)
    gate = Backpressure(clock=clock, key="k")
    gate.leave(await gate.enter(), answered=True, hold=8.0)
    with pytest.raises(ThrottledError) as caught:
        await gate.enter(max_wait=2.0)
    assert caught.value.retryable and caught.value.retry_after == 8.0
    assert gate.statistics().throttled == 1


async def test_a_hold_past_the_deadline_is_refused_and_a_probe_wait_ends_at_it() -> None:
    """Inside a 5 s deadline: a hold of 8 s is refused at once; waiting on a probe that
    never answers ends at the deadline with ThrottledError, not a hang."""
    clock = FakeClock(start=0.0, autojump=True)
    gate = Backpressure(clock=clock, key="k")
    gate.leave(await gate.enter(), answered=True, hold=8.0)
    with pytest.raises(ThrottledError), call_deadline(5.0, clock=clock):
        await gate.enter()
    assert clock.monotonic() == 0.0
    await clock.sleep(8.0)
    probe = await gate.enter()
    assert probe.probe
    with pytest.raises(ThrottledError, match="deadline came"), call_deadline(5.0, clock=clock):
        await gate.enter()
    assert clock.monotonic() == 13.0
    gate.leave(probe, answered=True)
    assert not (await gate.enter()).probe


async def test_a_429_without_a_wait_holds_for_the_default() -> None:
    """hold_for(None) is the default hold (1 s); a stated wait is kept as it is."""
    gate = Backpressure(clock=FakeClock(), key="k", default_hold=1.5)
    assert gate.hold_for(None) == 1.5
    assert gate.hold_for(-3.0) == 1.5
    assert gate.hold_for(8.0) == 8.0


async def test_the_registry_makes_one_gate_per_key_and_reports_holds() -> None:
    """get() is stable per key; listeners hear every hold, of gates old and new."""
    registry = BackpressureRegistry(clock=FakeClock())
    heard: list[tuple[str, float]] = []
    early = registry.get("a")
    registry.add_listener(lambda key, seconds: heard.append((key, seconds)))
    assert registry.get("a") is early
    early.leave(await early.enter(), answered=True, hold=2.0)
    late = registry.get("b")
    late.leave(await late.enter(), answered=True, hold=3.0)
    assert heard == [("a", 2.0), ("b", 3.0)]
    assert set(registry.statistics()) == {"a", "b"}
