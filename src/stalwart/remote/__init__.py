"""Tools and agents from elsewhere: MCP servers (the ``mcp`` extra), a registry of tools
with health checks, A2A agents (the ``a2a`` extra). The SDKs load on first use."""

from __future__ import annotations

from ._a2a import A2AAgent as A2AAgent
from ._a2a import A2AServer as A2AServer
from ._mcp import META_PREFIX as META_PREFIX
from ._mcp import MCPServer as MCPServer
from ._mcp import MCPServerStatistics as MCPServerStatistics
from ._registry import DEFAULT_TOOL_POLICY as DEFAULT_TOOL_POLICY
from ._registry import ToolRegistry as ToolRegistry
from ._registry import ToolStatus as ToolStatus

__all__ = ["A2AAgent", "A2AServer", "DEFAULT_TOOL_POLICY", "META_PREFIX", "MCPServer",
           "MCPServerStatistics", "ToolRegistry", "ToolStatus"]
