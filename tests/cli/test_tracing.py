"""The CLI with a module whose runtime traces (``Runtime(tracing=Tracing())``), configured
by the environment: ``OTEL_SDK_DISABLED`` turns tracing off, console spans go to stderr."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import Cli, Project

MODULE = '''
import stalwart as sw
from stalwart.telemetry import Tracing

app = sw.Runtime(store="traced.db", tracing=Tracing())


def greet(name: str) -> str:
    return f"hello {name}"


@app.workflow
async def hello(ctx: sw.Context, name: str) -> str:
    return await ctx.step(greet, name)
'''


def test_otel_sdk_disabled_turns_tracing_off_and_the_app_loads(project: Project,
                                                               cli: Cli) -> None:
    """With OTEL_SDK_DISABLED=true the module imports and the run completes (Tracing()
    raised at import before: no SDK provider to trace with)."""
    (project.dir / "traced_app.py").write_text(MODULE)
    done = cli.script("run", "traced_app:hello", "--input", '{"name": "ada"}',
                      cwd=project.dir, OTEL_SDK_DISABLED="true", OTEL_TRACES_EXPORTER="console")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == "hello ada"
    assert '"name": "workflow hello"' not in done.stderr  # nothing traced


def test_console_spans_go_to_stderr_so_stdout_pipes_to_jq(project: Project, cli: Cli) -> None:
    """OTEL_TRACES_EXPORTER=console: stdout holds the result alone, the spans are on stderr."""
    (project.dir / "traced_app.py").write_text(MODULE)
    done = cli.script("run", "traced_app:hello", "--input", '{"name": "ada"}',
                      cwd=project.dir, OTEL_TRACES_EXPORTER="console",
                      OTEL_METRICS_EXPORTER="none")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == "hello ada"
    assert '"name": "workflow hello"' in done.stderr
    assert '"name": "step greet"' in done.stderr
