"""A2A: workflows served as A2A agents, remote A2A agents called as durable steps (the
``a2a`` extra, on ``a2a-sdk``; JSON-RPC over HTTP).

**Serving.** ``sw.A2AServer(app, workflow, name=..., url=...)`` is an A2A agent: its
agent card at ``/.well-known/agent-card.json``, its JSON-RPC endpoint at ``/``. A message
starts a task (submitted, working, then completed with the workflow's result as an
artifact, or failed with its error); the task runs the workflow as the stalwart run
``a2a-<task id>``, so a task sent again finds its run (``Runtime.start`` is idempotent)
and a run interrupted by a crash resumes from its journal. Task ids are derived from
the message's context id (``task-<context id>``). An A2A cancel cancels the task's run
(``Runtime.cancel``) and answers the task canceled; an unknown task is the A2A error
task-not-found, a finished one task-not-cancelable. A run cancelled by other means
(``stalwart cancel``) ends its task canceled too.

**A server's crash.** The SDK's task store is in memory; the server's store
(``JournalTaskStore``) answers a task it does not hold, one started before a restart,
from its run ``a2a-<task id>`` in the journal, the one source of truth: a run not ended
is working, a completed one completed with the result artifact the executor builds
(:func:`_settle` and :func:`_result_part` are shared), a failed or dead-lettered one
failed with its error, a cancelled one canceled. The restarted runtime takes the run
over (its owner died on this host), so a caller polling the task gets its result. A task
saved canceled cancels its run: the SDK writes that state itself for a task no executor
of this process holds.

**Calling.** ``sw.A2AAgent(url)``; ``await remote.ask(ctx, "text")`` is two journaled
steps behind the policy stack: *send* (its result: the task id) and *wait* (polls the
task to its end; its result: the artifact's text or data). The message's id and context
id are derived from the send step's idempotency key, so the task is the same however
often the step is tried; before sending, the step looks for that task and re-attaches
to it if it exists. A resumed run replays *send* from the journal and waits on the same
task: it re-attaches, it does not start the work again. An agent that cannot be reached
(the SDK's ``A2AClientError`` caused by a transport error too) is
``ToolServerUnavailableError``, retryable.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any, final

from .._context import Context
from .._runtime import Runtime
from .._serde import encode
from ..engine._policy import Policy
from ..engine._tools import Tool, ToolCall
from ..engine._workflow import Workflow
from ..errors import (
    ConfigurationError,
    RemoteToolError,
    RunCancelledError,
    RunNotFoundError,
    ToolServerUnavailableError,
    _install_hint,
)
from ..models import Origin
from ..policies._common import to_seconds

__all__ = ["A2AAgent", "A2AServer", "task_id_for"]

_TERMINAL = {"TASK_STATE_COMPLETED", "TASK_STATE_FAILED", "TASK_STATE_CANCELED",
             "TASK_STATE_REJECTED"}
_STUCK = {"TASK_STATE_INPUT_REQUIRED", "TASK_STATE_AUTH_REQUIRED"}


def _sdk() -> Any:
    try:
        from a2a.types import a2a_pb2
    except ImportError as exc:  # pragma: no cover - the extra is installed in tests
        raise ConfigurationError("A2A needs the a2a-sdk package: "
                                 f"{_install_hint('a2a')}") from exc
    return a2a_pb2


def task_id_for(context_id: str) -> str:
    """The task id an :class:`A2AServer` gives the first task of a context."""
    return f"task-{context_id}"


def _context_id(idempotency_key: str) -> str:
    return "sw-" + re.sub(r"[^A-Za-z0-9_.-]", "-", idempotency_key)


# -- serving ---------------------------------------------------------------------------


@final
class A2AServer:
    """A workflow served as an A2A agent (see the module docstring).

    The workflow takes one argument, the message: its text, or the data of its first
    data part. Its result becomes the task's artifact (text for a string, data
    otherwise).
    """

    def __init__(self, runtime: Runtime, workflow: Workflow[Any, Any], *, name: str,
                 url: str, description: str = "", version: str = "1.0",
                 skills: Mapping[str, str] | None = None) -> None:
        if not isinstance(workflow, Workflow):
            raise ConfigurationError(f"A2AServer: a workflow of the runtime, not "
                                     f"{type(workflow).__name__}")
        self.runtime = runtime
        self.workflow = workflow
        self.name = name
        self.url = url
        self.description = description or f"the stalwart workflow {workflow.name}"
        self.version = version
        self.skills = dict(skills or {workflow.name: self.description})
        self.tasks_started = 0
        """Tasks that started a workflow run in this process."""
        self._cancelling: set[str] = set()
        """Tasks an A2A cancel is ending (it writes their canceled state)."""

    def agent_card(self) -> Any:
        """The agent card (``a2a.types.AgentCard``)."""
        pb = _sdk()
        return pb.AgentCard(
            name=self.name, description=self.description, version=self.version,
            supported_interfaces=[pb.AgentInterface(url=self.url, protocol_binding="JSONRPC",
                                                    protocol_version="1.0")],
            capabilities=pb.AgentCapabilities(streaming=False),
            default_input_modes=["text/plain", "application/json"],
            default_output_modes=["text/plain", "application/json"],
            skills=[pb.AgentSkill(id=k, name=k, description=v, tags=["stalwart"])
                    for k, v in self.skills.items()])

    def asgi_app(self) -> Any:
        """A Starlette app: the agent card and the JSON-RPC endpoint."""
        from a2a.server.agent_execution import SimpleRequestContextBuilder
        from a2a.server.request_handlers import DefaultRequestHandler
        from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
        from starlette.applications import Starlette

        card = self.agent_card()
        store = _task_store(self)
        handler = DefaultRequestHandler(
            agent_executor=_executor(self), task_store=store, agent_card=card,
            request_context_builder=SimpleRequestContextBuilder(
                task_store=store, task_id_generator=_task_ids()))
        return Starlette(routes=[*create_agent_card_routes(card),
                                 *create_jsonrpc_routes(handler, "/")])

    @contextlib.asynccontextmanager
    async def serving(self, host: str = "127.0.0.1", port: int = 8000
                      ) -> AsyncIterator[None]:
        """Serve with uvicorn while the block runs (entered once it listens)."""
        import uvicorn

        server = uvicorn.Server(uvicorn.Config(self.asgi_app(), host=host, port=port,
                                               log_level="warning", lifespan="off"))
        task = asyncio.create_task(server.serve(), name=f"a2a:{self.name}")
        while not server.started:
            if task.done():
                await task  # raises why it could not start
                raise ConfigurationError(f"A2A server {self.name!r} did not start on "
                                         f"{host}:{port}")
            await asyncio.sleep(0.01)  # uvicorn offers no startup event to wait on
        try:
            yield
        finally:
            server.should_exit = True
            await task

    async def serve(self, host: str = "127.0.0.1", port: int = 8000) -> None:
        """Serve with uvicorn until cancelled or stopped by a signal."""
        import uvicorn

        server = uvicorn.Server(uvicorn.Config(self.asgi_app(), host=host, port=port,
                                               log_level="warning", lifespan="off"))
        await server.serve()

    async def _run(self, task_id: str, message: Any) -> Any:
        argument = _message_value(message)
        self.tasks_started += 1
        handle = await self.runtime.start(self.workflow, argument, run_id=run_id_for(task_id),
                                          if_exists="return")
        return await handle.result()


def run_id_for(task_id: str) -> str:
    """The stalwart run of a served task."""
    return f"a2a-{task_id}"


def context_of(task_id: str) -> str:
    """The context id of a served task (the inverse of :func:`task_id_for`)."""
    return task_id.removeprefix("task-")


async def _settle(outcome: Callable[[], Awaitable[Any]]) -> tuple[str, Any]:
    """How a task ends for its run's outcome (one rule for a live task and one recovered
    from the journal): ``("completed", result)``, ``("canceled", why)`` or
    ``("failed", why)``."""
    try:
        result = await outcome()
    except RunCancelledError as exc:  # its run was cancelled (here or elsewhere)
        return "canceled", str(exc)
    except Exception as exc:  # the task fails with the run's error
        return "failed", f"{type(exc).__name__}: {exc}"
    return "completed", result


_RESULT = "result"
"""The id and name of a task's result artifact."""

def _task_store(server: A2AServer) -> Any:
    from a2a.server.tasks import InMemoryTaskStore

    pb = _sdk()

    class JournalTaskStore(InMemoryTaskStore):
        """The SDK's in-memory tasks, backed by the journal: a task this process does
        not hold (it started before a restart) is answered from its run ``a2a-<task
        id>``, so the journal stays the one source of truth; a task saved canceled
        cancels its run (the SDK writes the canceled state itself for a task no
        executor of this process holds)."""

        async def get(self, task_id: str, context: Any = None) -> Any:
            task = await super().get(task_id, context)
            return task if task is not None else await _recovered(server, task_id)

        async def save(self, task: Any, context: Any = None) -> None:
            await super().save(task, context)
            if task.status.state == pb.TaskState.TASK_STATE_CANCELED:
                await _cancel_run(server, str(task.id))

    return JournalTaskStore()


async def _cancel_run(server: A2AServer, task_id: str) -> None:
    with contextlib.suppress(RunNotFoundError):  # its run not started yet
        rec = await server.runtime.get_run(run_id_for(task_id))
        if not rec.is_terminal:
            await server.runtime.cancel(rec.run_id)


async def _recovered(server: A2AServer, task_id: str) -> Any:
    """The task of the run ``a2a-<task id>`` as its journal says, or ``None``."""
    from a2a.helpers.proto_helpers import new_text_part

    pb = _sdk()
    try:
        rec = await server.runtime.get_run(run_id_for(task_id))
    except RunNotFoundError:
        return None
    task = pb.Task(id=task_id, context_id=context_of(task_id))
    if not rec.is_terminal:
        task.status.state = pb.TaskState.TASK_STATE_WORKING
        return task

    async def outcome() -> Any:
        return server.runtime.outcome(rec)

    state, value = await _settle(outcome)
    task.status.state = pb.TaskState.Value(f"TASK_STATE_{state.upper()}")
    if state == "completed":
        task.artifacts.append(pb.Artifact(artifact_id=_RESULT, name=_RESULT,
                                          parts=[_result_part(value, new_text_part)]))
    else:
        task.status.message.CopyFrom(_agent_message(value))
    return task


def _task_ids() -> Any:
    from a2a.server.id_generator import IDGenerator, IDGeneratorContext

    class ContextTaskIds(IDGenerator):
        """The first task of a context gets an id derived from the context's."""

        def generate(self, context: IDGeneratorContext) -> str:
            return task_id_for(context.context_id or "none")

    return ContextTaskIds()


def _message_value(message: Any) -> Any:
    for part in message.parts:
        if part.HasField("data"):
            return _data_of(part)
    return "\n".join(p.text for p in message.parts if p.text)


def _executor(server: A2AServer) -> Any:
    from a2a.helpers.proto_helpers import new_task_from_user_message, new_text_part
    from a2a.server.agent_execution import AgentExecutor
    from a2a.server.tasks import TaskUpdater

    class WorkflowExecutor(AgentExecutor):
        async def execute(self, context: Any, event_queue: Any) -> None:
            task = context.current_task
            if task is None:
                task = new_task_from_user_message(context.message)
                await event_queue.enqueue_event(task)
            updater = TaskUpdater(event_queue, task.id, task.context_id)
            await updater.start_work()
            state, value = await _settle(lambda: server._run(task.id, context.message))
            if state == "canceled":
                if task.id not in server._cancelling:
                    await updater.cancel(_agent_message(value))
            elif state == "failed":
                await updater.failed(_agent_message(value))
            else:
                await updater.add_artifact([_result_part(value, new_text_part)],
                                           artifact_id=_RESULT, name=_RESULT)
                await updater.complete()

        async def cancel(self, context: Any, event_queue: Any) -> None:
            """An A2A cancel cancels the task's run (it stops at its next step, its
            children too), then marks the task canceled. The SDK has answered an
            unknown task (task not found) and a finished one (not cancelable) before
            this is called."""
            task_id = str(context.task_id)
            server._cancelling.add(task_id)
            try:
                with contextlib.suppress(RunNotFoundError):  # its run not started yet
                    await server.runtime.cancel(run_id_for(task_id))
                updater = TaskUpdater(event_queue, task_id, context.context_id)
                await updater.cancel(_agent_message(
                    f"cancelled: the run {run_id_for(task_id)} was cancelled"))
            finally:
                server._cancelling.discard(task_id)

    return WorkflowExecutor()


def _agent_message(text: str) -> Any:
    from a2a.helpers.proto_helpers import new_text_message

    return new_text_message(text)


def _result_part(result: Any, new_text_part: Any) -> Any:
    if isinstance(result, str):
        return new_text_part(result)
    from a2a.helpers.proto_helpers import new_data_part

    return new_data_part(json.loads(encode(result, Any, what="an A2A result")))


# -- calling ---------------------------------------------------------------------------


@final
class A2AAgent:
    """A remote A2A agent, called from a workflow with :meth:`ask` (see the module
    docstring). ``policy`` applies to both steps (connection failures are retryable);
    ``poll_interval`` is the time between looks at a running task."""

    def __init__(self, url: str, *, name: str | None = None, policy: Policy | None = None,
                 poll_interval: timedelta | float = 0.2) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigurationError(f"A2AAgent: url must be http(s)://..., not {url!r}")
        self.url = url.rstrip("/") + "/"
        self.name = name or url.split("//", 1)[1].split("/", 1)[0]
        self.poll_interval = to_seconds(poll_interval)
        self.sent = 0
        """Messages this process sent (a re-attach sends none)."""
        schema_send = {"type": "object", "properties": {"message": {}},
                       "required": ["message"], "additionalProperties": False}
        schema_wait = {"type": "object", "properties": {"task_id": {"type": "string"}},
                       "required": ["task_id"], "additionalProperties": False}
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", self.name)
        self.send_tool: Tool[Any, Any] = Tool(self._send, name=f"a2a_{safe}_send",
                                              description=f"Send a task to {self.name}",
                                              policy=policy, parameters=schema_send)
        self.wait_tool: Tool[Any, Any] = Tool(self._wait, name=f"a2a_{safe}_wait",
                                              description=f"Wait for a task of {self.name}",
                                              policy=policy, parameters=schema_wait)
        for tool in (self.send_tool, self.wait_tool):
            tool.origin = tool.description_origin = Origin.agent(f"a2a:{self.name}")

    def __repr__(self) -> str:
        return f"<A2AAgent {self.name} {self.url}>"

    async def ask(self, ctx: Context, message: Any) -> Any:
        """Send ``message`` (text, or JSON data) and return the task's result: its
        artifact's text, or data. Two journaled steps; see the module docstring.

        Raises:
            RemoteToolError: the task failed, was rejected or cancelled, or needs input.
            ToolServerUnavailableError: the agent cannot be reached (retryable).
        """
        task_id = await ctx.tool(self.send_tool, message=message)
        return await ctx.tool(self.wait_tool, task_id=task_id)

    async def _client(self) -> Any:
        from a2a.client import ClientConfig, create_client

        try:
            return await create_client(self.url, ClientConfig(streaming=False))
        except Exception as exc:
            raise ToolServerUnavailableError(f"A2A agent {self.name!r} ({self.url}) cannot "
                                             f"be reached: {_line(exc)}",
                                             server=self.name) from exc

    async def _send(self, arguments: dict[str, Any], call: ToolCall) -> str:
        pb = _sdk()
        context_id = _context_id(call.idempotency_key)
        client = await self._client()
        try:
            existing = await _get_task(client, task_id_for(context_id))
            if existing is not None:  # sent before a crash: re-attach
                return str(existing.id)
            value = arguments["message"]
            part = pb.Part(text=value) if isinstance(value, str) else _data_part(value)
            message = pb.Message(message_id=context_id, context_id=context_id,
                                 role=pb.ROLE_USER, parts=[part])
            request = pb.SendMessageRequest(
                message=message,
                configuration=pb.SendMessageConfiguration(return_immediately=True))
            self.sent += 1
            task_id = ""
            async for event in client.send_message(request):
                task_id = _task_of(event) or task_id
            if not task_id:
                raise RemoteToolError(f"A2A agent {self.name!r} answered without a task",
                                      server=self.name, tool="send")
            return task_id
        except (RemoteToolError, ToolServerUnavailableError):
            raise
        except Exception as exc:
            raise _as_error(self.name, "send", exc) from exc
        finally:
            await client.close()

    async def _wait(self, arguments: dict[str, Any], call: ToolCall) -> Any:
        pb = _sdk()
        task_id = str(arguments["task_id"])
        client = await self._client()
        try:
            while True:
                task = await _get_task(client, task_id)
                if task is None:
                    raise RemoteToolError(f"A2A agent {self.name!r} has no task {task_id!r}",
                                          server=self.name, tool="wait")
                state = pb.TaskState.Name(task.status.state)
                if state in _TERMINAL or state in _STUCK:
                    return _outcome(self.name, task, state)
                await asyncio.sleep(self.poll_interval)
        except (RemoteToolError, ToolServerUnavailableError):
            raise
        except Exception as exc:
            raise _as_error(self.name, "wait", exc) from exc
        finally:
            await client.close()


async def _get_task(client: Any, task_id: str) -> Any:
    pb = _sdk()
    from a2a.utils.errors import TaskNotFoundError

    try:
        return await client.get_task(pb.GetTaskRequest(id=task_id))
    except TaskNotFoundError:
        return None


def _task_of(event: Any) -> str:
    for attr in ("task", "status_update", "artifact_update"):
        if event.HasField(attr):
            inner = getattr(event, attr)
            return str(inner.id if attr == "task" else inner.task_id)
    return ""


def _data_of(part: Any) -> Any:
    """A data part's value as JSON (protobuf's Value keeps numbers as doubles: a whole
    number comes back an int)."""
    json_format: Any = importlib.import_module("google.protobuf.json_format")  # untyped
    return _ints(json_format.MessageToDict(part)["data"])


def _ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_ints(v) for v in value]
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    return value


def _data_part(value: Any) -> Any:
    from a2a.helpers.proto_helpers import new_data_part

    return new_data_part(value)


def _outcome(agent: str, task: Any, state: str) -> Any:
    if state == "TASK_STATE_COMPLETED":
        for artifact in task.artifacts:
            for part in artifact.parts:
                if part.HasField("data"):
                    return _data_of(part)
            return "\n".join(p.text for p in artifact.parts if p.text)
        return ""
    why = "\n".join(p.text for p in task.status.message.parts if p.text)
    raise RemoteToolError(f"A2A task {task.id} of agent {agent!r} ended "
                          f"{state.removeprefix('TASK_STATE_').lower()}"
                          + (f": {why}" if why else ""), server=agent, tool="wait")


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _unreachable(exc: BaseException | None) -> bool:
    """Whether the agent could not be reached: a connection or transport error, also as
    the cause of the SDK's own (its ``A2AClientError`` wraps httpx's errors)."""
    import httpx

    while exc is not None:
        name = type(exc).__name__
        if isinstance(exc, OSError | httpx.TransportError) or "Connect" in name \
                or "Timeout" in name or "Transport" in name or "Network" in name:
            return True
        exc = exc.__cause__
    return False


def _as_error(agent: str, step: str, exc: Exception) -> Exception:
    if _unreachable(exc):
        return ToolServerUnavailableError(f"A2A agent {agent!r}: {_line(exc)}", server=agent,
                                          tool=step)
    return RemoteToolError(f"A2A agent {agent!r}: {_line(exc)}", server=agent, tool=step)
