"""Plain ``--help`` pages: usage, what the command does, its arguments and options.

Typer's own pages depend on its version and mode: boxes drawn for a terminal, types as
metavars (``<bool>``, ``<str>``, ``<float range> [x>=0]``), ``[default: ...]`` text
eaten as rich markup. These two classes write every page the same way, from the click
parameters alone: an option shows its metavar (``SECONDS``, ``N``; nothing for a flag),
its help and its default (a string ``show_default`` says what the default depends
on); a command's help keeps its paragraphs; a group lists its commands in the order
they were added, each with its first sentence.
"""

from __future__ import annotations

import enum
import inspect
from typing import Any

from typer.core import TyperCommand, TyperGroup

__all__ = ["HelpCommand", "HelpGroup"]


class HelpCommand(TyperCommand):
    """A command whose ``--help`` is written by :func:`_write_help`."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _write_help(self, ctx, formatter)


class HelpGroup(TyperGroup):
    """A group whose ``--help`` is written by :func:`_write_help`, commands included."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _write_help(self, ctx, formatter)
        rows = []
        for name in self.list_commands(ctx):
            sub = self.get_command(ctx, name)
            if sub is None or getattr(sub, "hidden", False):
                continue
            rows.append((name, first_sentence(sub.short_help or sub.help or "")))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def first_sentence(text: str) -> str:
    """The help's first sentence (up to a period that ends it, or its first paragraph)."""
    paragraph = inspect.cleandoc(text).split("\n\n")[0].replace("\n", " ").strip()
    for i, ch in enumerate(paragraph):
        if ch == "." and (i + 1 == len(paragraph) or paragraph[i + 1] == " "):
            return paragraph[: i + 1]
    return paragraph


def _write_help(cmd: Any, ctx: Any, formatter: Any) -> None:
    params = [p for p in cmd.get_params(ctx) if not getattr(p, "hidden", False)]
    arguments = [p for p in params if p.param_type_name == "argument"]
    options = [p for p in params if p.param_type_name == "option"]
    pieces = ["[OPTIONS]"] if options else []
    pieces += [_argument_name(p) if p.required else f"[{_argument_name(p)}]"
               for p in arguments]
    if getattr(cmd, "list_commands", None) is not None:
        pieces.append("COMMAND [ARGS]...")
    formatter.write_usage(ctx.command_path, " ".join(pieces))
    text = inspect.cleandoc(cmd.help or "")
    for paragraph in text.split("\n\n") if text else ():
        formatter.write_paragraph()
        with formatter.indentation():
            formatter.write_text(paragraph.replace("\n", " "))
    if arguments:
        with formatter.section("Arguments"):
            formatter.write_dl([(_argument_name(p), _param_help(p)) for p in arguments])
    if options:
        with formatter.section("Options"):
            formatter.write_dl([(_option_names(p), _param_help(p)) for p in options])


def _argument_name(param: Any) -> str:
    name = param.metavar or str(param.name).upper()
    return f"{name}..." if param.nargs != 1 else name


def _option_names(param: Any) -> str:
    names = ", ".join(sorted(param.opts, key=lambda o: (o.startswith("--"), o)))
    if param.secondary_opts:
        names += " / " + ", ".join(param.secondary_opts)
    if not param.is_flag and not getattr(param, "count", False):
        names += f" {param.metavar or str(param.name).upper()}"
    return names


def _param_help(param: Any) -> str:
    extra = []
    default = _default(param)
    if default:
        extra.append(f"default: {default}")
    if param.required and param.param_type_name == "option":
        extra.append("required")
    text = " ".join((param.help or "").split())
    return f"{text}  [{'; '.join(extra)}]" if extra else text


def _default(param: Any) -> str | None:
    shown = param.show_default
    if isinstance(shown, str):
        return shown
    value = param.default
    if shown is False or value is None or getattr(param, "is_flag", False) or callable(value):
        return None
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value)) or None
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, float) and value.is_integer():
        return f"{value:g}"
    return str(value)
