"""Tools described by a JSON schema (MCP servers' tools, A2A agents) are validated with
jsonschema: every extra that brings such tools installs it, and without it the error says
which extras do."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

import stalwart as sw
from stalwart.engine._schema import schema_validator

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("extra", ["mcp", "a2a"])
def test_every_extra_that_brings_schema_tools_installs_jsonschema(extra: str) -> None:
    """``pip install -e '.[a2a]'`` alone runs examples/a2a_pair.py (it failed: the a2a
    extra did not list jsonschema, which a remote agent's tool needs)."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any(req.startswith("jsonschema") for req in extras[extra]), extras[extra]


def test_without_jsonschema_the_error_names_the_extras_that_install_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No jsonschema: a ConfigurationError naming both extras, not a bare ImportError."""
    monkeypatch.setitem(sys.modules, "jsonschema", None)  # import jsonschema fails
    with pytest.raises(sw.ConfigurationError) as caught:
        schema_validator("lookup", {"type": "object"})
    assert "pip install -e '.[a2a]' in a checkout, or '.[mcp]'" in str(caught.value)
