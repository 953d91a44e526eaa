"""Fixtures for the CLI tests: a project folder with a workflow module, and runners.

Every test gets its own folder (the working directory), a module with a unique name in
it, and a journal path inside it; nothing is written into the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from stalwart.cli import app

WORKFLOWS = '''
import asyncio
import os
from pathlib import Path

import stalwart as sw

app = sw.Runtime()


def add(a: int, b: int) -> int:
    return a + b


@app.workflow
async def adder(ctx: sw.Context, a: int, b: int) -> int:
    return await ctx.step(add, a, b)


@app.workflow
async def fanout(ctx: sw.Context, n: int) -> list[int]:
    return await ctx.gather(*(ctx.step(add, i, i) for i in range(n)))


@app.workflow
async def approval(ctx: sw.Context, item: str) -> str:
    decision = await ctx.wait_for_signal("approve")
    return f"{item}: {decision['by']}"


async def block(marker: str) -> str:
    Path(marker).write_text("started")
    if os.environ.get("CLI_TEST_HANG"):
        await asyncio.sleep(60)
    return "done"


@app.workflow
async def crashy(ctx: sw.Context, marker: str) -> str:
    first = await ctx.step(add, 1, 2)
    return f"{first}:{await ctx.step(block, marker)}"


@app.workflow
async def child_wf(ctx: sw.Context, x: int) -> int:
    return await ctx.step(add, x, 1)


@app.workflow
async def parent_wf(ctx: sw.Context, x: int) -> int:
    return await ctx.child(child_wf, x)


@app.workflow
async def boom(ctx: sw.Context) -> None:
    raise ValueError("kaboom")


def _service_is_up(marker: str) -> bool:
    return Path(marker).exists()


async def lookup(query: str, call: sw.ToolCall, marker: str) -> str:
    if not _service_is_up(marker):
        raise TimeoutError(f"lookup service down (attempt {call.attempt})")
    return f"found {query}"


lookup_tool = sw.Tool(lookup, policy=sw.Policy(
    retry=sw.Retry(max_attempts=3, initial=0.001, max_backoff=0.002)))


@app.workflow
async def fragile(ctx: sw.Context, query: str, marker: str) -> str:
    first = await ctx.step(add, 1, 2)
    return f"{first}:{await ctx.tool(lookup_tool, query=query, marker=marker)}"


NOT_A_WORKFLOW = 42
'''


@dataclass(frozen=True)
class Project:
    dir: Path
    module: str
    store: str

    def wf(self, name: str) -> str:
        return f"{self.module}:{name}"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    """A working directory holding a workflow module with a unique name and a journal path."""
    module = f"cli_wf_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{module}.py").write_text(WORKFLOWS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the CLI puts the cwd on sys.path
    monkeypatch.delenv("STALWART_STORE", raising=False)
    monkeypatch.delenv("CLI_TEST_HANG", raising=False)
    yield Project(tmp_path, module, str(tmp_path / "journal.db"))
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        del sys.modules[name]


class Cli:
    """Runs the CLI in this process (``cli(...)``) or as the console script (``script``)."""

    def __call__(self, *args: str) -> Result:
        return CliRunner().invoke(app, list(args))

    @staticmethod
    def one_line_error(result: Result, code: int) -> str:
        """Assert the command failed with ``code``, exactly one ``error:`` line on stderr,
        its last (``run`` and ``resume`` print a run's progress before it), and no
        traceback anywhere; return that line."""
        assert result.exit_code == code, result.output
        lines = result.stderr.strip().splitlines()
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1 and lines and lines[-1] == errors[0], result.stderr
        assert "Traceback" not in result.output
        return errors[0]

    @staticmethod
    def exe() -> str:
        """The installed ``stalwart`` console script."""
        beside = Path(sys.executable).with_name("stalwart")
        found = str(beside) if beside.exists() else shutil.which("stalwart")
        assert found, "the stalwart console script is not installed (pip install -e .)"
        return found

    @staticmethod
    def env(**extra: str) -> dict[str, str]:
        """The environment of a child process: CI, no store override, a fixed width."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("STALWART_STORE", "CLI_TEST_HANG")}
        env.update({"CI": "true", "COLUMNS": "120", **extra})
        return env

    def script(self, *args: str, cwd: Path, timeout: float = 60,
               **env: str) -> subprocess.CompletedProcess[str]:
        """Run the console script in a child process, without stdin or a TTY."""
        return subprocess.run([self.exe(), *args], cwd=cwd, env=self.env(**env),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False)


@pytest.fixture
def cli() -> Cli:
    """The CLI, in process or as a child process."""
    return Cli()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search path is a fresh, empty schema, dropped after the
    test (skipped without ``STALWART_TEST_POSTGRES_URL``)."""
    from stalwart.testing import postgres_schema

    url = os.environ.get("STALWART_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("set STALWART_TEST_POSTGRES_URL=postgresql://... to run this test")
    with postgres_schema(url, prefix="stalwart_cli") as scoped:
        yield scoped
