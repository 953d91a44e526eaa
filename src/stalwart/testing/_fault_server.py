"""A real HTTP server that speaks just enough OpenAI and Anthropic to break on purpose.

Adapters must map every failure a provider can produce into stalwart's error taxonomy,
and the only honest test of that is the official SDK talking real HTTP to a server
that misbehaves in controlled ways: wrong status codes with ``Retry-After``, stalls
past the client's timeout, dropped and reset connections, bodies that are not JSON or
lack fields, content filtering. :class:`FaultServer` binds 127.0.0.1 on an ephemeral
port, serves from a background thread (so it works from sync and async tests alike),
and records every request it received so tests can count calls instead of timing them.

Endpoints (non-streaming only):

* ``POST /v1/chat/completions`` — OpenAI Chat Completions (``base_url = server.openai_url``)
* ``POST /v1/messages`` — Anthropic Messages (``base_url = server.anthropic_url``)

Per request, the server decides in this order: with a context limit set
(:meth:`FaultServer.set_context_limit`), a prompt over it is answered 400
``context_length_exceeded``, as providers do; then a queued :class:`Fault` (one per
request, first in first out); then outage mode; then the seeded error rate; otherwise
it replies with the next queued :class:`Reply`, or a default ``"ok"`` text reply.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, final

from ..models import count_tokens

__all__ = ["Fault", "FaultServer", "RecordedRequest", "Reply"]

FaultKind = Literal["status", "stall", "drop", "reset", "malformed", "missing_fields",
                    "content_filter"]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """One misbehaviour, applied to one request. Build with the class methods."""

    kind: FaultKind
    status: int = 500
    retry_after: str | None = None
    seconds: float = 0.0
    message: str = "injected fault"
    code: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def http(cls, status: int, *, retry_after: float | str | None = None,
             message: str = "injected fault", code: str | None = None,
             headers: Mapping[str, str] | None = None) -> Fault:
        """Answer with ``status`` and a provider-shaped error body.

        ``retry_after`` is sent verbatim as the ``Retry-After`` header: a number of
        seconds or an HTTP-date string. ``code`` fills the body's error code.
        ``headers`` are sent too (rate-limit headers, say: ``x-ratelimit-*``).
        """
        header = None if retry_after is None else (
            retry_after if isinstance(retry_after, str) else f"{retry_after:g}")
        return cls(kind="status", status=status, retry_after=header, message=message,
                   code=code, headers=tuple((headers or {}).items()))

    @classmethod
    def stall(cls, seconds: float) -> Fault:
        """Wait ``seconds`` before replying normally (the reply is lost if the client
        gave up; it then stays queued for the next request)."""
        return cls(kind="stall", seconds=seconds)

    @classmethod
    def drop(cls) -> Fault:
        """Read the request, then close the connection without a response."""
        return cls(kind="drop")

    @classmethod
    def reset(cls) -> Fault:
        """Read the request, then abort the connection with a TCP RST."""
        return cls(kind="reset")

    @classmethod
    def malformed(cls) -> Fault:
        """Answer 200 with a body that is not JSON."""
        return cls(kind="malformed")

    @classmethod
    def missing_fields(cls) -> Fault:
        """Answer 200 with JSON that lacks the fields a completion must have."""
        return cls(kind="missing_fields")

    @classmethod
    def content_filter(cls) -> Fault:
        """Answer 200 with a filtered completion (OpenAI ``finish_reason:
        content_filter``, Anthropic ``stop_reason: refusal``)."""
        return cls(kind="content_filter")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """A scripted successful completion.

    ``tool_calls`` holds ``(id, name, arguments)`` triples; ``arguments`` is a dict, or
    a string sent verbatim (to test arguments that are not valid JSON).
    """

    content: str | None = "ok"
    tool_calls: Sequence[tuple[str, str, Mapping[str, Any] | str]] = ()
    input_tokens: int = 10
    output_tokens: int = 5


@final
@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """A request the server received, in arrival order (header names lower-cased)."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any
    received_at: float
    outcome: str
    """``reply``, or the kind of fault applied (``status:429``, ``drop``, ``outage``...)."""
    prompt_tokens: int | None = None
    """The prompt's tokens as the server counted them (with a context limit set)."""


@dataclass(slots=True)
class _State:
    faults: deque[Fault] = field(default_factory=deque)
    replies: deque[Reply] = field(default_factory=deque)
    requests: list[RecordedRequest] = field(default_factory=list)
    outage: int | None = None
    error_rate: float = 0.0
    error_status: int = 500
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    context_limit: int | None = None
    count: Callable[[str], int] | None = None


@final
class FaultServer:
    """An OpenAI- and Anthropic-compatible HTTP server with a programmable fault plan.

    Use it as a context manager (sync or async); it listens from ``__enter__`` until
    ``__exit__``, which also wakes any stalled handler so shutdown is prompt::

        with FaultServer() as server:
            server.enqueue_fault(Fault.http(429, retry_after=2))
            client = AsyncOpenAI(base_url=server.openai_url, api_key="test")
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = _State()
        self._closing = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Bind 127.0.0.1 on an ephemeral port and start serving in a thread."""
        if self._httpd is not None:
            raise RuntimeError("FaultServer already started")
        self._closing.clear()
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.fault_server = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
            name="stalwart-fault-server", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving, wake stalled handlers, wait for them, release the socket."""
        httpd, thread = self._httpd, self._thread
        if httpd is None or thread is None:
            return
        self._closing.set()
        httpd.shutdown()
        thread.join()
        httpd.server_close()  # joins handler threads (block_on_close)
        self._httpd = self._thread = None

    def __enter__(self) -> FaultServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> FaultServer:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        if self._httpd is None:
            raise RuntimeError("FaultServer is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def openai_url(self) -> str:
        """The ``base_url`` for an OpenAI client (ends in ``/v1``)."""
        return self.url + "/v1"

    @property
    def anthropic_url(self) -> str:
        """The ``base_url`` for an Anthropic client."""
        return self.url

    # -- the plan -------------------------------------------------------------------

    def enqueue_fault(self, fault: Fault, *, times: int = 1) -> None:
        """Apply ``fault`` to each of the next ``times`` requests (after earlier faults)."""
        with self._lock:
            self._state.faults.extend([fault] * times)

    def enqueue_reply(self, reply: Reply | None = None, /, *, content: str | None = "ok",
                      tool_calls: Sequence[tuple[str, str, Mapping[str, Any] | str]] = (),
                      ) -> None:
        """Queue a successful reply (a :class:`Reply`, or its fields as keywords)."""
        with self._lock:
            self._state.replies.append(
                reply or Reply(content=content, tool_calls=tuple(tool_calls)))

    def set_outage(self, status: int | None = 503) -> None:
        """Answer every request with ``status`` until called with ``None``."""
        with self._lock:
            self._state.outage = status

    def set_error_rate(self, rate: float, *, seed: int = 0, status: int = 500) -> None:
        """Fail a seeded-random fraction ``rate`` of requests with ``status``."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be within [0, 1]")
        with self._lock:
            self._state.error_rate = rate
            self._state.error_status = status
            self._state.rng = random.Random(seed)

    def set_context_limit(self, tokens: int | None, *,
                          count: Callable[[str], int] | None = None) -> None:
        """Answer 400 ``context_length_exceeded`` (OpenAI's code; Anthropic's
        ``invalid_request_error``) to every request whose prompt counts more than
        ``tokens``; ``None`` lifts the limit. The prompt is the text of every message
        (tool calls' names and arguments, tool results and the system prompt included)
        counted with ``count`` (default: :func:`stalwart.models.count_tokens`, cl100k),
        plus 4 tokens a message; each request's count is recorded
        (:attr:`RecordedRequest.prompt_tokens`)."""
        if tokens is not None and (isinstance(tokens, bool) or tokens < 1):
            raise ValueError("the context limit must be an int >= 1 or None")
        with self._lock:
            self._state.context_limit = tokens
            self._state.count = count or count_tokens

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of every request received so far, in arrival order."""
        with self._lock:
            return list(self._state.requests)

    @property
    def pending_faults(self) -> int:
        """Queued faults not yet applied."""
        with self._lock:
            return len(self._state.faults)

    # -- used by the handler ----------------------------------------------------------

    def _prompt_tokens(self, body: Any) -> int | None:
        with self._lock:
            count = self._state.count if self._state.context_limit is not None else None
        if count is None or not isinstance(body, dict):
            return None
        messages = body.get("messages") or []
        texts = _strings(body.get("system")) + _strings(messages)
        return sum(count(t) for t in texts) + 4 * (len(messages) + bool(body.get("system")))

    def _decide(self, prompt_tokens: int | None = None) -> tuple[Fault | None, str]:
        with self._lock:
            st = self._state
            limit = st.context_limit
            if limit is not None and prompt_tokens is not None and prompt_tokens > limit:
                return Fault.http(400, code="context_length_exceeded", message=(
                    f"This model's maximum context length is {limit} tokens. However, "
                    f"your messages resulted in {prompt_tokens} tokens.")), "status:400"
            if st.faults:
                fault = st.faults.popleft()
                label = f"status:{fault.status}" if fault.kind == "status" else fault.kind
                return fault, label
            if st.outage is not None:
                return Fault.http(st.outage, message="outage"), f"outage:{st.outage}"
            if st.error_rate and st.rng.random() < st.error_rate:
                status = st.error_status
                return Fault.http(status, message="random error"), f"status:{status}"
            return None, "reply"

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._state.requests.append(request)

    def _take_reply(self) -> Reply:
        with self._lock:
            return self._state.replies.popleft() if self._state.replies else Reply()

    def _return_reply(self, reply: Reply) -> None:
        with self._lock:
            self._state.replies.appendleft(reply)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True
    fault_server: FaultServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out and hang up are part of the test plan


_Protocol = Literal["openai", "anthropic"]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: nothing idles at close
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        fs = self.server.fault_server
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        proto: _Protocol | None = {
            "/v1/chat/completions": "openai", "/v1/messages": "anthropic",
        }.get(self.path.split("?")[0])  # type: ignore[assignment]
        prompt = fs._prompt_tokens(body) if proto else None
        fault, outcome = fs._decide(prompt) if proto else (None, "not_found")
        fs._record(RecordedRequest(
            method="POST", path=self.path, body=body,
            headers={k.lower(): v for k, v in self.headers.items()},
            received_at=time.monotonic(), outcome=outcome, prompt_tokens=prompt))
        if proto is None:
            self._send_json(404, {"error": {"message": f"no route {self.path}"}})
            return
        if fault is not None and self._apply(fault, proto, body):
            return
        reply = fs._take_reply()
        try:
            self._send_json(200, _render(proto, reply, body))
        except OSError:
            fs._return_reply(reply)  # the client had given up; keep the reply queued

    def _apply(self, fault: Fault, proto: _Protocol, body: Any) -> bool:
        """Carry out ``fault``; return whether the response is complete."""
        if fault.kind == "stall":
            self.server.fault_server._closing.wait(fault.seconds)
            return False
        if fault.kind == "drop":
            self.close_connection = True
            return True
        if fault.kind == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.close_connection = True
            return True
        if fault.kind == "malformed":
            self._send_raw(200, b'{"id": "chatcmpl-broken", "choices": [', "application/json")
            return True
        if fault.kind == "missing_fields":
            self._send_json(200, {"id": "incomplete", "object": "chat.completion"}
                            if proto == "openai" else {"id": "incomplete", "type": "message"})
            return True
        if fault.kind == "content_filter":
            self._send_json(200, _render(proto, Reply(content=""), body, filtered=True))
            return True
        headers = dict(fault.headers)
        if fault.retry_after:
            headers["Retry-After"] = fault.retry_after
        self._send_json(fault.status, _error_body(proto, fault), headers)
        return True

    def _send_json(self, status: int, payload: Any,
                   headers: Mapping[str, str] | None = None) -> None:
        self._send_raw(status, json.dumps(payload).encode(), "application/json", headers)

    def _send_raw(self, status: int, data: bytes, content_type: str,
                  headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()


def _strings(node: Any) -> list[str]:
    """The prompt text in a request's ``messages`` or ``system`` (either protocol):
    contents, text blocks, tool calls' names and arguments, tool inputs and results."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [t for item in node for t in _strings(item)]
    if not isinstance(node, dict):
        return []
    out: list[str] = []
    for key in ("content", "text", "name", "arguments", "function", "tool_calls"):
        out += _strings(node.get(key))
    if isinstance(node.get("input"), dict):  # an Anthropic tool_use block
        out.append(json.dumps(node["input"]))
    return out


_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
    500: "api_error", 529: "overloaded_error",
}


def _error_body(proto: _Protocol, fault: Fault) -> dict[str, Any]:
    if proto == "anthropic":
        kind = _ANTHROPIC_ERROR_TYPES.get(fault.status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": fault.message}}
    return {"error": {"message": fault.message, "type": "injected", "param": None,
                      "code": fault.code}}


def _render(proto: _Protocol, reply: Reply, request: Any, *,
            filtered: bool = False) -> dict[str, Any]:
    model = request.get("model", "unknown") if isinstance(request, dict) else "unknown"
    calls = [(cid, name, args if isinstance(args, str) else json.dumps(dict(args)))
             for cid, name, args in reply.tool_calls]
    if proto == "openai":
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if calls:
            message["tool_calls"] = [
                {"id": cid, "type": "function", "function": {"name": name, "arguments": a}}
                for cid, name, a in calls]
        finish = "content_filter" if filtered else ("tool_calls" if calls else "stop")
        return {
            "id": "chatcmpl-fault-server", "object": "chat.completion", "created": 0,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish,
                         "logprobs": None}],
            "usage": {"prompt_tokens": reply.input_tokens,
                      "completion_tokens": reply.output_tokens,
                      "total_tokens": reply.input_tokens + reply.output_tokens},
        }
    blocks: list[dict[str, Any]] = []
    if reply.content:
        blocks.append({"type": "text", "text": reply.content})
    for cid, name, a in calls:
        try:
            parsed = json.loads(a)
        except ValueError:
            parsed = {"_raw": a}
        blocks.append({"type": "tool_use", "id": cid, "name": name, "input": parsed})
    stop = "refusal" if filtered else ("tool_use" if calls else "end_turn")
    return {
        "id": "msg_fault_server", "type": "message", "role": "assistant", "model": model,
        "content": blocks, "stop_reason": stop, "stop_sequence": None,
        "usage": {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens},
    }
