"""Actors (virtual objects) in one process, on SQLite and PostgreSQL: state per key,
order, idempotent message ids, ask/reply, reminders on a fake clock, bad input."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

import stalwart as sw
from stalwart.store import EventKind, RunStatus


class Tally(BaseModel):
    count: int = 0
    seen: list[int] = []
    fired: list[str] = []


def make_app(store: str, **kw: Any) -> tuple[sw.Runtime, Any, Any, Any]:
    app = sw.Runtime(store, poll_interval=0.05, **kw)

    @app.actor(state=Tally)
    async def tally(ctx: sw.ActorContext[Tally], msg: dict[str, Any]) -> int:
        if msg.get("boom"):
            ctx.state.count += 1000  # dropped: the handler raises
            raise ValueError("boom")
        if "remind" in msg:
            ctx.remind(msg["remind"], msg["after"], {"n": 0, "tick": msg["remind"]})
        if "cancel" in msg:
            ctx.cancel_reminder(msg["cancel"])
        if msg.get("self_ask"):
            await ctx.ctx.ask(tally, ctx.key, {"n": 1})
        if "slow" in msg:
            await ctx.ctx.sleep(msg["slow"])
        if "tick" in msg:
            ctx.state.fired.append(msg["tick"])
        ctx.state.count += msg.get("n", 0)
        if "i" in msg:
            ctx.state.seen.append(msg["i"])
        return ctx.state.count

    @app.workflow
    async def asker(ctx: sw.Context, key: str, n: int) -> int:
        await ctx.send(tally, key, {"n": n})
        got: int = await ctx.ask(tally, key, {"n": n})
        return got

    @app.workflow
    async def failing_ask(ctx: sw.Context, key: str) -> str:
        try:
            await ctx.ask(tally, key, {"boom": True})
        except sw.ActorError as exc:
            return f"{exc.error_type}:{exc.key}"
        return "no error"

    @app.workflow
    async def impatient(ctx: sw.Context, key: str) -> str:
        try:
            await ctx.ask(tally, key, {"slow": 100, "n": 1}, timeout=10)
        except sw.SignalTimeoutError:
            return "timed out"
        return "answered"

    app.impatient = impatient  # type: ignore[attr-defined]
    return app, tally, asker, failing_ask


async def settle(app: sw.Runtime, actor: Any, key: str, count: int,
                 timeout: float = 30.0) -> Tally:
    """Wait until instance ``key``'s committed count is ``count``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        state: Tally = await app.actor_state(actor, key)
        if state.count == count or loop.time() > deadline:
            return state
        await asyncio.sleep(0.02)


async def fired(app: sw.Runtime, actor: Any, key: str, n: int,
                timeout: float = 30.0) -> Tally:
    """Wait until instance ``key``'s committed state has fired ``n`` reminders (the
    handler commits in real time, after the clock moved)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        state: Tally = await app.actor_state(actor, key)
        if len(state.fired) >= n or loop.time() > deadline:
            return state
        await asyncio.sleep(0.02)


async def test_messages_are_applied_in_order_once_per_key(store_url: str) -> None:
    """Messages to two keys: each instance sees its own in the order sent, each once; a
    message sent again with the same id is handled once."""
    app, tally, _, _ = make_app(store_url)
    async with app:
        for i in range(20):
            await app.send(tally, "a", {"n": 1, "i": i})
            await app.send(tally, 7, {"n": 2, "i": i})
        await app.send(tally, "a", {"n": 100, "i": 99}, message_id="dup")
        await app.send(tally, "a", {"n": 100, "i": 99}, message_id="dup")
        a = await settle(app, tally, "a", 120)
        b = await settle(app, tally, "7", 40)
    assert a.count == 120 and a.seen == [*range(20), 99]
    assert b.count == 40 and b.seen == list(range(20))


async def test_state_survives_a_restart_and_an_idle_instance_parks(store_url: str) -> None:
    """A new runtime on the same journal reads the committed state and goes on from it;
    an instance with an empty mailbox parks (its run waits, nothing held)."""
    app, tally, _, _ = make_app(store_url, park_after=0.1)
    async with app:
        await app.send(tally, "k", {"n": 5})
        await settle(app, tally, "k", 5)
        for _ in range(200):
            rec = await app.get_run("actor:tally:k")
            if rec.status == RunStatus.WAITING:
                break
            await asyncio.sleep(0.02)
        assert rec.status == RunStatus.WAITING
    app, tally, _, _ = make_app(store_url)
    async with app:
        assert (await app.actor_state(tally, "k")).count == 5
        await app.send(tally, "k", {"n": 6})
        assert (await settle(app, tally, "k", 11)).count == 11


async def test_a_workflow_sends_and_asks(store_url: str) -> None:
    """ctx.send is a step (handled once), ctx.ask waits for the reply: the count after
    both messages."""
    app, tally, asker, _ = make_app(store_url)
    async with app:
        handle = await app.start(asker, "w", 3)
        assert await handle.result() == 6
        events = await app.events(handle.run_id)
        assert (await app.actor_state(tally, "w")).count == 6
    steps = [e.name for e in events if e.kind == EventKind.STEP_COMPLETED]
    assert steps == ["send:tally", "ask:tally"]
    received = [e for e in events if e.kind == EventKind.SIGNAL_RECEIVED]
    assert [e.name for e in received] == [f"stalwart.reply:{handle.run_id}/2"]


async def test_a_failing_handler_leaves_the_state_and_raises_to_the_asker(
        store_url: str) -> None:
    """A handler that raises commits no change (its in-place edit is dropped); the asker
    gets ActorError naming the handler's error type; the instance goes on."""
    app, tally, _, failing_ask = make_app(store_url)
    async with app:
        await app.send(tally, "f", {"n": 1})
        assert await app.run(failing_ask, "f") == "builtins.ValueError:f"
        await app.send(tally, "f", {"n": 1})
        assert (await settle(app, tally, "f", 2)).count == 2


async def test_reminders_fire_on_the_clock(store_url: str) -> None:
    """A reminder is handed to the handler when due on the runtime's clock; one cancelled
    never fires; reminders fire in due order."""
    clock = sw.FakeClock(start=1_000.0)
    app, tally, _, _ = make_app(store_url, clock=clock)
    async with app:
        await app.send(tally, "r", {"remind": "late", "after": 50})
        await app.send(tally, "r", {"remind": "soon", "after": 10})
        await app.send(tally, "r", {"remind": "never", "after": 20})
        await app.send(tally, "r", {"cancel": "never", "n": 1})
        await settle(app, tally, "r", 1)
        for _ in range(6):
            await clock.advance(15)
            due = [name for name, at in (("soon", 1_010), ("late", 1_050))
                   if at <= clock.now()]
            state = await fired(app, tally, "r", len(due))
            assert state.fired == due
    assert state.fired == ["soon", "late"]


async def test_bad_input_is_refused_and_nothing_is_recorded(store_url: str) -> None:
    """An undeclared actor, a bad key, a message that is not the declared type: one
    typed error each, and no run is made."""
    app, tally, _, _ = make_app(store_url)
    other = sw.Runtime(store_url, worker=False)

    @other.actor(state=int)
    async def elsewhere(ctx: sw.ActorContext[int], msg: int) -> None:
        ctx.state += msg

    async with app:
        with pytest.raises(sw.ActorNotFoundError, match="no actor 'elsewhere'"):
            await app.send(elsewhere, "k", 1)
        with pytest.raises(sw.ActorNotFoundError, match="no actor 'nope'"):
            await app.send("nope", "k", 1)
        for key in (1.5, None, b"k", ("a",), True, "", "x" * 201, "a\nb"):
            with pytest.raises(sw.ActorKeyError):
                await app.send(tally, key, {"n": 1})  # type: ignore[arg-type]
        with pytest.raises(sw.SerializationError):
            await app.send(tally, "k", "not a dict")  # type: ignore[arg-type]
        assert await app.list_runs() == []
    await other.close()


async def test_an_instance_asking_itself_is_refused(store_url: str) -> None:
    """A handler that asks its own instance would wait forever: ContextMisuseError, a
    handler failure (the state unchanged), before anything is sent."""
    app, tally, _, _ = make_app(store_url)
    async with app:
        await app.send(tally, "s", {"n": 1})
        await app.send(tally, "s", {"n": 1, "self_ask": True})
        await app.send(tally, "s", {"n": 1})
        state = await settle(app, tally, "s", 2)
        events = await app.events("actor:tally:s")
    assert state.count == 2
    failed = [e for e in events if e.name == "actor:tally.commit"
              and '"stalwart.errors.ContextMisuseError"' in (e.payload or "")]
    assert len(failed) == 1
    assert not [e for e in events if (e.name or "").startswith("ask:")]


async def test_an_ask_times_out_on_the_clock_and_the_message_is_still_handled(
        store_url: str) -> None:
    """ctx.ask(timeout=10) against a handler that sleeps 100 s (virtual): the asker gets
    SignalTimeoutError at 10 s; the message is handled once when its sleep ends."""
    clock = sw.FakeClock(start=5_000.0)
    app, tally, _, _ = make_app(store_url, clock=clock)
    async with app:
        handle = await app.start(app.impatient, "t")  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60  # real seconds: the runs write to the journal
        while not ((await app.get_run(handle.run_id)).is_terminal and (
                await app.actor_state(tally, "t")).count == 1):
            assert loop.time() < deadline, "the ask or the handler never ended"
            await asyncio.sleep(0.1)
            await clock.advance(5)
        assert await handle.result() == "timed out"
        assert (await app.actor_state(tally, "t")).count == 1


async def test_app_ask_answers_the_reply_as_a_run_of_its_own(store_url: str) -> None:
    """app.ask from outside a workflow: the handler's reply, typed; the ask is a run
    (actor:tally:ask, id ask:tally:{key}:{ask_id}) whose journal holds the send and the
    reply; asking again with the same ask_id sends nothing and answers the same."""
    app, tally, _, _ = make_app(store_url)
    async with app:
        assert await app.ask(tally, "a", {"n": 2}) == 2
        assert await app.ask("tally", "a", {"n": 3}, ask_id="q-1") == 5
        assert await app.ask(tally, "a", {"n": 3}, ask_id="q-1") == 5  # not sent again
        assert await app.ask(tally, "a", {"n": 0}) == 5
        rec = await app.get_run("ask:tally:a:q-1")
        events = await app.events(rec.run_id)
        state = await app.actor_state(tally, "a")
    assert rec.workflow == "actor:tally:ask" and rec.status == RunStatus.COMPLETED
    assert [e.name for e in events if e.kind == EventKind.STEP_COMPLETED] == ["ask:tally"]
    assert state.count == 5


async def test_app_ask_raises_the_handlers_error(store_url: str) -> None:
    """A handler that raises: app.ask raises ActorError naming the handler's error type
    and the key (its cause the rebuilt error); the state is unchanged."""
    app, tally, _, _ = make_app(store_url)
    async with app:
        await app.send(tally, "e", {"n": 1})
        with pytest.raises(sw.ActorError) as info:
            await app.ask(tally, "e", {"boom": True})
        assert (await app.actor_state(tally, "e")).count == 1
    assert info.value.error_type == "builtins.ValueError" and info.value.key == "e"
    assert isinstance(info.value.__cause__, ValueError)


async def test_app_ask_times_out_on_the_clock(store_url: str) -> None:
    """app.ask(timeout=10) against a handler that sleeps 100 s (virtual):
    SignalTimeoutError; the message is still handled once."""
    clock = sw.FakeClock(start=5_000.0, autojump=True)
    app, tally, _, _ = make_app(store_url, clock=clock)
    async with app:
        with pytest.raises(sw.SignalTimeoutError):
            await app.ask(tally, "t", {"slow": 100, "n": 1}, timeout=10)
        assert (await settle(app, tally, "t", 1)).count == 1


async def test_app_ask_refuses_bad_input_before_anything_is_recorded(
        store_url: str) -> None:
    """An undeclared actor, a bad key, a message of the wrong type, a bad ask_id or
    timeout: one typed error each, and no run is made."""
    app, tally, _, _ = make_app(store_url)
    async with app:
        with pytest.raises(sw.ActorNotFoundError):
            await app.ask("nope", "k", 1)
        with pytest.raises(sw.ActorKeyError):
            await app.ask(tally, 1.5, {"n": 1})  # type: ignore[arg-type]
        with pytest.raises(sw.SerializationError):
            await app.ask(tally, "k", "not a dict")  # type: ignore[arg-type]
        for ask_id in ("", 7):
            with pytest.raises(sw.ConfigurationError, match="ask_id"):
                await app.ask(tally, "k", {"n": 1}, ask_id=ask_id)  # type: ignore[arg-type]
        for timeout in (-1, float("inf"), float("nan"), True, "5"):
            with pytest.raises(sw.ConfigurationError, match="timeout"):
                await app.ask(tally, "k", {"n": 1}, timeout=timeout)  # type: ignore[arg-type]
        assert await app.list_runs() == []


def make_ring(store: str) -> tuple[sw.Runtime, Any]:
    """``node`` instances that ask the next one named in the message (a chain of asks)."""
    app = sw.Runtime(store, poll_interval=0.05)

    @app.actor(state=int)
    async def node(ctx: sw.ActorContext[int], path: list[str]) -> str:
        ctx.state += 1
        if not path:
            return ctx.key
        try:
            return f"{ctx.key}>{await ctx.ctx.ask(node, path[0], path[1:])}"
        except sw.ActorError as exc:  # the next one refused: say why, in the reply
            return f"{ctx.key}>{exc.error_type}:{exc.__cause__}"

    return app, node


async def test_a_chain_of_asks_is_answered_and_a_cycle_is_refused(store_url: str) -> None:
    """a asks b asks c: answered along the chain. a asks b asks a (or a -> b -> c -> a):
    the last ask would wait for an instance that waits for it, forever; it is refused at
    once with ContextMisuseError naming the cycle, and the chain answers with that."""
    app, node = make_ring(store_url)
    async with app:
        assert await app.ask(node, "a", ["b", "c"]) == "a>b>c"
        two = await app.ask(node, "a", ["b", "a"])
        three = await app.ask(node, "a", ["b", "c", "a"])
        # Nothing is left stuck: the instances of the refused cycles answer again.
        assert await app.ask(node, "x", ["a", "b"]) == "x>a>b"
    # b's handler raised the refusal (a handler failure): a's ask got it as ActorError.
    assert two.startswith("a>stalwart.errors.ContextMisuseError:")
    assert "actor:node:b cannot ask actor:node:a" in two
    assert "(actor:node:a -> actor:node:b -> actor:node:a" in two
    assert three.startswith("a>b>stalwart.errors.ContextMisuseError:")
    assert "(actor:node:a -> actor:node:b -> actor:node:c -> actor:node:a" in three
