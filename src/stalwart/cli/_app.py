"""The ``stalwart`` command: the typer app and the error boundary around it."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Annotated, Any, NoReturn

import typer

from .. import __version__
from ..errors import StalwartError
from . import _approvals, _commands
from ._board import board
from ._common import FAILURE, USAGE, CliError, exit_code_for
from ._demo import demo
from ._dlq import dlq_app
from ._doctor import doctor
from ._help import HelpCommand, HelpGroup
from ._runs import runs_app
from ._stats import stats
from ._tools import tools
from ._workers import worker, workers_app
from .dashboard import dashboard

__all__ = ["app", "main"]


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "unknown error"


def _fail(message: str, code: int) -> NoReturn:
    sys.stderr.write(f"error: {_one_line(message)}\n")
    sys.stderr.flush()
    sys.exit(code)


def _kind(exc: BaseException) -> str | None:
    """Which click exception ``exc`` is, by class name: typer >= 0.26 vendors click under
    ``typer._click`` while older versions raise ``click``'s own, so neither import path
    covers both."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    for kind in ("NoArgsIsHelpError", "UsageError", "ClickException", "TyperException"):
        if kind in names:
            return kind
    return None


class _Boundary(HelpGroup):
    """Turns every error into one ``error: ...`` line on stderr and an exit status.

    Click and typer would print a usage box for a bad argument, and Python a traceback
    for anything else; scripts and people both read one line better. Set
    ``$STALWART_DEBUG`` to let unexpected exceptions through with their traceback.
    """

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             windows_expand_args: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args,
                                **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, windows_expand_args,
                              **extra)
        except typer.Abort:
            _fail("aborted", FAILURE)
        except (CliError, StalwartError, json.JSONDecodeError) as exc:
            _fail(str(exc), exit_code_for(exc))
        except KeyboardInterrupt:
            _fail("interrupted; unfinished runs can be finished with `stalwart resume`", 130)
        except Exception as exc:
            kind = _kind(exc)
            ctx: Any = getattr(exc, "ctx", None)
            if kind == "NoArgsIsHelpError" and ctx is not None:
                sys.stdout.write(ctx.get_help() + "\n")
                sys.exit(0)
            if kind in ("NoArgsIsHelpError", "UsageError"):
                where = f"{ctx.command_path}: " if ctx is not None else ""
                hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
                _fail(f"{where}{exc.format_message()}{hint}", USAGE)  # type: ignore[attr-defined]
            if kind is not None:
                _fail(exc.format_message(), getattr(exc, "exit_code", FAILURE))  # type: ignore[attr-defined]
            if os.environ.get("STALWART_DEBUG"):
                raise
            _fail(f"unexpected {type(exc).__name__}: {exc} "
                  "(set STALWART_DEBUG=1 for the traceback)", FAILURE)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    name="stalwart",
    cls=_Boundary,
    help="Durable execution for LLM agents: run workflows, inspect journals, resume after "
         "crashes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: no boxes, no <bool> metavars, [brackets] kept
)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"stalwart {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="Print the version and exit.")] = False,
) -> None:
    """Durable execution for LLM agents: run workflows, inspect journals, resume after
    crashes."""
app.command("run", cls=HelpCommand)(_commands.run)
app.command("resume", cls=HelpCommand)(_commands.resume)
app.command("signal", cls=HelpCommand)(_commands.signal)
app.command("cancel", cls=HelpCommand)(_commands.cancel)
app.command("approvals", cls=HelpCommand)(_approvals.approvals)
app.command("approve", cls=HelpCommand)(_approvals.approve)
app.command("deny", cls=HelpCommand)(_approvals.deny)
app.command("demo", cls=HelpCommand)(demo)
app.add_typer(runs_app, name="runs")
app.command("stats", cls=HelpCommand)(stats)
app.command("board", cls=HelpCommand)(board)
app.command("tools", cls=HelpCommand)(tools)
app.add_typer(dlq_app, name="dlq")
app.command("doctor", cls=HelpCommand)(doctor)
app.command("worker", cls=HelpCommand)(worker)
app.add_typer(workers_app, name="workers")
app.command("dashboard", cls=HelpCommand)(dashboard)


def main() -> None:
    """The console script ``stalwart``."""
    app(prog_name="stalwart")
