"""Supervision trees: Erlang/OTP's supervisor over child runs.

A supervisor starts its children (child runs) in order, watches them, and restarts
them when they end, as each child's *restart type* and the supervisor's *strategy* say:

* restart types: ``permanent`` children are always restarted, also after a normal end;
  ``transient`` ones only after an abnormal end (failed or dead-lettered; a child
  cancelled from outside ended as OTP's ``shutdown`` does, normally); ``temporary`` ones
  never, not even when a sibling's restart stopped them;
* strategies: ``one_for_one`` restarts the child that ended; ``one_for_all`` stops every
  other running child (in reverse start order), then starts the ended child and every
  sibling that is not ``temporary`` again, in start order (siblings that had ended
  normally too, as OTP does); ``rest_for_one`` does that for the children started after
  the ended one only;
* intensity: a restart that would make more than ``max_restarts`` restarts within
  ``within`` seconds (counted on the journaled clock, ``ctx.now()``) is not made: the
  supervisor stops every running child (in reverse start order) and fails with
  :class:`~stalwart.errors.RestartIntensityError`, *escalating* to its own parent, which
  decides (a parent supervisor restarts it as its own spec says). One restart of several
  children (``one_for_all``) counts once.

``supervise`` returns when no child runs and none is due to be restarted (so never while
a ``permanent`` child lives): the last outcome of each child, by id, in the order the
children were given.

Everything a supervisor decides rests on journaled steps (``ctx.start_child``,
``ctx.wait_any``, ``ctx.cancel_child``, ``ctx.now``: the engine's step functions behind
those methods, which a supervisor calls with the run's execution), and each restart is
journaled as a ``supervisor:restart`` step whose result says which child ended, how, what was
restarted and the restart count in the window. A supervisor whose process is killed
replays all of it: its restart counts survive, no child is started twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, final, get_args

from ..errors import ConfigurationError, RestartIntensityError
from ..store._base import RunStatus
from ._children import ChildOutcome, ChildRun, cancel_child, start_child, wait_any
from ._execution import Execution
from ._steps import now, run_step
from ._workflow import Workflow

__all__ = ["ChildSpec", "Restart", "Strategy", "supervise"]

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
Restart = Literal["permanent", "transient", "temporary"]
_STRATEGIES: tuple[str, ...] = get_args(Strategy)
_RESTARTS: tuple[str, ...] = get_args(Restart)


@final
@dataclass(frozen=True, slots=True)
class ChildSpec:
    """One child of a supervisor (OTP's child specification).

    Args:
        workflow: the workflow each start of the child runs.
        args, kwargs: its arguments.
        id: the child's name within its supervisor (default: the workflow's name); ids
            must be unique.
        restart: ``"permanent"`` (default), ``"transient"`` or ``"temporary"``.
    """

    workflow: Workflow[Any, Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    restart: Restart = "permanent"

    @property
    def name(self) -> str:
        return self.id if self.id is not None else self.workflow.name


def _specs(children: Sequence[Any]) -> list[ChildSpec]:
    if isinstance(children, ChildSpec | Workflow) or not isinstance(children, Sequence):
        raise ConfigurationError("supervise() takes a list of ChildSpec (or workflows)")
    specs = []
    for child in children:
        spec = ChildSpec(child) if isinstance(child, Workflow) else child
        if not isinstance(spec, ChildSpec) or not isinstance(spec.workflow, Workflow):
            raise ConfigurationError(f"supervise(): {child!r} is neither a ChildSpec nor "
                                     "a workflow")
        if spec.restart not in _RESTARTS:
            raise ConfigurationError(f"supervise(): child {spec.name!r} has restart type "
                                     f"{spec.restart!r}; use one of {', '.join(_RESTARTS)}")
        specs.append(spec)
    if not specs:
        raise ConfigurationError("supervise() needs at least one child")
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ConfigurationError(f"supervise(): two children have the id {spec.name!r};"
                                     " give each its own ChildSpec(id=...)")
        seen.add(spec.name)
    return specs


def _check(strategy: str, max_restarts: int, within: float) -> None:
    if strategy not in _STRATEGIES:
        raise ConfigurationError(f"supervise(): unknown strategy {strategy!r}; use one of "
                                 f"{', '.join(_STRATEGIES)}")
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise ConfigurationError(f"supervise(): max_restarts must be an int >= 0, not "
                                 f"{max_restarts!r}")
    if (isinstance(within, bool) or not isinstance(within, int | float)
            or not 0 < within < math.inf):
        raise ConfigurationError(f"supervise(): within must be a positive, finite number "
                                 f"of seconds, not {within!r}")


def restarts(restart: Restart, outcome: ChildOutcome) -> bool:
    """Whether a child of this restart type is restarted after ``outcome``."""
    if restart == "permanent":
        return True
    if restart == "transient":
        return outcome.status in (RunStatus.FAILED, RunStatus.DEAD_LETTERED)
    return False


def group(strategy: Strategy, ended: str, order: Sequence[str]) -> list[str]:
    """The children a restart of ``ended`` concerns, in start order."""
    if strategy == "one_for_one":
        return [ended]
    if strategy == "one_for_all":
        return list(order)
    return list(order[order.index(ended):])


@dataclass
class _Tree:
    """The supervisor's state, rebuilt by replay from journaled steps."""

    ex: Execution
    specs: dict[str, ChildSpec]
    order: list[str]
    running: dict[str, ChildRun] = field(default_factory=dict)
    last: dict[str, ChildOutcome] = field(default_factory=dict)
    restart_times: list[float] = field(default_factory=list)

    async def start(self, cid: str) -> None:
        spec = self.specs[cid]
        self.running[cid] = await start_child(self.ex, spec.workflow, spec.args,
                                              dict(spec.kwargs))

    async def stop(self, ids: Sequence[str]) -> None:
        """Stop the running children among ``ids``, in reverse start order."""
        for cid in reversed([i for i in self.order if i in ids and i in self.running]):
            self.last[cid] = await cancel_child(self.ex, self.running.pop(cid))

    async def next_end(self) -> tuple[str, ChildOutcome]:
        ids = [i for i in self.order if i in self.running]
        out = await wait_any(self.ex, [self.running[i] for i in ids])
        cid = ids[out.index]
        del self.running[cid]
        self.last[cid] = out
        return cid, out


async def _record(info: dict[str, Any]) -> dict[str, Any]:
    return info


async def supervise(ex: Execution, children: Sequence[Any], *, strategy: Strategy,
                    max_restarts: int, within: float) -> dict[str, ChildOutcome]:
    """:meth:`Context.supervise <stalwart.Context.supervise>`; see the module docstring."""
    _check(strategy, max_restarts, within)
    specs = _specs(children)
    tree = _Tree(ex, {s.name: s for s in specs}, [s.name for s in specs])
    for cid in tree.order:
        await tree.start(cid)
    while tree.running:
        cid, out = await tree.next_end()
        if not restarts(tree.specs[cid].restart, out):
            continue
        at = await now(ex)
        recent = [t for t in tree.restart_times if t >= at - within]
        info: dict[str, Any] = {
            "child": cid, "run_id": out.run_id, "reason": out.reason, "at": at,
            "strategy": strategy, "restarts_in_window": len(recent) + 1,
            "max_restarts": max_restarts, "within": within}
        if len(recent) + 1 > max_restarts:
            await run_step(ex, _record, ({**info, "escalated": True},), {},
                           name="supervisor:escalate")
            await tree.stop(tree.order)
            raise RestartIntensityError(
                f"supervisor {ex.workflow.name} ({ex.run_id}): child {cid!r} ended "
                f"({out.reason}) and a restart would be restart {len(recent) + 1} within "
                f"{within:g}s (max_restarts={max_restarts}); its children were stopped",
                child=cid, reason=out.reason, restarts=len(recent) + 1,
                max_restarts=max_restarts, within=float(within), run_id=ex.run_id)
        tree.restart_times = [*recent, at]
        members = group(strategy, cid, tree.order)
        await tree.stop([m for m in members if m != cid])
        again = [m for m in members if m == cid or tree.specs[m].restart != "temporary"]
        await run_step(ex, _record, ({**info, "restarted": again},), {},
                       name="supervisor:restart")
        for m in again:
            await tree.start(m)
    # In the order the children were given, not the order they ended in (which the
    # machine's load decides).
    return {cid: tree.last[cid] for cid in tree.order if cid in tree.last}
