"""``stalwart dashboard``: check the journal and the port, print the link, serve."""

from __future__ import annotations

import secrets
import socket
import sys
from typing import Annotated

import typer

from ..._runtime import Runtime
from ...errors import _install_hint
from .._common import USAGE, CliError, StoreOption, client_runtime, command_store, run_async
from .._options import at_least

__all__ = ["dashboard", "listen"]


async def _probe(rt: Runtime) -> None:
    """Read the journal once: a file that is not one, or is damaged, fails here (one
    line, exit 2) rather than on the first page."""
    try:
        await rt.open()
        await rt.store.list_runs(limit=1)
    finally:
        await rt.close()


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (``0``: any free port).

    Raises:
        CliError: the port is taken (or the address cannot be used), in one line.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        why = exc.strerror or str(exc)
        hint = " (another dashboard? pass --port N)" if port else ""
        raise CliError(f"cannot listen on {host}:{port}: {why}{hint}", USAGE) from None
    return sock


def dashboard(
    store: StoreOption = None,
    port: Annotated[int, typer.Option(
        metavar="N", callback=at_least(0),
        help="The port to serve on (0: any free port).")] = 8765,
    host: Annotated[str, typer.Option(
        metavar="ADDR",
        help="The address to bind. The default serves this machine only; the journal "
             "holds your runs' inputs and outputs.")] = "127.0.0.1",
    read_only: Annotated[bool, typer.Option(
        "--read-only", help="Show the journal and take no action (no cancel, retry or "
                            "fork).")] = False,
    poll: Annotated[float, typer.Option(
        metavar="SECONDS", callback=at_least(0.05),
        help="Seconds between two looks at the journal by a live page.")] = 1.0,
) -> None:
    """A local web dashboard over the journal: runs (live), a run's waterfall, dead
    letters, models and tools, workers.

    It reads the journal read-only. Actions (cancel, dead-letter retry, fork) need the
    token in the link it prints, which changes at every start; --read-only takes none.
    Needs the dashboard extra: pip install -e '.[dashboard]' in a checkout."""
    try:
        import uvicorn

        from ._web import LOCAL_HOSTS, Settings, create_app
    except ImportError as exc:
        raise CliError(f"the dashboard needs the dashboard extra ({_install_hint('dashboard')}): "
                       f"{exc.name} is not installed") from None
    target = command_store(store)
    rt = client_runtime(target)  # no journal there: one line, nothing created
    run_async(_probe(rt))
    sock = listen(host, port)
    token = secrets.token_urlsafe(18)
    # Served by name only to this machine's names, and to the address it was told to
    # bind; bound to every address, to any name.
    hosts = ("*",) if host in ("0.0.0.0", "::", "") else (*LOCAL_HOSTS, host)
    app = create_app(Settings(store=target if isinstance(target, str) else None,
                              token=token, read_only=read_only, poll_interval=poll,
                              hosts=hosts))
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}/"
    sys.stderr.write(f"stalwart dashboard: {url}" + ("" if read_only else f"?token={token}")
                     + f"\n  journal {rt.store.url} (read-only"
                     + (")" if read_only else "; actions need this link's token, new at "
                        "every start)")
                     + "\n  Ctrl-C stops it\n")
    sys.stderr.flush()
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on: the way out
        pass
    sys.stderr.write("stalwart dashboard stopped\n")
