"""A registry of tools with health: where each tool comes from, whether it works now.

``registry = sw.ToolRegistry(app)`` holds local tools (``add(tool, health=fn)``) and the
tools of MCP servers (``add_server(server)``: its ``ping`` is their health check). The
checks run on :meth:`ToolRegistry.check`, periodically on the runtime's clock
(:meth:`ToolRegistry.start`), and soon after a failure: a server that drops its
connection makes its tools unhealthy at once and wakes the checker. An agent given
``health=registry`` leaves unhealthy tools out of its model's tool list (the model is
told why) until a check finds them well again; a tool whose circuit breaker is open is
unavailable too. Tools without a policy of their own take the registry's, which gives
each tool its own breaker and bulkhead (its pool is ``tool:<name>``): one bad tool
cannot take the others down (blast radius).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, final

from .._clock import sleep_until
from .._runtime import Runtime
from ..engine._policy import Policy
from ..engine._tools import Tool
from ..errors import ConfigurationError, DuplicateToolError
from ..policies import BulkheadConfig, CircuitBreakerConfig
from ..policies._common import to_seconds
from ._mcp import MCPServer

__all__ = ["DEFAULT_TOOL_POLICY", "ToolRegistry", "ToolStatus"]

DEFAULT_TOOL_POLICY = Policy(breaker=CircuitBreakerConfig(), bulkhead=BulkheadConfig())
"""What a registered tool without a policy of its own gets: its own circuit breaker and
its own bulkhead (over the runtime's default retry and timeout)."""

HealthCheck = Callable[[], object] | Callable[[], Awaitable[object]]
"""A health check: returns (or resolves to) something true when healthy; ``False``, a
string (the reason) or an exception means unhealthy."""


@final
@dataclass(frozen=True, slots=True)
class ToolStatus:
    """A snapshot of one registered tool (``stalwart tools`` prints these).

    Attributes:
        name, source: the tool, and where it comes from (``"local"``, ``"mcp:<server>"``).
        effect, scopes: what it declares (least privilege).
        healthy: the last check's verdict (``True`` before any check).
        reason: why it is unhealthy (``""`` when healthy).
        checked_at: the runtime clock's time of the last check (``None``: never).
        breaker: its circuit breaker's state (``"closed"``, ``"open"``,
            ``"half_open"``; ``""`` before its first call).
        available: whether an agent offers it to its model now.
    """

    name: str
    source: str
    effect: str
    scopes: tuple[str, ...]
    healthy: bool
    reason: str
    checked_at: float | None
    breaker: str
    available: bool

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "effect": self.effect,
                "scopes": list(self.scopes), "healthy": self.healthy, "reason": self.reason,
                "checked_at": self.checked_at, "breaker": self.breaker,
                "available": self.available}


@dataclass(slots=True)
class _Entry:
    tool: Tool[Any, Any]
    source: str
    check: Callable[[], Awaitable[str | None]] | None
    healthy: bool = True
    reason: str = ""
    checked_at: float | None = None


def _verdict(value: object) -> str | None:
    if value is False:
        return "its health check returned False"
    if isinstance(value, str) and value:
        return value
    return None


@final
class ToolRegistry:
    """Tools from everywhere, with health checks, breakers and bulkheads (see the
    module docstring). ``interval``: time between periodic checks, on the runtime's
    clock. Use as an agent's ``health=`` and its tools as the agent's ``tools=``."""

    def __init__(self, runtime: Runtime, *, interval: timedelta | float = 30.0,
                 policy: Policy | None = DEFAULT_TOOL_POLICY) -> None:
        self.runtime = runtime
        self.interval = to_seconds(interval)
        if self.interval <= 0:
            raise ConfigurationError("ToolRegistry: interval must be positive")
        self.policy = policy
        self._entries: dict[str, _Entry] = {}
        self._servers: list[MCPServer] = []
        self._pending: list[MCPServer] = []
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self.checks = 0
        """Check rounds made (for tests and statistics)."""

    def __repr__(self) -> str:
        return f"<ToolRegistry {len(self._entries)} tools>"

    # -- registration ------------------------------------------------------------------

    def add(self, tool: Tool[Any, Any], *, health: HealthCheck | None = None,
            source: str = "local") -> Tool[Any, Any]:
        """Register a tool (``health``: its check, sync or async); returns it.

        Raises:
            DuplicateToolError: a tool of that name is registered already.
        """
        if not isinstance(tool, Tool):
            raise ConfigurationError(f"ToolRegistry.add: a sw.Tool, not {type(tool).__name__}")
        self._refuse_duplicate(tool.name, source)
        check = None if health is None else _local_check(health)
        if tool.policy is None and self.policy is not None:
            tool.policy = self.policy
        self._entries[tool.name] = _Entry(tool, source, check)
        return tool

    def add_server(self, server: MCPServer) -> None:
        """Register an MCP server's tools (now if it is connected, else at
        :meth:`connect`); its ``ping`` is their health check, and a lost connection
        makes them unhealthy at once (and wakes the checker).

        Raises:
            DuplicateToolError: one of its tool names is registered already (give the
                server a ``prefix=``); nothing of the server is registered then.
        """
        if server in self._servers or server in self._pending:
            raise ConfigurationError(f"{server!r} is registered already")
        if server.statistics().connected:
            self._register(server)
        else:
            self._pending.append(server)

    async def connect(self) -> None:
        """Connect the servers added before they were connected, and register their
        tools (see :meth:`MCPServer.connect` for the errors)."""
        while self._pending:
            server = self._pending[0]
            await server.connect()
            self._pending.pop(0)
            try:
                self._register(server)
            except BaseException:
                await server.close()
                raise

    async def close(self) -> None:
        """Stop the checker and close every server."""
        await self.stop()
        for server in self._servers:
            await server.close()

    def _register(self, server: MCPServer) -> None:
        tools = server.tools
        for tool in tools:
            self._refuse_duplicate(tool.name, server.source)
        names = [t.name for t in tools]
        if len(names) != len(set(names)):
            raise DuplicateToolError(f"MCP server {server.name!r} lists a tool twice: "
                                     f"{names}", tool=names[0], sources=[server.source])

        async def ping() -> str | None:
            await server.ping()
            return None

        for tool in tools:
            if tool.policy is None and self.policy is not None:
                tool.policy = self.policy
            self._entries[tool.name] = _Entry(tool, server.source, ping)
        self._servers.append(server)
        server.on_unavailable(lambda reason: self._server_down(server, reason))

    def _refuse_duplicate(self, name: str, source: str) -> None:
        held = self._entries.get(name)
        if held is not None:
            raise DuplicateToolError(
                f"tool {name!r} from {source} is registered already from {held.source}; "
                "give an MCP server a prefix= to namespace its tools", tool=name,
                sources=[held.source, source])

    @property
    def tools(self) -> tuple[Tool[Any, Any], ...]:
        """Every registered tool (an agent's ``tools=``)."""
        return tuple(e.tool for e in self._entries.values())

    # -- health ------------------------------------------------------------------------

    def _server_down(self, server: MCPServer, reason: str) -> None:
        for entry in self._entries.values():
            if entry.source == server.source:
                entry.healthy, entry.reason = False, f"server unavailable: {reason}"
        if self._wake is not None:
            self._wake.set()

    async def check(self) -> list[ToolStatus]:
        """Run every health check now (a server's once for all its tools)."""
        by_check: dict[str, list[_Entry]] = {}
        checks: dict[str, Callable[[], Awaitable[str | None]]] = {}
        for name, entry in self._entries.items():
            if entry.check is not None:
                key = f"tool:{name}" if entry.source == "local" else entry.source
                by_check.setdefault(key, []).append(entry)
                checks.setdefault(key, entry.check)
        keys = list(checks)
        results = await asyncio.gather(*(_run(checks[k]) for k in keys))
        now = self.runtime.clock.now()
        for key, reason in zip(keys, results, strict=True):
            for entry in by_check[key]:
                entry.healthy, entry.reason, entry.checked_at = reason is None, reason or "", now
        self.checks += 1
        return self.statistics()

    def unavailable(self, names: Collection[str]) -> Mapping[str, str]:
        """Of ``names``, the registered tools an agent must not offer now, with why:
        unhealthy at the last check, or their circuit breaker open."""
        out: dict[str, str] = {}
        for name in names:
            entry = self._entries.get(name)
            if entry is None:
                continue
            if not entry.healthy:
                out[name] = entry.reason or "unhealthy"
            elif self._breaker(name) == "open":
                out[name] = "its circuit breaker is open after failures"
        return out

    def _breaker(self, name: str) -> str:
        stats = self.runtime.breakers.statistics().get(f"tool:{name}")
        return "" if stats is None else str(stats.state.value)

    def statistics(self) -> list[ToolStatus]:
        """A snapshot of every tool: source, effect, scopes, health, breaker state."""
        down = self.unavailable(list(self._entries))
        return [ToolStatus(name, e.source, e.tool.effect, tuple(sorted(e.tool.scopes)),
                           e.healthy, e.reason, e.checked_at, self._breaker(name),
                           name not in down)
                for name, e in self._entries.items()]

    # -- the periodic checker ----------------------------------------------------------

    def start(self) -> None:
        """Check now and every ``interval`` (the runtime's clock), and soon after a
        server drops its connection, until :meth:`stop`."""
        if self._task is not None:
            return
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="stalwart:tool-health")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _loop(self) -> None:
        assert self._wake is not None
        clock = self.runtime.clock
        while True:
            await self.check()
            self._wake.clear()
            # The next check is due ``interval`` after this one, however late the
            # sleeper's task starts.
            sleeper = asyncio.ensure_future(sleep_until(clock, clock.monotonic()
                                                        + self.interval))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for f in (sleeper, waker):
                    f.cancel()

    async def __aenter__(self) -> ToolRegistry:
        """Connect the servers, then check periodically until the block ends."""
        await self.connect()
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _local_check(health: HealthCheck) -> Callable[[], Awaitable[str | None]]:
    async def run() -> str | None:
        value = health()
        if inspect.isawaitable(value):
            value = await value
        return _verdict(value)

    return run


async def _run(check: Callable[[], Awaitable[str | None]]) -> str | None:
    """A check's reason for unhealthy, or ``None``; an exception is the reason."""
    try:
        return await check()
    except Exception as exc:  # a failing check is the verdict
        text = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
