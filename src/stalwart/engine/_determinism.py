"""The non-determinism detector: does the workflow code still make the journal's steps?

One detector serves both a live execution that resumes a run and ``stalwart runs
replay``: both run the workflow code through an :class:`~stalwart.engine._execution.Execution`,
which asks a :class:`History` of the run's journal before each step. Its answers are
errors (:class:`~stalwart.errors.NonDeterminismError`), raised before the step's code
runs, so code that no longer matches a run is refused before it causes a new effect.

Step ids are paths: ``5/1/3`` is the third step of branch 1 of the gather that is step
5. Even positions of a path count steps within a scope, odd ones number the branches
of a gather. Steps of one scope run one after the other, and a gather returns only when
its branches are done, so the journal orders them: a step of a scope *precedes* every
later step of that scope and everything nested in those, and branches of one gather are
concurrent, ordered by nothing. The rules:

* **Changed** — a recorded step id gets a call of another name (reordered, renamed or
  inserted steps), or a plain step where the journal has a gather, or the reverse.
* **Added inside history** — a step the journal lacks (or a recorded wait the code
  resumes) while the journal already holds a *later* step of the same scope or of an
  enclosing one: the code does something where it did nothing before (a gather widened,
  a step inserted among steps of one name).
* **Skipped** — a step goes live while a recorded step that precedes it was never
  reached: the code left something out (a step removed, a branch fewer).
* **A branch fewer** — a gather is called with fewer awaitables than the journal has
  branches for.
* **Unreached** — the code finishes or parks without reaching a recorded step.

A step appended after everything recorded cannot be told from progress, and runs.

One case is not a divergence: with ``gather(on_error="cancel")`` a failing branch
cancels its siblings, possibly inside a step, and the workflow may catch the failure
and go on. Replaying it, a cancelled sibling reaches its unrecorded step while later
steps exist. That finding is *provisional* (:func:`is_provisional`): the gather holds
it until its branches are settled and drops it if a recorded failure explains it, and
the recorded steps of the branches it then cancels count as reached (:meth:`excuse`).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping

from ..errors import NonDeterminismError

__all__ = ["History", "is_provisional", "step_path"]

Path = tuple[int, ...]

_PROVISIONAL = "_stalwart_provisional"


def step_path(step_id: str) -> Path:
    """``"5/1/3"`` -> ``(5, 1, 3)``; ordering paths orders steps as they run."""
    return tuple(int(p) for p in step_id.split("/") if p.isdigit())


def is_provisional(exc: BaseException) -> bool:
    """Whether ``exc`` is a divergence that a sibling's recorded failure may explain
    (see the module docstring)."""
    return bool(getattr(exc, _PROVISIONAL, False))


def _id(path: Path) -> str:
    return "/".join(map(str, path))


class History:
    """The step ids and names one run's journal recorded, and which the code reached."""

    def __init__(self, run_id: str, names: Mapping[str, str | None]) -> None:
        self.run_id = run_id
        self.names = dict(names)
        """Recorded step id -> the name it was recorded under."""
        self.visited: set[str] = set()
        """Recorded step ids the code has reached (or that count as reached)."""
        self._paths = {sid: step_path(sid) for sid in self.names}
        self._order = sorted((p, sid) for sid, p in self._paths.items())
        self._head = 0  # self._order[:_head] is all visited
        self._last: dict[Path, int] = {}   # scope -> highest step number recorded in it
        self._width: dict[Path, int] = {}  # gather -> highest branch number recorded
        self._gathers: set[Path] = set()   # step paths with recorded steps inside them
        for path in self._paths.values():
            for c in range(len(path)):
                scope = path[:c]
                if c % 2 == 0:
                    self._last[scope] = max(self._last.get(scope, 0), path[c])
                else:
                    self._width[scope] = max(self._width.get(scope, -1), path[c])
                    self._gathers.add(scope)

    # -- what the code did -----------------------------------------------------------

    def visit(self, step_id: str) -> None:
        """The code reached recorded step ``step_id``."""
        self.visited.add(step_id)

    def excuse(self, branch_id: str) -> None:
        """A gather cancelled branch ``branch_id`` (``"5/1"``) before it replayed all
        its recorded steps: they count as reached (the gather raised the failure the
        journal recorded, which cancelled that branch the first time too)."""
        prefix = step_path(branch_id)
        for sid, path in self._paths.items():
            if path[:len(prefix)] == prefix:
                self.visited.add(sid)

    # -- the rules -------------------------------------------------------------------

    def check_name(self, step_id: str, name: str) -> NonDeterminismError | None:
        """The code calls ``name`` at recorded step ``step_id``."""
        recorded = self.names[step_id]
        if recorded == name:
            return None
        return self._error(
            f"step {step_id} is recorded as {recorded!r} but the workflow code now calls "
            f"{name!r} there", step_id, recorded, name)

    def check_live(self, step_id: str, name: str) -> NonDeterminismError | None:
        """Step ``step_id`` is about to run (or a recorded wait to go on waiting)."""
        path = step_path(step_id)
        if step_id not in self.names and path in self._gathers:
            first = self._first_within(path)
            return self._error(
                f"step {step_id} is recorded as a gather (the journal holds its step "
                f"{first}) but the workflow code now calls {name!r} there",
                step_id, "stalwart.gather", name)
        skipped = self._unreached_before(path)
        if skipped is not None:
            return self._error(
                f"step {skipped} is recorded as {self.names[skipped]!r} but the workflow "
                f"code went on to step {step_id} ({name!r}) without calling it",
                skipped, self.names[skipped], None)
        for c in range(0, len(path), 2):  # the step's own scope, then enclosing ones
            top = self._last.get(path[:c])
            if top is not None and top > path[c]:
                later = self._first_within((*path[:c], path[c] + 1), upto=top)
                # Later than a gather around it: the step may have been cancelled.
                return self._error(
                    f"step {step_id} ({name!r}) is not in the journal where it already "
                    f"holds the later step {later} ({self.names[later]!r}): the workflow "
                    "code now does something there that it did not do",
                    step_id, self.names.get(step_id), name, provisional=c < len(path) - 1)
        return None

    def check_gather(self, gather_id: str, width: int) -> NonDeterminismError | None:
        """The gather at ``gather_id`` is called with ``width`` awaitables."""
        path = step_path(gather_id)
        widest = self._width.get(path, -1)
        if widest < width:
            return None
        first = self._first_within((*path, width), upto=widest)
        return self._error(
            f"step {first} is recorded as {self.names[first]!r} in branch "
            f"{step_path(first)[len(path)]} of the gather at step {gather_id}, but the "
            f"workflow code now gathers {width} awaitable(s) there",
            first, self.names[first], None)

    def check_end(self, how: str) -> NonDeterminismError | None:
        """The code ``how`` (finishes, parks) with every recorded step reached?"""
        while self._head < len(self._order) and self._order[self._head][1] in self.visited:
            self._head += 1
        if self._head == len(self._order):
            return None
        sid = self._order[self._head][1]
        return self._error(
            f"step {sid} is recorded as {self.names[sid]!r} but the workflow code now "
            f"{how} without calling it", sid, self.names[sid], None)

    # -- helpers ---------------------------------------------------------------------

    def _unreached_before(self, path: Path) -> str | None:
        """The first recorded, unreached step that precedes ``path`` (module docstring)."""
        while self._head < len(self._order) and self._order[self._head][1] in self.visited:
            self._head += 1
        end = bisect.bisect_left(self._order, (path, ""), lo=self._head)
        for other, sid in self._order[self._head:end]:
            if sid in self.visited:
                continue
            c = next((i for i, (x, y) in enumerate(zip(other, path, strict=False))
                      if x != y), None)
            if c is not None and c % 2 == 0:  # an earlier step of a shared scope
                return sid
        return None

    def _first_within(self, lo: Path, *, upto: int | None = None) -> str:
        """The first recorded step at or after ``lo`` whose last position is at most
        ``upto`` (default: exactly ``lo[-1]``) within ``lo``'s parent."""
        top = lo[-1] if upto is None else upto
        i = bisect.bisect_left(self._order, (lo, ""))
        if i < len(self._order):
            path, sid = self._order[i]
            if path[:len(lo) - 1] == lo[:-1] and lo[-1] <= path[len(lo) - 1] <= top:
                return sid
        raise AssertionError(f"no recorded step within {_id(lo)}")  # pragma: no cover

    def _error(self, what: str, step_id: str, recorded: str | None,
               current: str | None, *, provisional: bool = False) -> NonDeterminismError:
        err = NonDeterminismError(f"run {self.run_id}: {what}", run_id=self.run_id,
                                  step_id=step_id, recorded=recorded, current=current)
        if provisional:  # marked as it is made, before anyone sees it
            setattr(err, _PROVISIONAL, True)
        return err
