"""``stalwart tools MODULE:REGISTRY``: tools, source, scopes, health, breaker state
(--json too); a target that is not a registry is one line, exit 2."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import Cli

REMOTE = Path(__file__).resolve().parents[1] / "remote"


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "state").mkdir()
    argv = [sys.executable, str(REMOTE / "mcp_test_server.py"), str(tmp_path / "state")]
    (tmp_path / "toolbox.py").write_text(textwrap.dedent(f"""
        import stalwart as sw

        app = sw.Runtime(":memory:")
        registry = sw.ToolRegistry(app)

        @app.tool(effect="read", scopes={{"kb:read"}})
        def search(q: str) -> str:
            return q

        registry.add(search, health=lambda: "index rebuilding")
        registry.add_server(sw.MCPServer.stdio({argv!r}, name="faulty", prefix="f",
                                               scopes={{"demo:echo"}}))
        not_a_registry = 3
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_tools_lists_source_scopes_health_and_breaker(
        cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--json: every tool with its source, effect, scopes, health (and why), breaker
    and whether an agent offers it; the table shows the same."""
    _module(tmp_path, monkeypatch)
    result = cli("tools", "toolbox:registry", "--json")
    assert result.exit_code == 0, result.output
    tools = {t["name"]: t for t in json.loads(result.stdout)["tools"]}
    assert tools["search"] | {"checked_at": None} == {
        "name": "search", "source": "local", "effect": "read", "scopes": ["kb:read"],
        "healthy": False, "reason": "index rebuilding", "checked_at": None,
        "breaker": "", "available": False}
    assert tools["f_echo"]["source"] == "mcp:faulty" and tools["f_echo"]["healthy"]
    assert tools["f_echo"]["scopes"] == ["demo:echo"] and tools["f_echo"]["available"]
    table = cli("tools", "toolbox:registry", "--plain")
    assert table.exit_code == 0, table.output
    rows = [line.split("\t") for line in table.stdout.splitlines()]
    assert rows[0] == ["tool", "source", "effect", "scopes", "health", "breaker", "offered"]
    assert ["search", "local", "read", "kb:read", "unhealthy: index rebuilding", "-",
            "no"] in rows


def test_tools_bad_target(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not MODULE:REGISTRY, or not a registry: one line, exit 2."""
    _module(tmp_path, monkeypatch)
    assert "expected MODULE:REGISTRY" in cli.one_line_error(cli("tools", "toolbox"), 2)
    assert "is not a sw.ToolRegistry (int)" in cli.one_line_error(
        cli("tools", "toolbox:not_a_registry"), 2)
