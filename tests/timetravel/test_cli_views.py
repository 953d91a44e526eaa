"""stalwart runs trace|replay|fork, runs show usage, stats — in process, on a tmp module."""

from __future__ import annotations

import importlib
import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from stalwart.cli import app

MODULE = '''
import os

import stalwart as sw
from stalwart.models import ToolCallRequest

FAILS = {"left": 1}


def lookup(city: str) -> str:
    if FAILS["left"]:
        FAILS["left"] -= 1
        raise TimeoutError("flaky")
    return f"{city}: 21C"


tool = sw.Tool(lookup, policy=sw.Policy(retry=sw.Retry(max_attempts=3, initial=0.001,
                                                       max_backoff=0.002)))
model = sw.SimulatedModel("weather", script=lambda req: (
    ToolCallRequest.create("c1", "lookup", {"city": "Oslo"})
    if len(req.messages) == 1 else "It is 21C."))
app = sw.Runtime(os.environ["TT_STORE"], models={"sim:weather": model})
agent = sw.Agent("weather", "sim:weather", tools=[tool])
writer = sw.Agent("writer", "sim:writer")


def prep() -> str:
    return "ok"


@app.workflow
async def flow(ctx: sw.Context) -> list[str]:
    await ctx.step(prep)
    return await ctx.gather(agent.run(ctx, "weather?"), writer.run(ctx, "write"))
'''


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """A module with an agent workflow in the working directory, and a journal path."""
    module = f"tt_wf_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{module}.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    monkeypatch.delenv("STALWART_STORE", raising=False)
    monkeypatch.setenv("TT_STORE", str(tmp_path / "j.db"))
    yield module, str(tmp_path / "j.db")
    for name in [m for m in sys.modules if m == module]:
        del sys.modules[name]


def _run(module: str, store: str) -> str:
    """Run the workflow with the module's own runtime (its scripted model)."""
    mod = importlib.import_module(module)
    mod.app.run_sync(mod.flow)
    listed = invoke("runs", "list", "--json", "--store", store)
    return str(json.loads(listed.stdout)[0]["run_id"])


def test_trace_shows_the_waterfall_tree_with_agents_and_branches(
        project: tuple[str, str]) -> None:
    """Gather branches nest under the gather; agent turns and tool calls under the agent."""
    module, store = project
    run_id = _run(module, store)
    res = invoke("runs", "trace", run_id, "--store", store)
    assert res.exit_code == 0, res.output
    for text in ("run flow", "1 prep", "2 gather", "2/0 branch 0", "invoke_agent weather",
                 "2/0/1 chat sim:weather", "2/0/2 execute_tool lookup", "2 attempts",
                 "2/1/1 chat sim:writer", "tok", "$0"):
        assert text in res.stdout, text
    data = json.loads(invoke("runs", "trace", run_id, "--json", "--store", store).stdout)
    root = data["trace"]
    gather = root["children"][1]
    assert gather["kind"] == "gather" and [b["label"] for b in gather["children"]] == [
        "branch 0", "branch 1"]
    agent = gather["children"][0]["children"][0]
    assert agent["kind"] == "agent"
    assert [c["kind"] for c in agent["children"]] == ["model", "tool", "model"]
    assert agent["children"][1]["attempts"] == 2
    assert root["tokens"] == sum(b["tokens"] for b in gather["children"]) > 0
    assert data["forked_from"] is None


def test_show_gains_tokens_and_cost_and_stats_aggregates(project: tuple[str, str]) -> None:
    """runs show prints usage; stats gives calls, errors by kind, latency and cost."""
    module, store = project
    run_id = _run(module, store)
    shown = invoke("runs", "show", run_id, "--store", store)
    assert "usage" in shown.stdout and "tokens" in shown.stdout and "cost $0" in shown.stdout
    data = json.loads(invoke("runs", "show", run_id, "--json", "--store", store).stdout)
    assert data["usage"]["total"]["calls"] == 4 and data["usage"]["total"]["cost"] == 0.0
    res = invoke("stats", "--since", "1h", "--json", "--store", store)
    assert res.exit_code == 0, res.output
    rows = {r["key"]: r for r in json.loads(res.stdout)["rows"]}
    assert rows["tool:lookup"]["errors"] == {"TimeoutError": 1}
    assert rows["tool:lookup"]["calls"] == 1 and rows["tool:lookup"]["p95"] is not None
    assert rows["sim:weather"]["calls"] == 2 and rows["sim:weather"]["breaker"] == "n/a"
    table = invoke("stats", "--store", store)
    assert "TimeoutError x1" in table.stdout and "p95" in table.stdout
    bad = invoke("stats", "--since", "soon", "--store", store)
    assert bad.exit_code == 2 and "not a duration" in bad.stderr


def test_replay_and_fork_from_the_command_line(project: tuple[str, str],
                                               tmp_path: Path) -> None:
    """replay says deterministic (exit 0), then DIVERGES after the code changes (exit 1);
    fork runs the rest with another model and shows its origin."""
    module, store = project
    run_id = _run(module, store)
    ok = invoke("runs", "replay", run_id, "--store", store)
    assert ok.exit_code == 0 and "deterministic" in ok.stdout
    forked = invoke("runs", "fork", run_id, "--at", "2/1/1", "--model", "sim:other",
                    "--run-id", "f1", "--store", store)
    assert forked.exit_code == 0, forked.output
    assert "sim:other" in forked.stdout and "It is 21C." in forked.stdout
    shown = invoke("runs", "show", "f1", "--store", store)
    assert f"forked from {run_id} at step 2/1/1 with model sim:other" in shown.stdout
    assert "forked from" in invoke("runs", "trace", "f1", "--store", store).stdout
    (tmp_path / f"{module}.py").write_text(MODULE.replace(
        "await ctx.step(prep)", "await ctx.step(prep)\n    await ctx.step(prep)"))
    del sys.modules[module]
    changed = invoke("runs", "replay", run_id, "--json", "--store", store)
    assert changed.exit_code == 1
    report = json.loads(changed.stdout)
    assert report["deterministic"] is False and report["step_id"] == "2"
    missing = invoke("runs", "fork", run_id, "--at", "7", "--store", store)
    assert missing.exit_code == 2 and "has no step 7" in missing.stderr


def test_a_tiny_real_cost_is_not_shown_as_zero() -> None:
    from stalwart.cli._trace import fmt_cost

    assert [fmt_cost(c) for c in (0.0, 4.5e-06, 0.0123, 2.5, None)] == [
        "$0", "$4.5e-06", "$0.0123", "$2.50", "?"]
