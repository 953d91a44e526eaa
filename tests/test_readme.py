"""The README cannot rot: every Python block runs as pasted, and what it cites exists
(files, and the ``stalwart`` commands and options it and docs/ tell a reader to type).
The blocks of docs/, mostly fragments, compile against the API: every ``sw.NAME`` they
use exists and takes the keywords they pass.

Each ```python block is run, in README order, as its own script in one temporary folder,
offline (no API keys, no ``STALWART_*``/``OTEL_*`` variables, no network), each bounded
in time. A block whose first line names a file (``# app.py``) is saved under that name,
so the blocks after it can import it, as a reader would. A block whose first line starts
with ``# sketch:`` is a fragment that needs something the reader must bring (the rest of
the line says what); it is only compiled.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

import stalwart as sw
from stalwart.cli import app as cli_app
from stalwart.errors import _install_hint

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
SKETCH = "# sketch:"
_FILE_NAME = re.compile(r"#\s*([\w./-]+\.py)\s*$")


@dataclass(frozen=True)
class Block:
    line: int
    """The README line of the block's opening fence."""
    code: str

    @property
    def file_name(self) -> str | None:
        """The file a block names on its first line (``# app.py``), if any."""
        first = self.code.split("\n", 1)[0]
        found = _FILE_NAME.fullmatch(first.strip())
        return found.group(1) if found else None

    @property
    def is_sketch(self) -> bool:
        return self.code.lstrip().startswith(SKETCH)


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks of a markdown text (indented ones too), in order."""
    out = []
    for m in re.finditer(r"^([ \t]*)```python[ \t]*\n(.*?)^\1```", text, re.S | re.M):
        indent = m.group(1)
        lines = [ln.removeprefix(indent) for ln in m.group(2).splitlines()]
        out.append(Block(text.count("\n", 0, m.start()) + 1, "\n".join(lines) + "\n"))
    return out


def _offline_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("STALWART_", "OPENAI_", "ANTHROPIC_", "OTEL_"))}
    env["HOME"] = str(tmp)  # nothing the reader's home holds leaks in
    env["OTEL_TRACES_EXPORTER"] = "none"  # a Tracing() block sends nowhere
    env["OTEL_METRICS_EXPORTER"] = "none"
    return env


BLOCKS = python_blocks(README.read_text())
DOC_BLOCKS = python_blocks((ROOT / "docs" / "events.md").read_text())


def test_the_readme_has_python_blocks_and_the_parser_finds_them() -> None:
    """The extraction sees the README's blocks (a test over zero blocks proves nothing)."""
    assert len(BLOCKS) >= 6
    assert any(b.file_name == "app.py" for b in BLOCKS)
    assert python_blocks("x\n  ```python\n  a = 1\n  ```\n") == [Block(2, "a = 1\n")]
    assert Block(1, "# sketch: needs your database\nx = db\n").is_sketch
    assert Block(1, "# app.py\nimport stalwart\n").file_name == "app.py"


@pytest.mark.slow
def test_every_python_block_runs_as_pasted(tmp_path: Path) -> None:
    """Each block, run in README order in one folder (files saved under the names they
    give), exits 0 within a minute, offline; sketches compile."""
    env = _offline_env(tmp_path)
    failures = []
    for i, block in enumerate(BLOCKS):
        where = f"README.md:{block.line}"
        compile(block.code, where, "exec")  # every block, sketches included
        if block.is_sketch:
            continue
        name = block.file_name or f"readme_block_{i}.py"
        (tmp_path / name).write_text(block.code)
        try:
            done = subprocess.run([sys.executable, name], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=60,
                                  stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            failures.append(f"{where}: still running after 60 s")
            continue
        if done.returncode != 0:
            failures.append(f"{where}: exit {done.returncode}\n{done.stderr[-2000:]}")
    assert not failures, "\n\n".join(failures)


def test_the_events_page_example_streams_a_run(tmp_path: Path) -> None:
    """docs/events.md's example runs as pasted and prints the run's events, then 42."""
    (block,) = DOC_BLOCKS
    (tmp_path / "events_demo.py").write_text(block.code)
    done = subprocess.run([sys.executable, "events_demo.py"], cwd=tmp_path,
                          env=_offline_env(tmp_path), capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("1 run_created None double")
    assert lines[-2].endswith("run_completed None None") and lines[-1] == "42"


def test_the_quickstart_block_prints_the_approved_run(tmp_path: Path) -> None:
    """The 'run it from Python' block finishes the README's workflow, approved."""
    app = next(b for b in BLOCKS if b.file_name == "app.py")
    runner = next(b for b in BLOCKS if "from app import app, research" in b.code)
    (tmp_path / "app.py").write_text(app.code)
    (tmp_path / "main.py").write_text(runner.code)
    done = subprocess.run([sys.executable, "main.py"], cwd=tmp_path,
                          env=_offline_env(tmp_path), capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, done.stderr
    assert "'topic': 'GPUs'" in done.stdout and "'approved': True" in done.stdout


_CITED = re.compile(r"\]\(((?!https?:|#|mailto:)[^)\s#]+)(?:#[^)]*)?\)"
                    r"|`((?:src|tests|bench|docs|\.ci)/[\w./-]+)`")


@pytest.mark.parametrize("doc", [README, *sorted((ROOT / "docs").glob("*.md"))],
                         ids=lambda p: p.name)
def test_every_file_a_doc_cites_is_in_the_repository(doc: Path) -> None:
    """Links and cited paths in the README and docs/ resolve inside the repository (the
    docs are self-contained: nothing points at files a clone does not have)."""
    text = doc.read_text()
    missing = []
    for m in _CITED.finditer(text):
        target = m.group(1) or m.group(2)
        base = doc.parent if m.group(1) else ROOT
        if not (base / target).exists():
            missing.append(target)
    assert not missing, f"{doc.name} cites files that are not in the repository: {missing}"
    assert "shared/" not in text, f"{doc.name} points outside the repository (shared/)"


_COMMAND_SPAN = re.compile(r"`(stalwart [^`\n]+)`")
_FENCED = re.compile(r"^([ \t]*)```(\w*)[ \t]*\n(.*?)^\1```", re.S | re.M)
_SHELL = {"bash", "sh", "shell", "console", ""}


def cited_commands(text: str) -> list[str]:
    """The ``stalwart ...`` commands a markdown text names: in code spans, and on the
    lines of its shell (and unlabelled) blocks, a ``$ `` prompt and ``# comment`` cut."""
    found = [m.group(1) for m in _COMMAND_SPAN.finditer(text.replace("`\n", "` "))]
    for block in _FENCED.finditer(text):
        for line in block.group(3).splitlines() if block.group(2) in _SHELL else ():
            line = line.strip().removeprefix("$ ").split("  #")[0].split(" # ")[0].strip()
            if line.startswith("stalwart "):
                found.append(line)
    return found


def command_problems(command: str, root: object) -> list[str]:
    """What in ``command`` the CLI has not: an unknown (sub)command or option. Words in
    capitals, ``...`` and ``[optional]`` brackets are placeholders, as in a usage line."""
    words = command.split("|")[0].split("&&")[0].split()[1:]
    cmd, depth = root, 0  # typer's own click: its groups are told by their commands
    while depth < len(words) and words[depth] in getattr(cmd, "commands", {}):
        cmd, depth = cmd.commands[words[depth]], depth + 1  # type: ignore[attr-defined]
    rest = words[depth:]
    if hasattr(cmd, "commands") and rest and rest[0][:1].isalpha():
        return [f"{command!r}: no command {rest[0]!r}"]
    options = {"--help", *(o for p in getattr(cmd, "params", ())
                           for o in (*p.opts, *p.secondary_opts))}
    flags = (w.strip("[]").split("=")[0] for w in rest)
    return [f"{command!r}: no option {f}" for f in flags if f.startswith("--") and f != "--"
            and f not in options]


def test_the_command_check_sees_commands_and_catches_what_does_not_exist() -> None:
    """The extraction finds spans and shell lines; the check refuses an unknown
    subcommand or option and passes placeholders (a check that passes everything proves
    nothing)."""
    root = typer.main.get_command(cli_app)
    text = "Run `stalwart runs show RUN_ID`.\n\n```bash\n$ stalwart dlq list   # all\n```\n"
    assert cited_commands(text) == ["stalwart runs show RUN_ID", "stalwart dlq list"]
    assert command_problems("stalwart runs fork RUN_ID --at STEP [--model M]", root) == []
    assert command_problems("stalwart runs cancel", root) == [
        "'stalwart runs cancel': no command 'cancel'"]
    assert command_problems("stalwart run app:wf --no-such", root) == [
        "'stalwart run app:wf --no-such': no option --no-such"]


@pytest.mark.parametrize("doc", [README, *sorted((ROOT / "docs").glob("*.md"))],
                         ids=lambda p: p.name)
def test_every_command_a_doc_cites_exists_with_its_options(doc: Path) -> None:
    """Each ``stalwart ...`` a doc tells the reader to type is a command of the CLI, and
    each ``--option`` it passes is one that command takes."""
    root = typer.main.get_command(cli_app)
    problems = [p for c in cited_commands(doc.read_text()) for p in command_problems(c, root)]
    assert not problems, f"{doc.name} cites what the CLI does not have: {problems}"


def test_the_readme_names_every_extra_and_installs_from_a_checkout() -> None:
    """The README's list of extras is pyproject's, and every ``pip install`` it shows
    installs from the checkout (``-e``), as its opening says stalwart is installed."""
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())
                 ["project"]["optional-dependencies"])
    text = README.read_text()
    listed = re.search(r"the extras are ([^(]*)\(", text)
    assert listed, "the README no longer says which extras there are"
    assert set(re.findall(r"`([\w-]+)`", listed.group(1))) == extras
    installs = re.findall(r"pip install [^`\n]*", text)
    assert installs and all(" -e " in f"{i} " for i in installs), installs


def test_the_readme_links_every_docs_page() -> None:
    """A reader who starts at the README can reach every page of docs/ from it."""
    text = README.read_text()
    unlinked = [p.name for p in sorted((ROOT / "docs").glob("*.md"))
                if f"](docs/{p.name})" not in text]
    assert not unlinked, f"README.md links no docs/{unlinked}"


def _fragment_tree(block: Block, where: str) -> ast.Module:
    """A docs block parsed as a module, or, when it awaits at top level (a fragment of a
    workflow's body), as the body of an ``async def``."""
    try:
        return ast.parse(block.code, where)
    except SyntaxError:
        return ast.parse("async def _fragment():\n" + textwrap.indent(block.code, "    "),
                         where)


def api_problems(tree: ast.Module, where: str) -> list[str]:
    """The ``sw.NAME`` a block uses that stalwart does not export, and the keywords it
    passes to ``sw.NAME(...)`` that NAME does not take."""
    problems = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id == "sw"):
            continue
        if not hasattr(sw, node.attr):
            problems.append(f"{where}: sw.{node.attr} does not exist")
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "sw"
                and hasattr(sw, node.func.attr)):
            continue
        try:
            params = inspect.signature(getattr(sw, node.func.attr)).parameters
        except (TypeError, ValueError):
            continue
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            continue
        problems += [f"{where}: sw.{node.func.attr}() takes no {kw.arg}="
                     for kw in node.keywords if kw.arg is not None and kw.arg not in params]
    return problems


def test_the_api_check_catches_a_missing_name_and_keyword() -> None:
    """The check refuses a name stalwart does not export and a keyword a callable does
    not take, and passes what exists."""
    tree = ast.parse("sw.Retry(max_attempts=3)\nsw.Retryy()\nsw.Retry(max_attemps=3)\n")
    assert api_problems(tree, "x") == ["x: sw.Retryy does not exist",
                                       "x: sw.Retry() takes no max_attemps="]


@pytest.mark.parametrize("doc", [README, *sorted((ROOT / "docs").glob("*.md"))],
                         ids=lambda p: p.name)
def test_every_python_block_of_the_docs_compiles_against_the_api(doc: Path) -> None:
    """The docs' Python blocks (fragments as much as programs) compile, and every
    ``sw.NAME`` and keyword of ``sw.NAME(...)`` they use is stalwart's: a rename or a
    removed parameter cannot leave a page behind."""
    problems = []
    for block in python_blocks(doc.read_text()):
        where = f"{doc.name}:{block.line}"
        problems += api_problems(_fragment_tree(block, where), where)
    assert not problems, "\n".join(problems)



def test_a_missing_extra_is_named_with_the_readmes_install_command() -> None:
    """Every error naming a missing extra says ``pip install -e '.[x]'``, as the README
    installs stalwart, never ``pip install 'stalwart[x]'`` (which asks the package index
    for a project of that name): the text comes from one place, errors._install_hint."""
    assert _install_hint("postgres") == "pip install -e '.[postgres]' in a checkout"
    assert "pip install -e '.[postgres]'" in README.read_text()
    elsewhere = [f"{path.relative_to(ROOT)}:{n}"
                 for path in sorted([*(ROOT / "src").rglob("*.py"), *EXAMPLES])
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if "pip install 'stalwart[" in line]
    assert not elsewhere, elsewhere
