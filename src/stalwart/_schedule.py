"""Scheduled workflows: a run of a workflow at each tick of a cron expression.

Each tick is one run whose id is ``schedule:{workflow}:{tick ISO}``, started with
``if_exists="return"``: every worker of a fleet may start it and it runs once. The loop
runs in each worker runtime, on the runtime's clock.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from ._clock import sleep_until
from .engine._engine import Engine
from .engine._workflow import Workflow
from .errors import ConfigurationError

log = logging.getLogger("stalwart.schedule")

LATE_GRACE = timedelta(minutes=1)
"""While a worker runs, a tick it sees late (a stalled loop) is still started within
``max(catchup, LATE_GRACE)``."""


@final
@dataclass(frozen=True)
class Schedule:
    """A workflow started at each tick of ``cron`` (see :meth:`Runtime.scheduled`)."""

    workflow: Workflow[Any, Any]
    cron: str
    catchup: timedelta
    tz: str

    def run_id(self, tick: datetime) -> str:
        """The run id of ``tick``'s run: the same on every worker."""
        return f"schedule:{self.workflow.name}:{tick.astimezone(UTC).isoformat()}"


def make_schedule(workflow: Workflow[Any, Any], cron: str, catchup: timedelta,
                  tz: str) -> Schedule:
    """Check the declaration (ConfigurationError, one line) and make the schedule."""
    if not isinstance(cron, str) or not croniter.is_valid(cron):
        raise ConfigurationError(f"schedule of {workflow.name}: invalid cron expression "
                                 f"{cron!r}")
    if not isinstance(catchup, timedelta) or catchup < timedelta(0):
        raise ConfigurationError(f"schedule of {workflow.name}: catchup must be a "
                                 f"timedelta >= 0, not {catchup!r}")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(f"schedule of {workflow.name}: unknown time zone "
                                 f"{tz!r}") from exc
    params = list(inspect.signature(workflow.fn).parameters.values())[1:]
    required = [p for p in params if p.default is inspect.Parameter.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if not params or params[0].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                            inspect.Parameter.POSITIONAL_OR_KEYWORD) \
            or len(required) > 1 or (required and required[0] is not params[0]):
        raise ConfigurationError(f"scheduled workflow {workflow.name} must take "
                                 f"(ctx, scheduled_at: datetime), not "
                                 f"({workflow.describe_parameters()})")
    return Schedule(workflow, cron, catchup, tz)


def due_ticks(schedule: Schedule, after: datetime, now: datetime, window: timedelta
              ) -> tuple[list[datetime], list[datetime]]:
    """Ticks in ``(after, now]``, oldest first: those within ``window`` of ``now`` to
    start, and the older ones skipped. The one rule for catch-up and late ticks."""
    it = croniter(schedule.cron, after.astimezone(ZoneInfo(schedule.tz)))
    start: list[datetime] = []
    skipped: list[datetime] = []
    while True:
        tick: datetime = it.get_next(datetime).astimezone(UTC)
        if tick > now:
            return start, skipped
        (start if tick >= now - window else skipped).append(tick)


def next_tick(schedule: Schedule, after: datetime) -> datetime:
    """The first tick after ``after`` (UTC)."""
    it = croniter(schedule.cron, after.astimezone(ZoneInfo(schedule.tz)))
    tick: datetime = it.get_next(datetime)
    return tick.astimezone(UTC)


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


Start = Callable[[Schedule, datetime], Awaitable[object]]
"""Starts a tick's run (the runtime's ``start`` with the tick's run id)."""


async def run_schedule(runtime: Engine, schedule: Schedule, start_run: Start) -> None:
    """Start each tick's run of ``schedule`` while ``runtime`` runs (a worker's task)."""
    clock = runtime.clock
    now = _utc(clock.now())
    # Just before the window, so a tick exactly ``catchup`` ago (or now) is due.
    after = now - schedule.catchup - timedelta(microseconds=1)
    window = schedule.catchup
    log.info("schedule %s: ticks before %s are not started (catchup %s)",
             schedule.workflow.name, (now - window).isoformat(), window)
    while not runtime.closing:
        start, skipped = due_ticks(schedule, after, now, window)
        if skipped:
            log.warning("schedule %s: %d tick(s) from %s to %s are older than catchup "
                        "(%s) and are skipped", schedule.workflow.name, len(skipped),
                        skipped[0].isoformat(), skipped[-1].isoformat(), window)
        for tick in start:
            await _start_tick(runtime, schedule, tick, start_run)
            after = tick
        if skipped and not start:
            after = skipped[-1]
        window = max(schedule.catchup, LATE_GRACE)
        tick = next_tick(schedule, after)
        await sleep_until(clock, clock.monotonic() + (tick - _utc(clock.now())).total_seconds())
        now = _utc(clock.now())


async def _start_tick(runtime: Engine, schedule: Schedule, tick: datetime,
                      start_run: Start) -> None:
    """Start ``tick``'s run (once across the fleet), retrying while the store fails."""
    while not runtime.closing:
        try:
            await start_run(schedule, tick)
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("schedule %s: cannot start the tick %s; retrying",
                          schedule.workflow.name, tick.isoformat())
            await sleep_until(runtime.clock, runtime.clock.monotonic() + runtime.poll_interval)
