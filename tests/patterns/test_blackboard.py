"""sw.Blackboard in workflows: posts with provenance, compare-and-set, takes, durable
waits in virtual time, knowledge sources that verify and refute, verified-only reads,
context poisoning with its chain, and bad input."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

import stalwart as sw
from stalwart.patterns import poisoning
from stalwart.store import EventKind
from stalwart.testing import MemoryStore

T0 = 1_700_000_000.0


def make_app() -> tuple[sw.Runtime, MemoryStore]:
    store = MemoryStore()
    return sw.Runtime(store, clock=sw.FakeClock(T0, autojump=True)), store


async def test_a_post_records_provenance_and_the_read_sees_it() -> None:
    """post records run, step, workflow, agent and model; the read sees it, as the
    store does (one version)."""
    app, store = make_app()
    board = sw.Blackboard("facts")
    agent = sw.Agent("scout", "sim:scout")

    @app.workflow
    async def scout(ctx: sw.Context) -> dict[str, Any]:
        e = await board.post(ctx, "gpu:h100", {"tflops": 989}, agent=agent)
        [seen] = await board.read(ctx, "gpu:*")
        return {"version": e.version, "prov": dict(seen.provenance), "state": seen.state}

    async with app:
        out = await app.run(scout, run_id="s")
    prov = out["prov"]
    assert (out["version"], out["state"]) == (1, "unverified")
    assert (prov["run_id"], prov["agent"], prov["model"]) == ("s", "scout", "sim:scout")
    assert prov["workflow"].endswith("scout")
    assert prov["at"] == T0 and prov["step_id"]
    [entry] = await store.board_entries("facts")
    assert entry.version == 1 and entry.provenance == prov


async def test_compare_and_set_conflict_fails_the_run_and_changes_nothing() -> None:
    """Two writers read version 1; the second CAS write is BoardConflictError with
    expected 1 and actual 2; the entry keeps the first writer's value."""
    app, store = make_app()
    board = sw.Blackboard("plan")

    @app.workflow
    async def writers(ctx: sw.Context) -> Any:
        v1 = await board.post(ctx, "step", "draft", expected_version=0)
        await board.post(ctx, "step", "first edit", expected_version=v1.version)
        return await board.post(ctx, "step", "second edit", expected_version=v1.version)

    async with app:
        with pytest.raises(sw.RunFailedError) as caught:
            await app.run(writers, run_id="w")
        rec = await app.get_run("w")
    assert caught.value.error_type == "stalwart.errors.BoardConflictError"
    attrs = json.loads(rec.error or "{}")["attributes"]
    assert (attrs["expected"], attrs["actual"], attrs["key"]) == (1, 2, "step")
    [entry] = await store.board_entries("plan")
    assert (entry.version, entry.value) == (2, "first edit")


async def test_take_is_exactly_once_across_runs_and_verified_only_skips_unverified() -> None:
    """Two runs take from one board: each entry goes to one of them; a verified-only
    take ignores an unverified entry."""
    app, _ = make_app()
    board = sw.Blackboard("queue")

    @app.workflow
    async def fill(ctx: sw.Context) -> None:
        for i in range(5):
            await board.post(ctx, f"job:{i}", i)
        await board.verify(ctx, "job:4", verified=True, by="test")

    @app.workflow
    async def drain(ctx: sw.Context) -> list[Any]:
        out = []
        while (e := await board.take(ctx, "job:*")) is not None:
            out.append(e.value)
        return out

    @app.workflow
    async def careful(ctx: sw.Context) -> Any:
        e = await board.take(ctx, "job:*", verified_only=True)
        return None if e is None else e.value

    async with app:
        await app.run(fill)
        assert await app.run(careful) == 4
        a, b = await app.start(drain), await app.start(drain)
        got = (await a.result()) + (await b.result())
    assert sorted(got) == [0, 1, 2, 3]


async def test_a_durable_wait_sees_a_later_post_and_times_out_in_virtual_time() -> None:
    """A waiter returns the entry another run posted at t=10s at once (woken by the
    post, not at its next poll, t=15s); a waiter with timeout=30 and nothing to see
    fails at t=30 exactly."""
    clock = sw.FakeClock(T0, autojump=True)
    app = sw.Runtime(MemoryStore(), clock=clock)
    board = sw.Blackboard("answers")

    @app.workflow
    async def waiter(ctx: sw.Context) -> list[Any]:
        e = await board.wait(ctx, "answer:*", take=True)
        return [e.value, await ctx.now() - T0]

    @app.workflow
    async def late(ctx: sw.Context) -> None:
        await ctx.sleep(10)
        await board.post(ctx, "answer:1", 42)

    @app.workflow
    async def patient(ctx: sw.Context) -> Any:
        return await board.wait(ctx, "never:*", timeout=30)

    async with app:
        w = await app.start(waiter)
        await app.start(late)
        assert await w.result() == [42, 10.0]
        with pytest.raises(sw.RunFailedError) as caught:
            await app.run(patient)
    assert "no entry matched 'never:*' within 30s" in str(caught.value)
    assert clock.now() - T0 >= 30


def step_names(events: list[Any], run_id: str) -> list[str]:
    return [e.name for e in events if e.kind in (EventKind.STEP_COMPLETED,
                                                 EventKind.SIGNAL_RECEIVED,
                                                 EventKind.SIGNAL_TIMED_OUT)]


async def test_a_post_wakes_the_waiter_long_before_its_poll() -> None:
    """With a 500 s poll, a waiter returns at t=10s, when another run posts a match (a
    post that does not match wakes nobody); its journal holds one watch, two looks, one
    signal and the unwatch, and no watch is left in the store."""
    app, store = make_app()
    board = sw.Blackboard("answers")

    @app.workflow
    async def waiter(ctx: sw.Context) -> list[Any]:
        e = await board.wait(ctx, "answer:*", poll=500, max_poll=500)
        return [e.value, await ctx.now() - T0]

    @app.workflow
    async def poster(ctx: sw.Context) -> None:
        await ctx.sleep(5)
        await board.post(ctx, "question:1", "?")
        await ctx.sleep(5)
        await board.post(ctx, "answer:1", 42)

    async with app:
        w = await app.start(waiter, run_id="w")
        await app.start(poster)
        assert await w.result() == [42, 10.0]
        events = await app.events("w")
    assert step_names(events, "w") == [
        "stalwart.now", "stalwart.patch:blackboard.wait:wake-on-write",
        "board:answers:watch", "board:answers:read", "stalwart.now", "board:answers:3",
        "board:answers:read", "board:answers:unwatch", "stalwart.now"]
    assert await store.board_watches("answers") == []


class PostAfterFirstLook:
    """A store that, right after the waiter's first look found nothing, has another
    writer post a match: a post between the look and the wait."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner
        self.done = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def board_entries(self, board: str, *, prefix: str = "") -> list[Any]:
        from stalwart.store._board import BoardOp

        rows = await self.inner.board_entries(board, prefix=prefix)
        if not self.done:
            self.done = True
            entry = await self.inner.board_apply(
                BoardOp("post", board, "elsewhere:1", key="answer:1", value=7), now=T0)
            assert entry is not None
            await self.inner.board_wake(entry, now=T0)
        return rows


async def test_a_wait_journaled_before_wake_on_write_polls_on(tmp_path: Any) -> None:
    """A run parked inside a wait of the polling code (0.1.0: now, look, sleep...)
    resumes under today's wait without a divergence: its journal has no watch where the
    change is (Context.patched), so it goes on polling and finds the post at its next
    look. A journal of today's wait is unchanged by a replay."""
    db = str(tmp_path / "j.db")
    clock = sw.FakeClock(T0)
    board = sw.Blackboard("answers")

    async def polling_wait(ctx: sw.Context) -> Any:  # 0.1.0's Blackboard.wait
        start, delay = await ctx.now(), 60.0
        while True:
            found = await board.read(ctx, "answer:*")
            if found:
                return found[0]
            assert await ctx.now() - start < 1_000
            await ctx.sleep(delay)

    old = sw.Runtime(db, clock=clock, park_after=0)

    @old.workflow(name="waiter")
    async def old_waiter(ctx: sw.Context) -> Any:
        return (await polling_wait(ctx)).value

    async with old:
        await old.start(old_waiter, run_id="w")
        for _ in range(2000):
            if any(e.kind == EventKind.TIMER_STARTED for e in await old.events("w")):
                break
            await asyncio.sleep(0.005)
        else:
            raise AssertionError("the old wait never slept")

    new = sw.Runtime(db, clock=clock, park_after=0)

    @new.workflow(name="waiter")
    async def new_waiter(ctx: sw.Context) -> Any:
        return (await board.wait(ctx, "answer:*", poll=60)).value

    @new.workflow
    async def poster(ctx: sw.Context) -> None:
        await board.post(ctx, "answer:1", 42)

    async with new:
        assert (await new.replay("w")).deterministic
        await new.run(poster)
        await clock.advance(60)
        rec = await new.wait_for_end("w", timeout=30)
        assert rec.status == sw.RunStatus.COMPLETED, rec.error
        assert new.outcome(rec) == 42
        names = [e.name for e in await new.events("w")]
    assert not [n for n in names if n and ("watch" in n or "patch" in n)]


async def test_a_post_between_the_look_and_the_wait_is_not_lost() -> None:
    """The waiter watches before it looks: a match posted after its look found nothing
    leaves a signal that the wait takes at once (t=0, not the 500 s poll)."""
    inner = MemoryStore()
    store = PostAfterFirstLook(inner)
    app = sw.Runtime(store, clock=sw.FakeClock(T0, autojump=True))  # type: ignore[arg-type]
    board = sw.Blackboard("answers")

    @app.workflow
    async def waiter(ctx: sw.Context) -> list[Any]:
        e = await board.wait(ctx, "answer:*", poll=500, max_poll=500)
        return [e.value, await ctx.now() - T0]

    async with app:
        assert await app.run(waiter) == [7, 0.0]
    assert store.done


async def test_two_takers_woken_by_one_post_take_it_once() -> None:
    """Two take=True waiters, one post: exactly one gets the entry (at t=10s); the other
    waits on and times out with BlackboardError (t=100s)."""
    app, _ = make_app()
    board = sw.Blackboard("jobs")

    @app.workflow
    async def taker(ctx: sw.Context) -> list[Any]:
        try:
            e = await board.wait(ctx, "job:*", take=True, timeout=100, poll=500)
        except sw.BlackboardError:
            return ["timeout", await ctx.now() - T0]
        return [e.value, await ctx.now() - T0]

    @app.workflow
    async def poster(ctx: sw.Context) -> None:
        await ctx.sleep(10)
        await board.post(ctx, "job:1", "the job")

    async with app:
        a, b = await app.start(taker), await app.start(taker)
        await app.start(poster)
        got = sorted([await a.result(), await b.result()], key=str)
    assert got == [["the job", 10.0], ["timeout", 100.0]]


async def test_a_post_after_the_waiter_ended_succeeds_and_drops_its_watch() -> None:
    """A waiter cancelled while waiting leaves its watch; the next matching post
    succeeds and drops it instead of signalling a finished run."""
    app, store = make_app()
    board = sw.Blackboard("answers")

    @app.workflow
    async def waiter(ctx: sw.Context) -> Any:
        return await board.wait(ctx, "answer:*", poll=500)

    @app.workflow
    async def poster(ctx: sw.Context) -> int:
        return (await board.post(ctx, "answer:1", 1)).version

    async with app:
        w = await app.start(waiter, run_id="w")
        while not await store.board_watches("answers"):
            await asyncio.sleep(0)
        await app.cancel("w")
        with pytest.raises(sw.RunCancelledError):
            await w.result()
        assert [x.run_id for x in await store.board_watches("answers")] == ["w"]
        assert await app.run(poster) == 1
    assert await store.board_watches("answers") == []
    assert await store.pending_signals("w") == []


async def test_knowledge_sources_verify_and_refute_and_verified_only_contains_it() -> None:
    """A function verifier refutes the false fact and verifies the true one; a
    verified-only reader sees only the true one; the refutation is a semantic failure of
    the agent and model that posted it."""
    app, _ = make_app()
    board = sw.Blackboard("facts")
    truth = {"paris": "France", "berlin": "Germany"}

    def fact_checker(entry: sw.BoardEntry) -> sw.Verdict:
        ok = truth.get(entry.key.split(":")[1]) == entry.value
        return sw.Verdict(accept=ok, reasons=[] if ok else ["not what the atlas says"])

    board.knowledge_source(fact_checker, pattern="capital:*")

    @app.workflow
    async def pipeline(ctx: sw.Context) -> dict[str, Any]:
        await board.post(ctx, "capital:paris", "France", agent="scout", model="sim:a")
        await board.post(ctx, "capital:berlin", "Austria", agent="scout", model="sim:b")
        await board.post(ctx, "note", "uncovered")
        judged = await board.run_verifiers(ctx)
        trusted = await board.read(ctx, "capital:*", verified_only=True)
        return {"judged": {e.key: [e.state, e.verified_by, e.note] for e in judged},
                "trusted": [e.key for e in trusted]}

    async with app:
        out = await app.run(pipeline, run_id="p")
        events = await app.events("p")
    assert out["judged"] == {
        "capital:berlin": ["refuted", "fact_checker", "not what the atlas says"],
        "capital:paris": ["verified", "fact_checker", None]}
    assert out["trusted"] == ["capital:paris"]
    [refuted] = [json.loads(e.payload or "{}") for e in events
                 if e.kind == EventKind.STEP_COMPLETED and e.name == "board:facts:refuted"]
    assert refuted["semantic"] == [{"member": "scout", "model": "sim:b", "reason":
                                    "facts/capital:berlin refuted by fact_checker: not what "
                                    "the atlas says"}]


async def test_an_agent_verifier_and_a_verifier_that_raises() -> None:
    """An agent with output_type=Verdict judges an entry; a verifier that raises is a
    BlackboardError naming it and the entry, which stays unverified."""
    app, store = make_app()
    board = sw.Blackboard("facts")
    judge = sw.Agent("judge", sw.FunctionModel(
        lambda r: '{"accept": true, "reasons": ["checked"]}', name="judge"),
        output_type=sw.Verdict)
    board.knowledge_source(judge, pattern="ok:*")

    def broken(entry: sw.BoardEntry) -> bool:
        raise RuntimeError("lookup service down")

    board.knowledge_source(broken, pattern="bad:*")

    @app.workflow
    async def check(ctx: sw.Context) -> Any:
        await board.post(ctx, "ok:1", 1)
        await board.run_verifiers(ctx, "ok:*")
        await board.post(ctx, "bad:1", 1)
        return await board.run_verifiers(ctx)

    async with app:
        with pytest.raises(sw.RunFailedError) as caught:
            await app.run(check)
    assert caught.value.error_type == "stalwart.errors.BlackboardError"
    assert ("verifier 'broken' failed on 'bad:1' (version 1): RuntimeError: lookup "
            "service down; the entry stays unverified") in str(caught.value)
    states = {e.key: e.state for e in await store.board_entries("facts")}
    assert states == {"ok:1": "verified", "bad:1": "unverified"}


async def test_poisoning_flags_what_was_built_on_a_refuted_entry_with_its_chain() -> None:
    """b is built on a, c on b, d on nothing: refuting a flags b (b -> a) and c
    (c -> b -> a); rewriting a afterwards does not clear what used the refuted
    version."""
    app, _ = make_app()
    board = sw.Blackboard("kb")

    @app.workflow
    async def build(ctx: sw.Context) -> list[Any]:
        a = await board.post(ctx, "a", "claim")
        b = await board.post(ctx, "b", "inference", sources=[a])
        await board.post(ctx, "c", "conclusion", sources=[b])
        await board.post(ctx, "d", "independent")
        await board.verify(ctx, "a", verified=False, by="auditor", note="made up")
        first = [(p.key, list(p.chain), p.refuted_by) for p in await board.poisoning(ctx)]
        await board.post(ctx, "a", "corrected claim")
        again = [p.key for p in await board.poisoning(ctx)]
        return [first, again]

    async with app:
        first, again = await app.run(build)
    assert first == [["b", ["b", "a"], "auditor"], ["c", ["c", "b", "a"], "auditor"]]
    assert again == []  # the refuted version is gone: nothing in the board refers to it
    assert poisoning([]) == []


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda b, ctx: b.read(ctx, ""), "BoardPatternError", "it is empty"),
    (lambda b, ctx: b.take(ctx, "a\\"), "BoardPatternError", "lone"),
    (lambda b, ctx: b.read(ctx, "*", where=[1]), "BoardPatternError", "where= must map"),
    (lambda b, ctx: b.post(ctx, "", 1), "ConfigurationError", "a key is a non-empty"),
    (lambda b, ctx: b.post(ctx, "k", 1, expected_version=-1), "ConfigurationError",
     "expected_version must be an int >= 0"),
    (lambda b, ctx: b.run_verifiers(ctx), "ConfigurationError", "no knowledge source"),
    (lambda b, ctx: b.wait(ctx, "*", poll=0), "ConfigurationError", "poll must be"),
])
async def test_bad_blackboard_input_is_one_clear_error_and_nothing_is_journaled(
        call: Any, error: str, message: str) -> None:
    """Refused before any step runs: the run fails with the typed error; no board step
    completed and the store holds nothing."""
    app, store = make_app()
    board = sw.Blackboard("b")

    @app.workflow
    async def bad(ctx: sw.Context) -> Any:
        return await call(board, ctx)

    async with app:
        with pytest.raises(sw.RunFailedError) as caught:
            await app.run(bad, run_id="x")
        events = await app.events("x")
    assert caught.value.error_type == f"stalwart.errors.{error}"
    assert message in str(caught.value)
    assert not [e for e in events if e.kind == EventKind.STEP_COMPLETED]
    assert await store.board_names() == []


def test_a_blackboard_needs_a_name_and_sources_unique_names() -> None:
    """Blackboard('') and two knowledge sources of one name are ConfigurationErrors."""
    with pytest.raises(sw.ConfigurationError):
        sw.Blackboard("")
    board = sw.Blackboard("b")
    board.knowledge_source(lambda e: True, name="v")
    with pytest.raises(sw.ConfigurationError, match="two knowledge sources"):
        board.knowledge_source(lambda e: True, name="v")
    with pytest.raises(sw.BoardPatternError):
        board.knowledge_source(lambda e: True, pattern="", name="w")


async def _shared_waiter(ctx: sw.Context) -> Any:
    return (await sw.Blackboard("shared").wait(ctx, "answer:*", poll=3600,
                                                max_poll=3600)).value


async def _shared_poster(ctx: sw.Context) -> None:
    await sw.Blackboard("shared").post(ctx, "answer:1", 42)


async def test_a_post_in_one_runtime_wakes_a_waiter_in_another(store_url: str) -> None:
    """Two runtimes on one journal (SQLite, PostgreSQL): a run of the second posts while
    a run of the first waits (its poll is an hour): the waiter returns within seconds,
    through the signal in the store."""
    waiter = sw.Workflow(_shared_waiter, name="shared_waiter")
    poster = sw.Workflow(_shared_poster, name="shared_poster")
    a = sw.Runtime(store_url, poll_interval=0.05)
    a.register(waiter)
    b = sw.Runtime(store_url, poll_interval=0.05)
    b.register(poster)
    async with a, b:
        h = await a.start(waiter, run_id="w")
        async with asyncio.timeout(60):  # the waiter reaches its wait (real time, bounded)
            while not any(e.kind == EventKind.SIGNAL_WAIT_STARTED for e in await a.events("w")):
                await asyncio.sleep(0.02)
        await b.run(poster)
        assert await h.result(timeout=30) == 42
        kinds = [e.kind for e in await a.events("w")]
    assert kinds.count(EventKind.SIGNAL_RECEIVED) == 1
