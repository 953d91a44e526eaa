"""Human approvals (ctx.approval): a durable wait for a decision bound to the exact
payload shown; idempotent, final, audited in the journal; timeouts in virtual time; on
SQLite and PostgreSQL, across a SIGKILL of the waiting process."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic import BaseModel

import stalwart as sw
from stalwart.engine._approval import approval_token, find_requests
from stalwart.store import EventKind, RunStatus
from stalwart.testing import MemoryStore

from .conftest import Child


def memory_app() -> sw.Runtime:
    return sw.Runtime(MemoryStore(), clock=sw.FakeClock(autojump=True))


def refund_app(app: sw.Runtime, paid: list[str], *, timeout: float | None = None,
               default: Any = None) -> Any:
    def pay(amount: int) -> str:
        paid.append(sw.current_step().idempotency_key)
        return f"paid {amount}"

    @app.workflow(name="refund")
    async def refund(ctx: sw.Context, amount: int) -> dict[str, Any]:
        decision = await ctx.approval("refund", {"amount": amount}, timeout=timeout,
                                      default=default)
        if decision.denied:
            return {"paid": None, "by": decision.by, "timed_out": decision.timed_out}
        return {"paid": await ctx.step(pay, amount), "by": decision.by,
                "comment": decision.comment}

    return refund


async def pending(app: sw.Runtime, run_id: str) -> sw.ApprovalRequest:
    """The run's pending approval once its request is journaled (the store is the event
    waited on: each look yields to the run's task)."""
    for _ in range(10_000):
        found = await app.approvals(run_id)
        if found:
            return found[0]
        await asyncio.sleep(0)
    raise AssertionError(f"run {run_id} never asked for an approval")


async def test_an_approval_parks_the_run_and_the_decision_is_journaled() -> None:
    async with memory_app() as app:
        paid: list[str] = []
        wf = refund_app(app, paid)
        handle = await app.start(wf, 30, run_id="r1")
        req = await pending(app, "r1")
        assert (req.name, req.payload, req.pending) == ("refund", {"amount": 30}, True)
        assert len(req.token) == 64
        decision = await app.approve("r1", "refund", by="ana", comment="ok",
                                     token=req.token)
        assert await handle.result() == {"paid": "paid 30", "by": "ana", "comment": "ok"}
        assert (decision.approved, decision.by, decision.token) == (True, "ana", req.token)
        events = await app.events("r1")
        received = [e for e in events if e.kind == EventKind.SIGNAL_RECEIVED]
        assert len(received) == 1 and received[0].step_id == req.step_id
        audit = json.loads(received[0].payload or "{}")
        assert (audit["by"], audit["comment"], audit["token"]) == ("ana", "ok", req.token)
        assert await app.approvals() == []
        assert paid == ["r1:2"]


async def test_a_token_for_another_payload_is_refused_and_nothing_is_sent() -> None:
    async with memory_app() as app:
        wf = refund_app(app, [])
        await app.start(wf, 30, run_id="r1")
        req = await pending(app, "r1")
        other = approval_token("r1", req.step_id, json.dumps({"amount": 3000}))
        with pytest.raises(sw.ApprovalConflictError, match="another payload"):
            await app.approve("r1", req.step_id, by="eve", token=other)
        assert await app.store.pending_signals("r1") == []
        assert (await app.approvals("r1"))[0].pending
        await app.cancel("r1")


async def test_approving_twice_is_idempotent_and_a_decision_is_final() -> None:
    async with memory_app() as app:
        paid: list[str] = []
        wf = refund_app(app, paid)
        handle = await app.start(wf, 30, run_id="r1")
        req = await pending(app, "r1")
        first = await app.approve("r1", req.step_id, by="ana")
        # Queued, not yet taken by the run: the same decision returns the first one.
        assert await app.approve("r1", req.step_id, by="bob") == first
        with pytest.raises(sw.ApprovalConflictError, match="approved by ana"):
            await app.deny("r1", req.step_id, by="bob")
        await handle.result()
        # Journaled: the same again.
        assert await app.approve("r1", "refund", by="bob") == first
        with pytest.raises(sw.ApprovalConflictError, match="final"):
            await app.deny("r1", "refund")
        assert paid == ["r1:2"]
        assert len(await app.store.pending_signals("r1")) == 0


async def test_a_deny_is_final_too() -> None:
    async with memory_app() as app:
        paid: list[str] = []
        wf = refund_app(app, paid)
        handle = await app.start(wf, 30, run_id="r1")
        req = await pending(app, "r1")
        await app.deny("r1", req.step_id, by="ana", comment="too much")
        with pytest.raises(sw.ApprovalConflictError, match="denied by ana"):
            await app.approve("r1", req.step_id, by="bob")
        assert await handle.result() == {"paid": None, "by": "ana", "timed_out": False}
        assert paid == []


async def test_a_timeout_takes_the_default_or_raises_in_virtual_time() -> None:
    async with memory_app() as app:
        wf = refund_app(app, [], timeout=3600, default="deny")
        started = app.clock.now()
        assert await app.run(wf, 30) == {"paid": None, "by": "timeout", "timed_out": True}
        assert app.clock.now() - started >= 3600
    async with memory_app() as app:
        wf = refund_app(app, [], timeout=60)
        handle = await app.start(wf, 30, run_id="r2")
        with pytest.raises(sw.RunFailedError) as info:
            await handle.result()
        assert info.value.error_type.endswith("ApprovalTimeoutError")
        req = (await sw_requests(app, "r2"))[0]
        with pytest.raises(sw.ApprovalConflictError, match="timed out"):
            await app.approve("r2", req.step_id)


async def test_a_timeouts_default_decision_is_journaled_and_replayed() -> None:
    """The audit shows what a timeout decided (here: approve), and a replay returns the
    journaled decision without waiting."""
    async with memory_app() as app:
        paid: list[str] = []
        wf = refund_app(app, paid, timeout=60, default="approve")
        handle = await app.start(wf, 30, run_id="r1")
        assert (await handle.result())["by"] == "timeout"
        assert len(paid) == 1
        timed_out = [e for e in await app.events("r1")
                     if e.kind == EventKind.SIGNAL_TIMED_OUT]
        assert len(timed_out) == 1
        assert json.loads(timed_out[0].payload or "null")["approved"] is True
        req = (await sw_requests(app, "r1"))[0]
        assert req.decision is not None
        assert (req.decision.approved, req.decision.by, req.decision.timed_out,
                req.decision.token) == (True, "timeout", True, req.token)
        report = await app.replay("r1")
        assert report.deterministic, report.divergences
        assert len(paid) == 1


async def test_an_approve_and_a_deny_at_once_one_wins_and_the_other_is_refused() -> None:
    """Both pass the check before either is stored: the first stored is the decision,
    the other caller is told so (not a false success)."""
    for first in ("approve", "deny"):
        async with memory_app() as app:
            paid: list[str] = []
            wf = refund_app(app, paid)
            handle = await app.start(wf, 30, run_id="r1")
            req = await pending(app, "r1")
            calls = [app.approve("r1", req.step_id, by="ana"),
                     app.deny("r1", req.step_id, by="bob")]
            outcomes = await asyncio.gather(*(calls if first == "approve" else calls[::-1]),
                                            return_exceptions=True)
            decided = [o for o in outcomes if isinstance(o, sw.Decision)]
            refused = [o for o in outcomes if isinstance(o, sw.ApprovalConflictError)]
            assert len(decided) == 1 and len(refused) == 1, outcomes
            result = await handle.result()
            assert result["by"] == decided[0].by
            assert (result["paid"] is not None) == decided[0].approved
            assert len(paid) == (1 if decided[0].approved else 0)
            req_after = (await sw_requests(app, "r1"))[0]
            assert req_after.decision == decided[0]


async def sw_requests(app: sw.Runtime, run_id: str) -> list[sw.ApprovalRequest]:
    return find_requests(run_id, await app.events(run_id))


async def test_bad_input_is_one_typed_error_and_nothing_is_written() -> None:
    async with memory_app() as app:
        wf = refund_app(app, [])
        await app.start(wf, 30, run_id="r1")
        await pending(app, "r1")
        before = await app.events("r1")
        with pytest.raises(sw.RunNotFoundError):
            await app.approve("nope", "refund")
        with pytest.raises(sw.ApprovalNotFoundError, match=r"no approval 'refnud'.*refund"):
            await app.approve("r1", "refnud")

        @app.workflow
        async def bad(ctx: sw.Context, default: Any) -> None:
            await ctx.approval("x", {}, default=default)

        with pytest.raises(sw.RunFailedError, match="default must be"):
            await app.run(bad, "maybe")
        assert await app.events("r1") == before
        assert await app.store.pending_signals("r1") == []
        await app.cancel("r1")


async def test_code_asking_about_another_payload_on_replay_is_non_determinism() -> None:
    store = MemoryStore()
    clock = sw.FakeClock(autojump=True)
    async with sw.Runtime(store, clock=clock) as app:
        wf = refund_app(app, [])
        await app.start(wf, 30, run_id="r1")
        await pending(app, "r1")
    async with sw.Runtime(store, clock=clock) as app:
        @app.workflow(name="refund")
        async def changed(ctx: sw.Context, amount: int) -> bool:
            return (await ctx.approval("refund", {"amount": amount * 100})).approved

        await app.resume("r1")
        rec = await app.get_run("r1")
        for _ in range(10_000):
            rec = await app.get_run("r1")
            if rec.status == RunStatus.DEAD_LETTERED:
                break
            await asyncio.sleep(0)
        assert rec.status == RunStatus.DEAD_LETTERED
        assert "another payload" in json.dumps(
            [e.payload for e in await app.events("r1")])


@pytest.mark.slow
def test_a_sigkilled_waiter_resumes_with_the_decision_applied_once(child: Child) -> None:
    """The process waiting on the approval is SIGKILLed; the decision is made from
    another process while nothing runs the run; a new process applies it, once."""
    proc = child.spawn("refund", "refund-1")
    req = asyncio.run(_wait_pending(child.store, "refund-1", proc))
    Child.kill(proc)
    decision = asyncio.run(_decide(child.store, "refund-1", req.token))
    assert decision.approved
    code, out, err = child.run("refund", "refund-1")
    assert code == 0, err
    assert json.loads(out.splitlines()[-1]) == {"approved": True, "by": "ops"}
    assert [label for label, _ in child.dedup_rows()] == ["prepare", "pay"]
    assert [label for label, _ in child.raw_lines()] == ["prepare", "pay"]


@pytest.mark.slow
def test_a_crash_right_after_the_decision_pays_once(child: Child) -> None:
    """The decision is taken and the payment made, then the process dies before the
    payment is journaled: the next process pays again under the same key (the
    deduplicating service applies it once) and the decision is journaled once."""
    proc = child.spawn("refund", "refund-2", crash_at="pay:1:after")
    req = asyncio.run(_wait_pending(child.store, "refund-2", proc))
    asyncio.run(_decide(child.store, "refund-2", req.token))
    proc.communicate(timeout=60)
    assert proc.returncode == -9
    code, out, err = child.run("refund", "refund-2")
    assert code == 0, err
    assert json.loads(out.splitlines()[-1]) == {"approved": True, "by": "ops"}
    assert [label for label, _ in child.dedup_rows()] == ["prepare", "pay"]
    assert [label for label, _ in child.raw_lines()] == ["prepare", "pay", "pay"]
    events = asyncio.run(_events(child.store, "refund-2"))
    assert sum(e.kind == EventKind.SIGNAL_RECEIVED for e in events) == 1


async def _wait_pending(store: str, run_id: str, proc: Any) -> sw.ApprovalRequest:
    app = sw.Runtime(store, worker=False)
    try:
        for _ in range(600):
            assert proc.poll() is None, proc.communicate()
            try:
                found = await app.approvals(run_id)
            except (sw.RunNotFoundError, sw.NotAStalwartStoreError):
                found = []  # the child has not created the run (or the journal) yet
            if found:
                return found[0]
            await asyncio.sleep(0.05)  # another process: only the store can be watched
        raise AssertionError("no approval asked within 30 s")
    finally:
        await app.close()


async def _decide(store: str, run_id: str, token: str) -> sw.Decision:
    app = sw.Runtime(store, worker=False)
    try:
        return await app.approve(run_id, "refund", by="ops", token=token)
    finally:
        await app.close()


async def _events(store: str, run_id: str) -> list[Any]:
    app = sw.Runtime(store, worker=False)
    try:
        return await app.events(run_id)
    finally:
        await app.close()


class Order(BaseModel):
    amount: int
    status: str = "new"


async def test_an_approval_inside_a_graph_node_parks_the_graph() -> None:
    """A context node asks for approval; the graph waits, and goes on with the decision."""
    async def review(ctx: sw.Context, o: Order) -> dict[str, Any]:
        decision = await ctx.approval("ship", {"amount": o.amount})
        return {"status": "approved" if decision.approved else "held"}

    def ship(o: Order) -> dict[str, Any]:
        return {"status": f"shipped ({o.status})"}

    graph = sw.Graph(Order, name="order")
    graph.node(review)
    graph.node(ship)
    graph.edge(sw.START, "review")
    graph.edge("review", "ship")
    graph.edge("ship", sw.END)
    flow = graph.compile(max_steps=5)
    async with memory_app() as app:
        @app.workflow
        async def order(ctx: sw.Context, o: Order) -> Order:
            return await flow.run(ctx, o)

        handle = await app.start(order, Order(amount=5), run_id="g1")
        req = await pending(app, "g1")
        assert (req.name, req.payload) == ("ship", {"amount": 5})
        await app.approve("g1", "ship", by="ana", token=req.token)
        assert (await handle.result()).status == "shipped (approved)"
