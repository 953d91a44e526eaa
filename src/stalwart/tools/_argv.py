"""Commands as argv lists: no shell ever parses a model's text."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import final

from ..errors import UnsafeArgumentError

__all__ = ["ArgvResult", "arun_argv", "run_argv"]

_BASE_ENV = ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR")
"""What a command's environment keeps of ours by default: no API keys, no tokens."""


@final
@dataclass(frozen=True, slots=True)
class ArgvResult:
    """A finished command: what ran, its exit status and its output (text, cut at
    ``max_output`` characters each, ``truncated`` then set)."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    truncated: bool = False


def _checked(argv: Sequence[str], allow: Collection[str] | None,
             after_options: Sequence[str]) -> list[str]:
    if isinstance(argv, str | bytes):
        raise UnsafeArgumentError(
            "a command must be an argv list such as ['ls', '-l', path], not a string a "
            "shell would parse")
    if isinstance(after_options, str | bytes):
        raise UnsafeArgumentError("after_options must be a list of strings, not a string")
    out = [*argv, *(["--", *after_options] if after_options else [])]
    if not out:
        raise UnsafeArgumentError("the command is empty")
    for arg in out:
        if not isinstance(arg, str):
            raise UnsafeArgumentError(f"argv holds a {type(arg).__name__}, not a string")
        if "\0" in arg:
            raise UnsafeArgumentError("argv holds a NUL character")
    if allow is not None:
        program = out[0]
        if program not in allow and os.path.basename(program) not in allow:
            raise UnsafeArgumentError(
                f"program {program!r} is not allowed (allowed: {', '.join(sorted(allow))})")
    return out


def _env(env: Mapping[str, str] | None) -> dict[str, str]:
    if env is not None:
        return dict(env)
    return {k: os.environ[k] for k in _BASE_ENV if k in os.environ}


def _cut(data: bytes, limit: int) -> tuple[str, bool]:
    text = data.decode("utf-8", "replace")
    return (text[:limit], True) if len(text) > limit else (text, False)


def run_argv(argv: Sequence[str], *, allow: Collection[str] | None = None,
             after_options: Sequence[str] = (), cwd: str | os.PathLike[str] | None = None,
             env: Mapping[str, str] | None = None, input: str | None = None,
             timeout: float = 30.0, max_output: int = 1_000_000) -> ArgvResult:
    """Run a program with ``argv`` (no shell) and return its result.

    Args:
        argv: the program and its arguments, a list of strings. A string is refused:
            it is what a shell would split, and ``; rm -rf ~`` would be a command.
        allow: if given, the programs that may run (names or paths; ``argv[0]`` or
            its base name must be listed).
        after_options: arguments from the model, appended after ``--`` so that
            ``--output=/etc/passwd`` is a file name, not an option.
        env: the environment (default: only PATH, LANG, LC_ALL, HOME, TMPDIR of ours,
            so no key in our environment reaches the program).
        timeout: seconds before the program is killed (:class:`subprocess.TimeoutExpired`).
        max_output: characters kept of stdout and of stderr each.

    Raises:
        UnsafeArgumentError: a string command, a non-string or NUL in argv, or a
            program outside ``allow``.
    """
    args = _checked(argv, allow, after_options)
    done = subprocess.run(args, shell=False, cwd=cwd, env=_env(env), capture_output=True,
                          input=None if input is None else input.encode(),
                          stdin=subprocess.DEVNULL if input is None else None,
                          timeout=timeout, check=False)
    out, cut_out = _cut(done.stdout, max_output)
    err, cut_err = _cut(done.stderr, max_output)
    return ArgvResult(tuple(args), done.returncode, out, err, cut_out or cut_err)


async def arun_argv(argv: Sequence[str], *, allow: Collection[str] | None = None,
                    after_options: Sequence[str] = (),
                    cwd: str | os.PathLike[str] | None = None,
                    env: Mapping[str, str] | None = None, input: str | None = None,
                    timeout: float = 30.0, max_output: int = 1_000_000) -> ArgvResult:
    """:func:`run_argv` for async tools; on ``timeout`` the program is killed and
    :class:`TimeoutError` raised."""
    args = _checked(argv, allow, after_options)
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, env=_env(env),
        stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        async with asyncio.timeout(timeout):
            stdout, stderr = await proc.communicate(
                None if input is None else input.encode())
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    out, cut_out = _cut(stdout, max_output)
    err, cut_err = _cut(stderr, max_output)
    assert proc.returncode is not None
    return ArgvResult(tuple(args), proc.returncode, out, err, cut_out or cut_err)
