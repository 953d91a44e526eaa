"""``stalwart run`` and ``resume`` show what happens, as it happens, on stderr.

The run id comes first, then a line per step started, retried, parked and completed:
plain lines when stderr is a pipe, styled lines and a spinner when it is a terminal
(tested through a pseudo-terminal), nothing with ``--quiet``. stdout carries the result
alone either way, so ``stalwart run ... | jq`` works. Ctrl-C hands the run back and says
how to finish it; ``runs show`` then shows only the executions that exist.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

MODULE = '''
import asyncio

import stalwart as sw

app = sw.Runtime(policy=sw.Policy(retry=sw.Retry(max_attempts=3, initial=0.05,
                                                 max_backoff=0.1)))


async def fetch(n: int) -> int:
    await asyncio.sleep(0.05)
    return n * 2


@app.tool
def weather(city: str, call: sw.ToolCall) -> str:
    """Current weather."""
    if call.attempt == 1:
        raise ConnectionError("reset by peer")
    return f"{city}: sunny"


@app.workflow
async def story(ctx: sw.Context, n: int) -> dict[str, object]:
    doubled = await ctx.step(fetch, n)
    sky = await ctx.tool(weather, city="Oslo")
    return {"doubled": doubled, "sky": sky}


@app.workflow
async def gated(ctx: sw.Context) -> str:
    return str(await ctx.wait_for_signal("approve"))


@app.workflow
async def long(ctx: sw.Context, n: int) -> int:
    total = 0
    for i in range(n):
        total += await ctx.step(fetch, i)
    return total
'''

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass(frozen=True)
class Project:
    dir: Path
    module: str
    store: str

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), cwd=self.dir, env=_env(),
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "stalwart.cli", *args, "--store", self.store]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STALWART_")}
    env["COLUMNS"] = "200"
    return env


@pytest.fixture
def project(tmp_path: Path) -> Project:
    module = f"progress_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(MODULE)
    return Project(tmp_path, module, str(tmp_path / "journal.db"))


def test_piped_run_prints_the_run_id_then_one_plain_line_per_step(project: Project) -> None:
    """Off a terminal: the run id first, then started/completed lines, the retried
    attempt with its error and its next try, no escape codes; stdout is the result."""
    done = project.run("run", f"{project.module}:story", "-i", "21", "--run-id", "p1")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"doubled": 42, "sky": "Oslo: sunny"}
    lines = done.stderr.splitlines()
    # Starts and ends are said as they happen here; the retry is read from the journal
    # a moment after it is written, so on a loaded machine it may come a line later.
    attempt = next(i for i, line in enumerate(lines) if "attempt 1 failed" in line)
    assert re.fullmatch(r"step 2 tool:weather attempt 1 failed \(builtins\.ConnectionError: "
                        r"reset by peer\); retry at [\d:.]+", lines.pop(attempt)), lines
    assert attempt > 3
    assert lines[0] == "run p1 started: story"
    assert lines[1] == "step 1 fetch started"
    assert re.fullmatch(r"step 1 fetch completed in \d+ms", lines[2]), lines
    assert lines[3] == "step 2 tool:weather started"
    assert re.fullmatch(r"step 2 tool:weather completed in \d+ms", lines[4]), lines
    assert lines[5].startswith("run p1 completed in "), lines
    assert len(lines) == 6, lines
    assert not ANSI.search(done.stderr)


def test_quiet_prints_only_the_result(project: Project) -> None:
    """``--quiet``: nothing on stderr, the result on stdout."""
    done = project.run("run", f"{project.module}:story", "-i", "1", "--quiet")
    assert done.returncode == 0, done.stderr
    assert (done.stderr, json.loads(done.stdout)["doubled"]) == ("", 2)


def _read_until(fd: int, text: str, timeout: float = 60) -> str:
    """What the pseudo-terminal shows until ``text`` appears (escape codes removed)."""
    seen, deadline = b"", time.monotonic() + timeout
    while text not in ANSI.sub("", seen.decode(errors="replace")):
        assert time.monotonic() < deadline, seen
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
    return seen.decode(errors="replace")


def test_on_a_terminal_lines_are_styled_a_wait_shows_and_stdout_stays_clean(
        project: Project) -> None:
    """stderr a terminal, stdout a pipe (``| jq``): styled lines and a spinner that says
    the run waits for its signal and how to send it; the result alone on stdout."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(project.argv("run", f"{project.module}:gated", "--run-id", "t1"),
                            cwd=project.dir, env=_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=terminal, text=True)
    os.close(terminal)
    try:
        shown = _read_until(controller, "waiting for signal 'approve'")
        assert "\x1b[" in shown  # styled
        plain = ANSI.sub("", shown)
        assert "run t1 started: gated" in plain
        assert "send it: stalwart signal t1 approve --payload JSON" in plain
        sent = project.run("signal", "t1", "approve", "--payload", '"yes"')
        assert sent.returncode == 0, sent.stderr
        shown += _read_until(controller, "completed in")
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(controller)
    assert proc.returncode == 0
    assert out == '"yes"\n'
    assert "signal 'approve' received" in ANSI.sub("", shown)


def test_ctrl_c_hands_the_run_back_says_how_to_finish_it_and_resume_does(
        project: Project) -> None:
    """SIGINT mid-run: exit 130 with "interrupted; run X handed back; `stalwart resume
    X`"; the run is pending, and ``runs show`` shows one execution handed back (no
    "taken over by #2" without a #2). ``resume`` prints its steps and finishes the run,
    and ``runs show`` then shows #1 continued by #2, the later steps done in #2."""
    proc = subprocess.Popen(
        project.argv("run", f"{project.module}:long", "-i", "6", "--run-id", "c1"),
        cwd=project.dir, env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = []
    try:
        while "step 3 fetch started" not in (line := proc.stderr.readline()):
            assert line, "".join(seen)
            seen.append(line)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert out == ""
    assert err.splitlines()[-1] == (
        f"interrupted; run c1 handed back; `stalwart resume c1 --store {project.store}` "
        "finishes it")
    shown = project.run("runs", "show", "c1", "--json")
    story = json.loads(shown.stdout)
    assert story["status"] == "pending"
    assert [(e["number"], e["ended"], e["followed"]) for e in story["executions"]] == [
        (1, "handed back (shutdown)", False)]
    table = project.run("runs", "show", "c1").stdout
    assert "taken over" not in table and "handed back (shutdown)" in table

    resumed = project.run("resume", "c1")
    assert resumed.returncode == 0, resumed.stderr
    assert "run c1 resumed" in resumed.stderr
    assert "step 6 fetch completed in" in resumed.stderr
    gated = project.run("run", f"{project.module}:gated", "--run-id", "g1", "--no-wait")
    assert project.run("signal", "g1", "approve", "--payload", "1").returncode == 0
    # A run that ends at once: what it did is said before resume returns.
    finished = project.run("resume", "g1")
    assert gated.returncode == finished.returncode == 0, finished.stderr
    assert "step 1 signal 'approve' received" in finished.stderr, finished.stderr
    story = json.loads(project.run("runs", "show", "c1", "--json").stdout)
    assert story["status"] == "completed" and story["result"] == 30
    assert [(e["number"], e["ended"], e["followed"]) for e in story["executions"]] == [
        (1, "handed back (shutdown)", True), (2, "completed", False)]
    done_in = {s["step_id"]: s["execution"] for s in story["steps"]}
    assert done_in["1"] == 1 and done_in["6"] == 2
    assert "continued by #2" in project.run("runs", "show", "c1").stdout


AGENT = '''
import stalwart as sw

app = sw.Runtime()


@app.tool
def lookup(city: str) -> str:
    """Weather."""
    return f"{city}: sunny"


def script(request: sw.ModelRequest) -> object:
    tool_turns = [m for m in request.messages if m.role == "tool"]
    if not tool_turns:
        return sw.ToolCallRequest(id="c1", name="lookup", arguments='{"city": "Oslo"')
    if len(tool_turns) == 1:
        return sw.ToolCallRequest.create("c2", "lookup", {"city": "Oslo"})
    return "sunny"


agent = sw.Agent("bot", sw.FunctionModel(script), tools=[lookup])


@app.workflow
async def ask(ctx: sw.Context) -> str:
    return await agent.run(ctx, "Weather in Oslo?")
'''


def test_a_repaired_tool_call_shows_in_run_events_show_and_trace(project: Project) -> None:
    """The malformed call the model made and got back shows live in ``run``, as an
    event in ``runs events``, under its turn in ``runs show`` and in ``runs trace``."""
    (project.dir / "agentmod.py").write_text(AGENT)
    done = project.run("run", "agentmod:ask", "--run-id", "a1")
    assert done.returncode == 0, done.stderr
    assert ("step 1 asked for tool 'lookup' with a malformed call (invalid_json: "
            in done.stderr), done.stderr
    events = json.loads(project.run("runs", "events", "a1", "--json").stdout)
    (repair,) = [e for e in events if e["kind"] == "tool_call_repaired"]
    assert (repair["step_id"], repair["name"]) == ("1", "lookup")
    show = project.run("runs", "show", "a1").stdout
    assert re.search(r"repaired\s+tool lookup: invalid_json: arguments are not", show), show
    trace = project.run("runs", "trace", "a1").stdout
    assert "repair tool lookup: invalid_json" in trace, trace
    assert "sent back to the model" in trace


def test_the_step_watcher_forwards_every_interceptor_hook() -> None:
    """The hook that tells ``run`` a step started wraps the runtime's interceptor
    (tracing): it must forward every hook, including ones added later."""
    import inspect

    from stalwart.cli._progress import _StepStarts
    from stalwart.telemetry import Interceptor

    hooks = {name for name, _ in inspect.getmembers(Interceptor, inspect.isfunction)
             if not name.startswith("_")}
    assert hooks and {h for h in hooks if h not in vars(_StepStarts)} == set()


def test_ctrl_c_while_the_run_is_parked_says_it_waits_rather_than_handed_back(
        project: Project) -> None:
    """A run parked on its signal is held by no process: Ctrl-C says it is waiting and
    who continues it, not that it was handed back."""
    proc = subprocess.Popen(project.argv("run", f"{project.module}:gated", "--run-id", "w1"),
                            cwd=project.dir, env=_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    try:
        while "run parked" not in (line := proc.stderr.readline()):
            assert line
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.splitlines()[-1] == (
        "interrupted; run w1 is waiting for a signal or a child run; a running worker, or "
        f"`stalwart resume w1 --store {project.store}`, continues it")
