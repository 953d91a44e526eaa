"""The dashboard's web app: Starlette routes rendering Jinja2 pages from the CLI's views.

Every page reads the journal through one read-only runtime (``client_runtime``: SQLite
opened ``mode=ro``, PostgreSQL sessions read-only): the dashboard writes nothing by
looking. The actions (cancel, dead-letter retry, fork) call the functions the CLI's
commands call, each with its own short-lived writing runtime, and need the token printed
when the dashboard started plus a CSRF field (see :class:`Guard`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from ... import errors
from ..._runtime import Runtime
from ...store._base import RunRecord, RunStatus
from ...store._limits import LimitsReader
from .._approvals import decide_approval, pending_approvals
from .._commands import cancel_run
from .._common import (
    FAILURE,
    USAGE,
    CliError,
    client_runtime,
    error_info,
    fmt_duration,
    fmt_time,
    preview,
)
from .._dlq import dead_letters, redrive_only
from .._output import parse_duration
from .._runs import RunView, error_line, read_run_view
from .._stats import aggregate, collect, percentile
from .._trace import build_trace, fmt_cost
from .._views import replay_report, start_fork
from .._workers import read_fleet
from ._model import LABEL, ROW, WIDTH, conversations, cost_plot, waterfall

__all__ = ["LOCAL_HOSTS", "Settings", "create_app"]

HERE = Path(__file__).parent
PAGE = 50
"""Runs per page of the runs list."""
TIE_SLACK = PAGE
"""How many runs created at the very instant of a page's last run a page skips at
most (those the page before showed)."""
TREE_LIMIT = 200
"""At most this many runs in a run's tree of child runs."""


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass(frozen=True, slots=True)
class Settings:
    """How a dashboard serves a journal."""

    store: str | None
    """The journal (``--store``; ``None``: ``$STALWART_STORE``, else the default)."""
    token: str
    """The per-start secret that actions need (printed in the terminal)."""
    read_only: bool = False
    """No actions at all: their buttons are not shown and their routes refuse."""
    poll_interval: float = 1.0
    """Seconds between two looks at the journal by a live (SSE) page."""
    hosts: tuple[str, ...] = LOCAL_HOSTS
    """The ``Host`` headers served (others get 400): a page of another site whose name
    was made to resolve to 127.0.0.1 (DNS rebinding) reads nothing. ``("*",)`` serves
    any."""


class Guard:
    """Who may act. Opening the printed link (``/?token=...``) stores the token in an
    HttpOnly, SameSite=Strict cookie; an action needs that cookie, the page's CSRF field
    (an HMAC of the token, so another site's form cannot carry it) and, when the
    browser sends one, an ``Origin`` of this dashboard."""

    def __init__(self, token: str, read_only: bool) -> None:
        self.token = token
        self.read_only = read_only
        self.csrf = hmac.new(token.encode(), b"stalwart-dashboard-csrf",
                             hashlib.sha256).hexdigest()

    @staticmethod
    def cookie_name(request: Request) -> str:
        return f"stalwart_dashboard_{request.url.port or 80}"

    def can_act(self, request: Request) -> bool:
        given = request.cookies.get(self.cookie_name(request), "")
        return not self.read_only and hmac.compare_digest(given, self.token)

    def refusal(self, request: Request, form: dict[str, Any]) -> str | None:
        """Why this action request is refused (``None``: allowed)."""
        if self.read_only:
            return "this dashboard was started with --read-only: it takes no actions"
        if not self.can_act(request):
            return ("actions need the token printed when the dashboard started: open the "
                    "link from the terminal (…/?token=...) first")
        if not hmac.compare_digest(str(form.get("csrf", "")), self.csrf):
            return "the form's CSRF field is missing or wrong: reload the page and retry"
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            return f"a request from another site ({origin}) is refused"
        return None


class TokenLink:
    """ASGI middleware: ``GET ...?token=T`` with the right token sets the cookie and
    redirects to the same page without the token in its address; a wrong one is
    refused."""

    def __init__(self, app: ASGIApp, guard: Guard, render: Callable[..., str]) -> None:
        self.app = app
        self.guard = guard
        self.render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            request = Request(scope)
            given = request.query_params.get("token")
            if given is not None:
                response: Response
                if hmac.compare_digest(given, self.guard.token):
                    url = request.url.remove_query_params("token")
                    target = url.path + (f"?{url.query}" if url.query else "")
                    response = RedirectResponse(target, status_code=303)
                    response.set_cookie(Guard.cookie_name(request), self.guard.token,
                                        httponly=True, samesite="strict")
                else:
                    response = HTMLResponse(self.render(
                        "error.html", request, title="wrong token",
                        message="this is not the token this dashboard printed when it "
                                "started"), status_code=403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(["html"]), trim_blocks=True,
                      lstrip_blocks=True)
    env.filters.update(time=fmt_time, date=lambda t: fmt_time(t, date=True),
                       duration=fmt_duration, cost=fmt_cost, preview=preview)
    env.globals.update(WIDTH=WIDTH, LABEL=LABEL, ROW=ROW, percentile=percentile,
                       error_line=error_line, error_info=error_info,
                       statuses=[str(s) for s in RunStatus])
    return env


@dataclass(frozen=True, slots=True)
class RunFilter:
    """The runs page's query: status, workflow, created in the last ``since``, and the
    page's cursor: the last run of the page before (``after``) and its creation time
    (``before``). Runs created at that same instant are told apart by the store's order,
    so a page never skips or repeats one."""

    status: RunStatus | None = None
    workflow: str | None = None
    since: str | None = None
    before: float | None = None
    after: str | None = None

    @classmethod
    def of(cls, request: Request) -> RunFilter:
        q = request.query_params
        status = q.get("status") or None
        if status is not None and status not in {str(s) for s in RunStatus}:
            raise CliError(f"unknown status {status!r}")
        since = q.get("since") or None
        if since is not None:
            parse_duration(since, "since")
        before = q.get("before") or None
        try:
            cursor = float(before) if before is not None else None
        except ValueError:
            raise CliError(f"before={before!r} is not a time") from None
        return cls(status=RunStatus(status) if status else None,
                   workflow=q.get("workflow") or None, since=since, before=cursor,
                   after=q.get("after") or None)

    def query(self, **changes: Any) -> str:
        values = {"status": self.status, "workflow": self.workflow, "since": self.since,
                  "before": self.before, "after": self.after} | changes
        return urlencode({k: repr(v) if isinstance(v, float) else str(v)
                          for k, v in values.items() if v is not None})

    def next_page(self, last: RunRecord) -> str:
        return self.query(before=last.created_at, after=last.run_id)

    async def runs(self, rt: Runtime, limit: int) -> list[RunRecord]:
        """The page's runs, newest first (an indexed query of ``limit`` rows, plus the
        runs created at the cursor's instant that the page before showed)."""
        await rt.open()
        since = None if self.since is None else time.time() - parse_duration(self.since)
        edge = None if self.before is None else math.nextafter(self.before, math.inf)
        records = await rt.store.list_runs(status=self.status, workflow=self.workflow,
                                           created_before=edge, created_since=since,
                                           limit=limit + (TIE_SLACK if edge else 0))
        if self.before is not None:  # those at the cursor's instant lead, in order
            at_edge = [r.run_id for r in records if r.created_at == self.before]
            shown = (at_edge.index(self.after) + 1 if self.after in at_edge
                     else len(at_edge))
            records = records[shown:]
        return records[:limit]


async def _tree(rt: Runtime, run_id: str) -> list[tuple[int, RunRecord]]:
    """The child runs under ``run_id``, depth first, with their depth (at most
    ``TREE_LIMIT``)."""
    out: list[tuple[int, RunRecord]] = []

    async def walk(parent: str, depth: int) -> None:
        for child in reversed(await rt.store.list_runs(parent_run_id=parent,
                                                       limit=TREE_LIMIT)):
            if len(out) >= TREE_LIMIT:
                return
            out.append((depth, child))
            await walk(child.run_id, depth + 1)

    await walk(run_id, 1)
    return out


def create_app(settings: Settings) -> Starlette:
    """The dashboard over ``settings.store``.

    Raises:
        CliError: there is no journal there (nothing is created).
    """
    rt = client_runtime(settings.store)
    env = _environment()
    guard = Guard(settings.token, settings.read_only)

    def render(name: str, request: Request, **values: Any) -> str:
        return env.get_template(name).render(
            request=request, store=rt.store.url, read_only=settings.read_only,
            can_act=guard.can_act(request), csrf=guard.csrf, **values)

    def page(name: str, request: Request, status_code: int = 200, **values: Any,
             ) -> HTMLResponse:
        return HTMLResponse(render(name, request, **values), status_code=status_code)

    def problem(request: Request, status_code: int, title: str, message: str,
                ) -> HTMLResponse:
        return page("error.html", request, status_code, title=title, message=message)

    Handler = Callable[[Request], Awaitable[Response]]

    def guarded(handler: Handler) -> Handler:
        """A page's errors as pages: an unknown run 404, a bad query 400, a journal
        that cannot be read 500 naming it."""

        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except errors.RunNotFoundError as exc:
                return problem(request, 404, "no such run", str(exc))
            except errors.ApprovalError as exc:
                return problem(request, 409, "decision refused", str(exc))
            except CliError as exc:
                return problem(request, 400 if exc.code == USAGE else 409, "cannot do that",
                               str(exc))
            except errors.StalwartError as exc:
                return problem(request, 500, "the journal cannot be read",
                               f"{rt.store.url}: {type(exc).__name__}: {exc} "
                               "(nothing was written to it)")

        return run

    # -- pages -----------------------------------------------------------------------

    async def home(request: Request) -> Response:
        return RedirectResponse("/runs", status_code=307)

    async def runs_page(request: Request) -> Response:
        wanted = request.query_params.get("q", "").strip()
        if wanted:
            await rt.open()
            if await rt.store.get_run(wanted) is not None:
                return RedirectResponse(f"/runs/{wanted}", status_code=303)
        flt = RunFilter.of(request)
        records = await flt.runs(rt, PAGE + 1)
        more = len(records) > PAGE
        records = records[:PAGE]
        return page("runs.html", request, runs=records, flt=flt, wanted=wanted,
                    next_query=flt.next_page(records[-1]) if more else None,
                    live=flt.before is None)

    async def run_values(run_id: str) -> dict[str, Any]:
        view: RunView = await read_run_view(rt, run_id)
        rec = view.story.run
        root = build_trace(rec, view.events, rt.prices)
        return {"view": view, "run": rec, "wf": waterfall(root, view.story.executions,
                                                          now=time.time()),
                "talks": conversations(root, view.events, view.story.steps),
                "tree": await _tree(rt, run_id), "error": error_info(rec.error)
                if rec.error else None}

    async def run_page(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        return page("run.html", request, note=request.query_params.get("note"),
                    **await run_values(run_id))

    async def dlq_page(request: Request) -> Response:
        return page("dlq.html", request, letters=await dead_letters(rt, 100),
                    note=request.query_params.get("note"))

    async def approvals_page(request: Request) -> Response:
        return page("approvals.html", request, waiting=await pending_approvals(
            settings.store, None), note=request.query_params.get("note"))

    async def workers_page(request: Request) -> Response:
        since = request.query_params.get("since") or "1h"
        fleet = await read_fleet(rt, parse_duration(since, "since"))
        return page("workers.html", request, fleet=fleet, since=since)

    async def stats_page(request: Request) -> Response:
        since = request.query_params.get("since") or None
        window = parse_duration(since, "since") if since else None
        await rt.open()
        runs = await collect(rt, window, 1000)
        rows = aggregate(runs, rt.prices)
        ordered = sorted(rows.items(), key=lambda kv: (kv[1].kind != "model", kv[0]))
        limits = (await rt.store.limits_view(now=time.time())
                  if isinstance(rt.store, LimitsReader) else None)
        return page("stats.html", request, rows=ordered, runs=len(runs), since=since,
                    plot=cost_plot(runs, rt.prices), limits=limits)

    # -- live (Server-Sent Events) ---------------------------------------------------

    async def stream(request: Request, look: Callable[[], Awaitable[tuple[Any, str, bool]]],
                     event: str) -> EventSourceResponse:
        """Send ``event`` with a fresh fragment each time ``look`` sees the journal
        change (compared by its first value), until ``look`` says it is final or the
        browser leaves."""

        async def events() -> AsyncIterator[dict[str, str]]:
            seen: Any = None
            while not await request.is_disconnected():
                key, html, final = await look()
                if key != seen:
                    seen = key
                    yield {"event": event, "data": html}
                if final:
                    yield {"event": "end", "data": ""}
                    return
                await asyncio.sleep(settings.poll_interval)

        return EventSourceResponse(events(), ping=15)

    async def runs_stream(request: Request) -> Response:
        flt = RunFilter.of(request)

        async def look() -> tuple[Any, str, bool]:
            records = (await flt.runs(rt, PAGE + 1))[:PAGE]
            key = tuple((r.run_id, r.status, r.updated_at) for r in records)
            return key, render("_runs_rows.html", request, runs=records), False

        return await stream(request, look, "runs")

    async def run_stream(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        await rt.get_run(run_id)  # an unknown run: 404 before the stream starts

        last: list[Any] = [None]

        async def look() -> tuple[Any, str, bool]:
            rec = await rt.get_run(run_id)
            key = (rec.status, rec.updated_at)
            if key == last[0]:  # unchanged: no need to read its journal
                return key, "", rec.is_terminal
            last[0] = key
            values = await run_values(run_id)
            return key, render("_run_live.html", request, **values), rec.is_terminal

        return await stream(request, look, "run")

    # -- actions ---------------------------------------------------------------------

    async def act(request: Request, do: Callable[[dict[str, Any]], Awaitable[str]],
                  ) -> Response:
        form = dict(await request.form())
        why = guard.refusal(request, form)
        if why is not None:
            return problem(request, 403, "action refused", why)
        return RedirectResponse(await do(form), status_code=303)

    async def cancel_action(request: Request) -> Response:
        run_id = request.path_params["run_id"]

        async def do(form: dict[str, Any]) -> str:
            before, after = await cancel_run(settings.store, run_id)
            if before.is_terminal:
                raise CliError(f"run {run_id} has already ended ({before.status}); "
                               "nothing to cancel", FAILURE)
            note = ("cancelled" if after.status == RunStatus.CANCELLED else
                    "cancellation requested: its worker stops it at its next step")
            return f"/runs/{run_id}?" + urlencode({"note": note})

        return await act(request, do)

    async def retry_action(request: Request) -> Response:
        run_id = request.path_params["run_id"]

        async def do(form: dict[str, Any]) -> str:
            after = await redrive_only(settings.store, run_id)
            note = f"redriven ({after.status}): a worker executes it"
            return f"/runs/{run_id}?" + urlencode({"note": note})

        return await act(request, do)

    async def fork_action(request: Request) -> Response:
        run_id = request.path_params["run_id"]

        async def do(form: dict[str, Any]) -> str:
            at = str(form.get("at", "")).strip()
            if not at:
                raise CliError("a fork needs the step to re-execute from")
            model = str(form.get("model", "")).strip() or None
            rec, _ = await start_fork(settings.store, run_id, at, model, None, [], False)
            note = (f"fork of {run_id} at step {at}" + (f" with {model}" if model else "")
                    + f" ({rec.status}): a worker executes it")
            return f"/runs/{rec.run_id}?" + urlencode({"note": note})

        return await act(request, do)

    async def replay_action(request: Request) -> Response:
        run_id = request.path_params["run_id"]

        async def do(form: dict[str, Any]) -> str:
            report = await replay_report(settings.store, run_id, [])
            if report.deterministic:
                note = (f"replayed with today's code: deterministic ({report.steps_replayed}"
                        f" of {report.steps_recorded} recorded steps reached, nothing "
                        "executed)")
            else:
                note = ("replayed with today's code: DIVERGES: "
                        + preview("; ".join(report.divergences), 400))
            return f"/runs/{run_id}?" + urlencode({"note": note})

        return await act(request, do)

    async def decide_action(request: Request) -> Response:
        async def do(form: dict[str, Any]) -> str:
            run_id, step = str(form.get("run_id", "")), str(form.get("step", ""))
            verdict = str(form.get("decision", ""))
            token = str(form.get("token", ""))
            if not run_id or not step or not token or verdict not in ("approve", "deny"):
                raise CliError("a decision needs the run, the step, the approval's token "
                               "and approve or deny")
            decision = await decide_approval(
                settings.store, run_id, step, verdict == "approve",
                str(form.get("as", "")).strip() or None,
                str(form.get("comment", "")).strip() or None, token)
            verb = "approved" if decision.approved else "denied"
            note = (f"step {step} of run {run_id} {verb} by {decision.by}: a worker "
                    "continues the run")
            return "/approvals?" + urlencode({"note": note})

        return await act(request, do)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await rt.close()

    routes = [
        Route("/", guarded(home)),
        Route("/runs", guarded(runs_page)),
        Route("/runs/stream", guarded(runs_stream)),
        Route("/runs/{run_id:path}/stream", guarded(run_stream)),
        Route("/runs/{run_id:path}/cancel", guarded(cancel_action), methods=["POST"]),
        Route("/runs/{run_id:path}/retry", guarded(retry_action), methods=["POST"]),
        Route("/runs/{run_id:path}/fork", guarded(fork_action), methods=["POST"]),
        Route("/runs/{run_id:path}/replay", guarded(replay_action), methods=["POST"]),
        Route("/runs/{run_id:path}", guarded(run_page)),
        Route("/dlq", guarded(dlq_page)),
        Route("/approvals", guarded(approvals_page)),
        Route("/approvals/decide", guarded(decide_action), methods=["POST"]),
        Route("/workers", guarded(workers_page)),
        Route("/stats", guarded(stats_page)),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return problem(request, 404, "not found", f"nothing at {request.url.path}")

    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={404: not_found})
    app.add_middleware(TokenLink, guard=guard, render=render)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(settings.hosts))
    app.state.runtime = rt  # the read-only runtime the pages read through
    return app
