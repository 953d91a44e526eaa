"""Paths confined to a root: ``..`` and symlink escapes refused."""

from __future__ import annotations

import errno
import os
from pathlib import Path, PurePosixPath

from ..errors import UnsafeArgumentError

__all__ = ["confine", "open_confined"]


def _relative_parts(path: str | os.PathLike[str]) -> tuple[str, ...]:
    text = os.fspath(path)
    if not isinstance(text, str):
        raise UnsafeArgumentError("a path must be text")
    if "\0" in text:
        raise UnsafeArgumentError("the path holds a NUL character")
    if not text.strip():
        raise UnsafeArgumentError("the path is empty")
    pure = PurePosixPath(text)
    if pure.is_absolute() or os.path.isabs(text):
        raise UnsafeArgumentError(f"path {text!r} is absolute; give one relative to the root")
    return pure.parts


def confine(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """The real path of ``path`` under ``root``, where a tool may read or write.

    ``path`` is relative to ``root``. It is resolved as the file system will resolve
    it (every symlink followed, every ``..`` applied) and refused if the result is not
    inside ``root``'s real path: ``../etc/passwd``, ``a/../../x`` and a symlink inside
    the root that points out of it are all refused; a symlink that stays inside is
    followed. The check is of the path as it is now: for a root where someone else can
    create symlinks, open with :func:`open_confined`.

    Raises:
        UnsafeArgumentError: an absolute or empty path, a NUL byte, an escape.
    """
    parts = _relative_parts(path)
    base = os.path.realpath(root)
    if not os.path.isdir(base):
        raise UnsafeArgumentError(f"root {os.fspath(root)!r} is not a directory")
    real = os.path.realpath(os.path.join(base, *parts))
    if os.path.commonpath([base, real]) != base:
        raise UnsafeArgumentError(f"path {os.fspath(path)!r} escapes its root")
    return Path(real)


def open_confined(root: str | os.PathLike[str], path: str | os.PathLike[str],
                  flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """Open ``path`` under ``root`` and return the file descriptor, following no
    symlink and no ``..`` at all: each directory is opened relative to the one before
    (``O_NOFOLLOW``), so nothing swapped in between a check and the open can lead out.
    Wrap the descriptor with :func:`os.fdopen`.

    Raises:
        UnsafeArgumentError: an absolute or empty path, a NUL byte, a ``..``, or a
            symlink on the way (:class:`OSError` ``ELOOP`` from the kernel, translated).
    """
    parts = [p for p in _relative_parts(path) if p != "."]
    if ".." in parts:
        raise UnsafeArgumentError(f"path {os.fspath(path)!r} climbs out with '..'")
    if not parts:
        raise UnsafeArgumentError("the path names the root itself")
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    directory = getattr(os, "O_DIRECTORY", 0)
    fd = os.open(root, os.O_RDONLY | directory)
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, os.O_RDONLY | directory | nofollow, dir_fd=fd)
            except OSError as exc:
                raise _refused(path, exc) from exc
            os.close(fd)
            fd = nxt
        try:
            return os.open(parts[-1], flags | nofollow, mode, dir_fd=fd)
        except OSError as exc:
            raise _refused(path, exc) from exc
    finally:
        os.close(fd)


def _refused(path: str | os.PathLike[str], exc: OSError) -> OSError | UnsafeArgumentError:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return UnsafeArgumentError(f"path {os.fspath(path)!r} goes through a symlink")
    return exc
