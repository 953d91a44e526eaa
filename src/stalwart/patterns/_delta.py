"""Structural deltas between JSON values: what a graph journals instead of its state.

A state graph's node changes a few fields of a state that may be large (a conversation
that grows by one message a turn). Journaling the whole state after every node would
make the journal grow with the square of the run's length, as a checkpointer that
stores every superstep's state does. A node's step journals a *delta* instead, and a
replay rebuilds the state by patching its input with the recorded deltas in order.

``diff(old, new)`` returns an operation that ``patch(old, op)`` turns back into ``new``
(``patch(a, diff(a, b)) == b`` for all JSON values, a property test checks it), or
``None`` when they are equal. Operations are small JSON arrays:

* ``["=", value]``: set (a scalar changed, a type changed, a list was not only extended);
* ``["+", tail]``: append: a list or a string that was extended keeps its old value as a
  prefix, and only the tail is journaled;
* ``["~", {key: op}]``: an object whose keys changed, each with its own operation;
  ``["-"]`` removes a key.

Pure and dependency-free: no pydantic, no I/O, no clock.
"""

from __future__ import annotations

from typing import Any

__all__ = ["diff", "patch"]

Op = list[Any]


def diff(old: Any, new: Any) -> Op | None:
    """The operation that turns JSON value ``old`` into ``new``; ``None``: equal."""
    if _same(old, new):
        return None
    if isinstance(old, dict) and isinstance(new, dict):
        changes: dict[str, Op] = {}
        for key, value in new.items():
            if key not in old:
                changes[key] = ["=", value]
            else:
                op = diff(old[key], value)
                if op is not None:
                    changes[key] = op
        for key in old:
            if key not in new:
                changes[key] = ["-"]
        return ["~", changes]
    if isinstance(old, list) and isinstance(new, list) and len(new) > len(old) and all(
            _same(a, b) for a, b in zip(old, new, strict=False)):
        return ["+", new[len(old):]]
    if (isinstance(old, str) and isinstance(new, str) and len(new) > len(old)
            and new.startswith(old)):
        return ["+", new[len(old):]]
    return ["=", new]


def patch(old: Any, op: Op | None) -> Any:
    """Apply ``op`` (from :func:`diff`) to ``old``; ``old`` itself is not changed.

    Raises:
        ValueError: ``op`` is not an operation, or does not fit ``old``.
    """
    if op is None:
        return old
    if not isinstance(op, list) or not op or not isinstance(op[0], str):
        raise ValueError(f"not a delta operation: {op!r}")
    kind = op[0]
    if kind == "=" and len(op) == 2:
        return op[1]
    if kind == "+" and len(op) == 2:
        if isinstance(old, list) and isinstance(op[1], list):
            return [*old, *op[1]]
        if isinstance(old, str) and isinstance(op[1], str):
            return old + op[1]
        raise ValueError(f"an append delta does not fit a {type(old).__name__}")
    if kind == "~" and len(op) == 2 and isinstance(op[1], dict) and isinstance(old, dict):
        out = dict(old)
        for key, sub in op[1].items():
            if sub == ["-"]:
                out.pop(key, None)
            else:
                out[key] = patch(old.get(key), sub)
        return out
    raise ValueError(f"not a delta operation for a {type(old).__name__}: {op!r}")


def _same(a: Any, b: Any) -> bool:
    """JSON equality: ``1 == 1.0 == True`` in Python, but they are different JSON."""
    return type(a) is type(b) and a == b if not isinstance(a, dict | list) else (
        type(a) is type(b) and len(a) == len(b) and (
            all(k in b and _same(v, b[k]) for k, v in a.items()) if isinstance(a, dict)
            else all(_same(x, y) for x, y in zip(a, b, strict=True))))
