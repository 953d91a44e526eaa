"""MCP servers as tool sources, on the official ``mcp`` SDK (the ``mcp`` extra).

``sw.MCPServer.stdio(command)`` starts a server as a child process and speaks MCP over
its stdin/stdout; ``sw.MCPServer.http(url)`` connects to one over streamable HTTP.
``await server.connect()`` opens the session and lists its tools; each becomes a
:class:`~stalwart.Tool` (``server.tools``) whose input schema is the one the server
declared (checked as JSON Schema), so an agent shows it to its model and validates the
model's arguments against it, and ``ctx.tool`` calls it like any tool: one journaled
step behind the policy stack. The call's idempotency key (and attempt and fencing token)
travel in the request's ``_meta`` (``stalwart/idempotency_key``...), so the server can
deduplicate an effect made again after a crash.

A server that dies or drops the connection fails the attempt with
:class:`ToolServerUnavailableError` (retryable); the policy stack decides on a retry,
and the next attempt restarts the process (stdio) or reconnects (HTTP). A result that
does not match the tool's output schema is a :class:`ToolResultError`; a result the
tool marks ``isError`` a :class:`RemoteToolError`.

The session lives in a task of its own (the SDK's transports are async context
managers, entered and left in one task); calls from any task of the loop go through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, final

from ..engine._policy import Policy
from ..engine._schema import check_schema, schema_problem
from ..engine._tools import EFFECTS, Effect, Tool, ToolCall
from ..errors import (
    ConfigurationError,
    RemoteToolError,
    ToolResultError,
    ToolServerError,
    ToolServerUnavailableError,
    _install_hint,
)
from ..models import Origin
from ..policies._common import to_seconds

__all__ = ["MCPServer", "MCPServerStatistics", "META_PREFIX"]

META_PREFIX = "stalwart/"
"""The prefix of the keys stalwart puts in a call's ``_meta``: ``idempotency_key``,
``run_id``, ``step_id``, ``attempt``, ``fencing_token``."""


def _sdk() -> Any:
    try:
        import mcp
    except ImportError as exc:  # pragma: no cover - the extra is installed in tests
        raise ConfigurationError("MCP servers need the mcp package: "
                                 f"{_install_hint('mcp')}") from exc
    return mcp


@final
@dataclass(frozen=True, slots=True)
class MCPServerStatistics:
    """A snapshot of one server's connection.

    Attributes:
        name: the server's name.
        transport: ``"stdio"`` or ``"http"``.
        connected: whether a session is open now.
        connects: sessions opened (the first, then each restart or reconnect).
        calls: tool calls sent; failures: those that failed (any error).
        last_error: the last failure, one line (``""``: none).
    """

    name: str
    transport: str
    connected: bool
    connects: int
    calls: int
    failures: int
    last_error: str


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        inner = exc.exceptions[0] if exc.exceptions else exc
        return _one_line(inner)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class _Session:
    """One open session in a task of its own: started, used, stopped."""

    def __init__(self, server: MCPServer) -> None:
        self.server = server
        self.session: Any = None
        self.stop = asyncio.Event()
        self.ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(self._hold(), name=f"mcp:{server.name}")

    async def _hold(self) -> None:
        try:
            async with contextlib.AsyncExitStack() as stack:
                # a server's stderr (its logs) is not ours; the file opens at once
                errlog = stack.enter_context(open(os.devnull, "w"))  # noqa: ASYNC230, SIM115
                read, write = await stack.enter_async_context(self.server._transport(errlog))
                session = await stack.enter_async_context(_client_session(read, write))
                await session.initialize()
                self.session = session
                self.ready.set_result(session)
                await self.stop.wait()
        except BaseException as exc:
            if not self.ready.done():
                self.ready.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            if not self.ready.done():
                self.ready.set_exception(ConnectionError("the session ended"))

    async def close(self) -> None:
        self.stop.set()
        if not self.task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self.task), timeout=5)
            except (TimeoutError, Exception):
                self.task.cancel()
                with contextlib.suppress(BaseException):
                    await self.task


def _client_session(read: Any, write: Any) -> Any:
    """The SDK's client session, but results are checked here, not by the SDK (its
    check raises RuntimeError; ours a typed :class:`ToolResultError`)."""
    mcp = _sdk()

    class Session(mcp.ClientSession):  # type: ignore[misc, name-defined]
        async def validate_tool_result(self, name: str, result: Any) -> None:
            return None

    return Session(read, write)


@final
class MCPServer:
    """An MCP server whose tools stalwart calls (make one with :meth:`stdio` or
    :meth:`http`).

    Its tools are named as the server names them, or ``f"{prefix}_{name}"`` with
    ``prefix=`` (two servers with a tool of the same name: give one a prefix; a
    :class:`~stalwart.ToolRegistry` refuses duplicates with
    :class:`~stalwart.DuplicateToolError`). They take the server's ``policy``, ``effect``
    (default ``"write"``; ``effects={"tool": "read"}`` per tool) and ``scopes``. The
    server's own annotations (``readOnlyHint``...) are not trusted for least privilege:
    a server says what it likes.

    Use it as an async context manager, or call :meth:`connect` and :meth:`close`.
    """

    def __init__(self, transport: Literal["stdio", "http"], target: Sequence[str] | str, *,
                 name: str, env: Mapping[str, str] | None = None, cwd: str | None = None,
                 headers: Mapping[str, str] | None = None, prefix: str | None = None,
                 policy: Policy | None = None, effect: Effect = "write",
                 effects: Mapping[str, Effect] | None = None, scopes: Iterable[str] = (),
                 connect_timeout: timedelta | float = 30.0) -> None:
        if not name or not isinstance(name, str):
            raise ConfigurationError("an MCP server needs a name")
        for tool_name, eff in {"*": effect, **(effects or {})}.items():
            if eff not in EFFECTS:
                raise ConfigurationError(f"MCP server {name!r}: effect of {tool_name!r} must "
                                         f"be one of {', '.join(EFFECTS)}, not {eff!r}")
        self.name = name
        self.transport: Literal["stdio", "http"] = transport
        self.target = target
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.headers = dict(headers or {})
        self.prefix = prefix
        self.policy = policy
        self.effect: Effect = effect
        self.effects: dict[str, Effect] = dict(effects or {})
        self.scopes = frozenset(scopes)
        self.connect_timeout = to_seconds(connect_timeout)
        self._tools: dict[str, Tool[Any, Any]] = {}
        self._remote: dict[str, str] = {}
        self._outputs: dict[str, Any] = {}
        self._session: _Session | None = None
        self._lock: asyncio.Lock | None = None
        self._listeners: list[Callable[[str], None]] = []
        self._connects = self._calls = self._failures = 0
        self._last_error = ""

    @classmethod
    def stdio(cls, command: Sequence[str] | str, *, name: str | None = None,
              env: Mapping[str, str] | None = None, cwd: str | None = None,
              prefix: str | None = None, policy: Policy | None = None,
              effect: Effect = "write", effects: Mapping[str, Effect] | None = None,
              scopes: Iterable[str] = (),
              connect_timeout: timedelta | float = 30.0) -> MCPServer:
        """A server started as a child process (``command``: an argv list, or a string
        split as a shell would, never run by one), speaking MCP over stdin/stdout. It
        is restarted when it dies. ``env`` is added to the SDK's safe default
        environment (PATH, HOME...; not this process's secrets)."""
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        if not argv or not all(isinstance(a, str) and a for a in argv):
            raise ConfigurationError(f"MCPServer.stdio: command must be a non-empty argv, "
                                     f"not {command!r}")
        return cls("stdio", argv, name=name or os.path.basename(argv[0]), env=env, cwd=cwd,
                   prefix=prefix, policy=policy, effect=effect, effects=effects,
                   scopes=scopes, connect_timeout=connect_timeout)

    @classmethod
    def http(cls, url: str, *, name: str | None = None,
             headers: Mapping[str, str] | None = None, prefix: str | None = None,
             policy: Policy | None = None, effect: Effect = "write",
             effects: Mapping[str, Effect] | None = None, scopes: Iterable[str] = (),
             connect_timeout: timedelta | float = 30.0) -> MCPServer:
        """A server reached over streamable HTTP at ``url`` (``http://host:port/mcp``);
        reconnected when the connection is lost."""
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigurationError(f"MCPServer.http: url must be http(s)://..., not {url!r}")
        return cls("http", url, name=name or url.split("//", 1)[1].split("/", 1)[0],
                   headers=headers, prefix=prefix, policy=policy, effect=effect,
                   effects=effects, scopes=scopes, connect_timeout=connect_timeout)

    def __repr__(self) -> str:
        return f"<MCPServer {self.name} {self.transport}>"

    @property
    def source(self) -> str:
        """Where its tools come from, as registries and ``stalwart tools`` show it."""
        return f"mcp:{self.name}"

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> MCPServer:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the session and list the server's tools (again after the first time).

        Raises:
            ToolServerUnavailableError: the server cannot be started or reached.
            ToolSchemaError: a tool's input or output schema is not valid JSON Schema.
        """
        session = await self._open()
        try:
            await self._discover(session)
        except BaseException:
            await self.close()  # a server whose tools we refuse is not kept running
            raise

    async def close(self) -> None:
        """Close the session (and stop a stdio server's process)."""
        held, self._session = self._session, None
        if held is not None:
            await held.close()

    @property
    def tools(self) -> tuple[Tool[Any, Any], ...]:
        """Its tools, as discovered by :meth:`connect`."""
        if not self._tools and self._session is None:
            raise ConfigurationError(f"MCP server {self.name!r}: connect() before reading "
                                     "its tools")
        return tuple(self._tools.values())

    def tool(self, name: str) -> Tool[Any, Any]:
        """One of its tools, by the name stalwart gives it (with the prefix)."""
        try:
            return self._tools[name]
        except KeyError:
            raise ConfigurationError(f"MCP server {self.name!r} has no tool {name!r}; it "
                                     f"has {sorted(self._tools)}") from None

    def statistics(self) -> MCPServerStatistics:
        """A snapshot of the connection's counters."""
        held = self._session
        connected = (held is not None and held.ready.done() and not held.task.done())
        return MCPServerStatistics(self.name, self.transport, connected, self._connects,
                                   self._calls, self._failures, self._last_error)

    def on_unavailable(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(reason)`` when the connection is lost during a request (a
        registry marks the server's tools unhealthy and checks again soon)."""
        self._listeners.append(listener)

    async def ping(self) -> None:
        """An MCP ``ping`` (connecting first if needed): the health check.

        Raises:
            ToolServerUnavailableError: no answer.
        """
        await self._request(lambda s: s.send_ping(), tool="")

    async def list_tool_names(self) -> list[str]:
        """The names the server lists now (a health check that looks further than
        ``ping``)."""
        result = await self._request(lambda s: s.list_tools(), tool="")
        return [t.name for t in result.tools]

    # -- the connection ----------------------------------------------------------------

    def _transport(self, errlog: Any) -> Any:
        if self.transport == "stdio":
            from mcp import StdioServerParameters, stdio_client
            from mcp.client.stdio import get_default_environment

            argv = list(self.target)
            env = {**get_default_environment(), **(self.env or {})}
            params = StdioServerParameters(command=argv[0], args=argv[1:], env=env,
                                           cwd=self.cwd)
            return stdio_client(params, errlog=errlog)
        return _http_transport(str(self.target), self.headers)

    async def _open(self) -> Any:
        """The open session, opening one (start or restart, connect or reconnect)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            held = self._session
            if held is not None and held.ready.done() and not held.task.done():
                return held.ready.result()
            if held is not None:
                self._session = None
                await held.close()
            _sdk()
            held = _Session(self)
            try:
                session = await asyncio.wait_for(asyncio.shield(held.ready),
                                                 timeout=self.connect_timeout)
            except BaseException as exc:
                await held.close()
                self._last_error = _one_line(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                reason = (f"no answer in {self.connect_timeout:g} s"
                          if isinstance(exc, TimeoutError) else _one_line(exc))
                raise ToolServerUnavailableError(
                    f"MCP server {self.name!r} ({self._where()}) cannot be reached: {reason}",
                    server=self.name) from exc
            self._session = held
            self._connects += 1
            return session

    def _where(self) -> str:
        return " ".join(self.target) if self.transport == "stdio" else str(self.target)

    async def _drop(self, session: Any) -> None:
        """Forget a session that failed (the next call opens another)."""
        held = self._session
        if held is not None and held.ready.done() and not held.ready.exception() \
                and held.ready.result() is session:
            self._session = None
            await held.close()

    async def _request(self, send: Callable[[Any], Awaitable[Any]], *, tool: str) -> Any:
        """Send one request over the session; a lost connection is a retryable
        :class:`ToolServerUnavailableError` (and the session is dropped)."""
        session = await self._open()
        try:
            return await send(session)
        except ToolServerError:
            raise
        except Exception as exc:
            lost = _is_connection_loss(exc)
            if lost:
                await self._drop(session)
                self._last_error = _one_line(exc)
                for listener in self._listeners:
                    listener(self._last_error)
                raise ToolServerUnavailableError(
                    f"MCP server {self.name!r}: connection lost"
                    + (f" during {tool!r}" if tool else "") + f": {_one_line(exc)}",
                    server=self.name, tool=tool) from exc
            raise

    # -- tools -------------------------------------------------------------------------

    async def _discover(self, session: Any) -> None:
        try:
            listed = await session.list_tools()
        except Exception as exc:
            await self._drop(session)
            raise ToolServerUnavailableError(
                f"MCP server {self.name!r}: listing its tools failed: {_one_line(exc)}",
                server=self.name) from exc
        tools: dict[str, Tool[Any, Any]] = {}
        remote: dict[str, str] = {}
        outputs: dict[str, Any] = {}
        for spec in listed.tools:
            local = f"{self.prefix}_{spec.name}" if self.prefix else spec.name
            check_schema(spec.name, spec.input_schema, server=self.name)
            if spec.output_schema is not None:
                outputs[spec.name] = check_schema(spec.name, spec.output_schema,
                                                  what="output schema", server=self.name,
                                                  require_object=False)
            tool: Tool[Any, Any] = Tool(
                _caller(self, spec.name), name=local,
                description=spec.description or spec.title or spec.name, policy=self.policy,
                effect=self.effects.get(spec.name, self.effect), scopes=self.scopes,
                parameters=spec.input_schema)
            # Its output and its description (which the model reads) are the server's:
            # untrusted by default (docs/tools.md, provenance).
            tool.origin = tool.description_origin = Origin.mcp(self.name, spec.name)
            tools[local] = tool
            remote[local] = spec.name
        unknown = sorted(set(self.effects) - set(remote.values()))
        if unknown:
            raise ConfigurationError(f"MCP server {self.name!r}: effects= names tools it "
                                     f"does not have: {unknown}")
        self._tools, self._remote, self._outputs = tools, remote, outputs

    async def call_tool(self, name: str, arguments: Mapping[str, Any],
                        call: ToolCall | None = None) -> Any:
        """Call a tool by the server's name for it, outside any run (``ctx.tool`` with
        one of :attr:`tools` is the durable way): the result as :attr:`tools` return
        it (structured content, or the text)."""
        meta: dict[str, Any] = {}
        if call is not None:
            meta = {f"{META_PREFIX}idempotency_key": call.idempotency_key,
                    f"{META_PREFIX}run_id": call.run_id, f"{META_PREFIX}step_id": call.step_id,
                    f"{META_PREFIX}attempt": call.attempt,
                    f"{META_PREFIX}fencing_token": call.fencing_token}
        self._calls += 1
        try:
            result = await self._request(
                lambda s: s.call_tool(name, dict(arguments), meta=meta or None), tool=name)
            return self._result(name, result)
        except BaseException as exc:
            self._failures += 1
            self._last_error = _one_line(exc)
            if isinstance(exc, Exception) and not isinstance(exc, ToolServerError):
                raise _as_tool_error(self.name, name, exc) from exc
            raise

    def _result(self, name: str, result: Any) -> Any:
        """What a call returns: the structured content (checked against the output
        schema) or the text; an error result raises."""
        content = list(getattr(result, "content", None) or [])
        texts = [c.text for c in content if getattr(c, "type", None) == "text"]
        if getattr(result, "is_error", False):
            raise RemoteToolError(f"MCP tool {name!r} of server {self.name!r} failed: "
                                  + ("\n".join(texts)[:2000] or "(no message)"),
                                  server=self.name, tool=name)
        structured = getattr(result, "structured_content", None)
        validator = self._outputs.get(name)
        if validator is not None:
            if structured is None:
                raise ToolResultError(f"MCP tool {name!r} of server {self.name!r} declares "
                                      "an output schema but returned no structured content",
                                      server=self.name, tool=name)
            problem = schema_problem(validator, structured)
            if problem is not None:
                raise ToolResultError(f"MCP tool {name!r} of server {self.name!r} returned a "
                                      f"result that does not match its output schema {problem}",
                                      server=self.name, tool=name)
            return structured
        if structured is not None:
            return structured
        if len(texts) == len(content):
            return "\n".join(texts)
        return [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in content]


def _caller(server: MCPServer, remote: str) -> Callable[..., Awaitable[Any]]:
    async def call_mcp_tool(arguments: dict[str, Any], call: ToolCall) -> Any:
        return await server.call_tool(remote, arguments, call)

    call_mcp_tool.__qualname__ = call_mcp_tool.__name__ = f"mcp_{server.name}_{remote}"
    return call_mcp_tool


def _is_connection_loss(exc: BaseException) -> bool:
    """Whether a failure means the connection (or the process) is gone."""
    if isinstance(exc, BaseExceptionGroup):
        return any(_is_connection_loss(e) for e in exc.exceptions)
    from mcp.shared.exceptions import MCPError

    if isinstance(exc, MCPError):
        return getattr(exc, "code", None) == -32000 or "closed" in str(exc).lower()
    import anyio

    closed = (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream,
              ConnectionError, OSError, EOFError)
    if isinstance(exc, closed):
        return True
    return type(exc).__module__.startswith(("httpx", "httpcore")) and (
        "Connect" in type(exc).__name__ or "Read" in type(exc).__name__
        or "Protocol" in type(exc).__name__ or "Network" in type(exc).__name__)


def _as_tool_error(server: str, tool: str, exc: Exception) -> ToolServerError:
    """A failure of the SDK that is not a lost connection: a result it could not parse
    (``ToolResultError``), or an error the server answered (``RemoteToolError``)."""
    if type(exc).__name__ == "ValidationError" or isinstance(exc, ValueError | TypeError):
        return ToolResultError(f"MCP tool {tool!r} of server {server!r} returned a malformed "
                               f"result: {_one_line(exc)}", server=server, tool=tool)
    return RemoteToolError(f"MCP tool {tool!r} of server {server!r}: {_one_line(exc)}",
                           server=server, tool=tool)


HTTP_TIMEOUT = 30.0
"""Seconds to connect, write, or wait for a pooled connection over Streamable HTTP."""
HTTP_READ_TIMEOUT = 300.0
"""Seconds a read may wait: a server may hold a response (event) stream open that long."""


@contextlib.asynccontextmanager
async def _http_transport(url: str, headers: Mapping[str, str]) -> Any:
    """The SDK's public ``streamable_http_client`` over an HTTP client built here (the
    SDK's own factory is private): the SDK's documented default timeouts (above), the
    server's headers, and redirects left off (the transport follows those within the
    endpoint's origin itself). The client is ours, so we close it."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    client = httpx2.AsyncClient(headers=dict(headers),
                                timeout=httpx2.Timeout(HTTP_TIMEOUT, read=HTTP_READ_TIMEOUT))
    async with client, streamable_http_client(url, http_client=client) as streams:
        yield streams[0], streams[1]
