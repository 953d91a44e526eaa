"""Scripts: a module that runs a program when imported is refused with the guard to
add, and a run started by ``python script.py`` resumes without --import."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Cli, Project

UNGUARDED = '''
import asyncio
from pathlib import Path

import stalwart as sw

app = sw.Runtime()


@app.workflow
async def wf(ctx: sw.Context) -> str:
    return "done"


async def main() -> None:
    Path("main-ran").write_text("the program ran at import")
    async with app:
        print(await app.run(wf))

{call}
'''

GUARDED = '''
import asyncio
import os
import time
from pathlib import Path

import stalwart as sw

app = sw.Runtime()


def slow(n: int) -> int:
    if os.environ.get("HANG"):
        Path("in-step").write_text("started")
        time.sleep(60)
    return n * 2


@app.workflow
async def wf(ctx: sw.Context, n: int) -> int:
    return await ctx.step(slow, n)


async def main() -> None:
    async with app:
        print(await app.run(wf, 21, run_id="script-run"))


if __name__ == "__main__":
    asyncio.run(main())
'''


@pytest.mark.parametrize("args", [
    ["run", "unguarded:wf"], ["resume", "--import", "unguarded"],
    ["worker", "--import", "unguarded"],
], ids=["run", "resume", "worker"])
def test_a_top_level_asyncio_run_is_refused_with_the_guard_to_add(
        cli: Cli, project: Project, args: list[str]) -> None:
    """Importing a module whose top level calls asyncio.run() would run that program:
    exit 2, one line naming the file and line and the `if __name__ == "__main__":` guard;
    the program did not run."""
    source = UNGUARDED.replace("{call}", "asyncio.run(main())")
    (project.dir / "unguarded.py").write_text(source)
    line = source.splitlines().index("asyncio.run(main())") + 1
    proc = cli.script(*args, "--store", project.store, cwd=project.dir, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1
    assert f"({project.dir / 'unguarded.py'}:{line})" in proc.stderr
    assert 'put that call under `if __name__ == "__main__":`' in proc.stderr
    assert not (project.dir / "main-ran").exists()


def test_a_runner_the_source_check_cannot_see_is_reported_at_import(
        cli: Cli, project: Project) -> None:
    """asyncio.run reached through another name still fails inside the CLI's event loop;
    that failure says the same thing."""
    (project.dir / "unguarded.py").write_text(
        UNGUARDED.replace("{call}", "runner = asyncio.run\nrunner(main())"))
    result = cli("resume", "--import", "unguarded", "--store", project.store)
    line = cli.one_line_error(result, 2)
    assert "it runs an event loop when imported" in line
    assert 'if __name__ == "__main__":' in line


@pytest.mark.slow
def test_a_run_started_by_python_script_py_resumes_without_import(
        cli: Cli, project: Project) -> None:
    """`python app.py` records the run's workflow as app:wf, not __main__:wf, so after a
    SIGKILL `stalwart resume` imports it by itself and finishes the run."""
    (project.dir / "app_script.py").write_text(GUARDED)
    env = cli.env(HANG="1", STALWART_STORE=project.store)
    proc = subprocess.Popen([sys.executable, "app_script.py"], cwd=project.dir, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (project.dir / "in-step").exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    shown = json.loads(cli("runs", "show", "script-run", "--json", "--store",
                           project.store).stdout)
    assert (shown["status"], shown["workflow_ref"]) == ("running", "app_script:wf")
    resumed = cli.script("resume", "script-run", "--store", project.store, cwd=project.dir)
    assert resumed.returncode == 0, resumed.stderr
    done = json.loads(cli("runs", "show", "script-run", "--json", "--store",
                          project.store).stdout)
    assert (done["status"], done["result"]) == ("completed", 42)


def test_a_legacy_main_reference_says_how_to_resume(cli: Cli, project: Project) -> None:
    """A run recorded as __main__:wf (python -c, a notebook, older stalwarts) names the
    --import to pass and the guard its module needs."""
    from stalwart.cli._common import CliError
    from stalwart.cli._loader import resolve_ref

    with pytest.raises(CliError) as info:
        resolve_ref("__main__:wf")
    message = str(info.value)
    assert "--import MODULE" in message and 'if __name__ == "__main__":' in message


def test_python_dash_m_stalwart_is_the_cli(project: Project) -> None:
    """``python -m stalwart`` works where the console script is not on the PATH: the
    same commands, the same one-line errors."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "stalwart", "--version"], cwd=project.dir,
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.startswith("stalwart "), done.stderr
    bad = subprocess.run([sys.executable, "-m", "stalwart", "runs", "show", "nope"],
                         cwd=project.dir, env=env, capture_output=True, text=True,
                         timeout=60, check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: no stalwart journal")
