"""Which ready runs a claim takes first: one rule for every store.

A claim fills its ``limit`` in this order:

1. runs whose owner is known to be dead (the ``steal`` list: on the same host, a lease
   whose pid no longer runs), still held by that owner and token;
2. runs whose lease expired (their owner died on any host, or was cut off);
3. the other ready runs — pending, and parked runs whose time has come — oldest first.

The first two are the oldest work in the store: they were claimed before anything now
pending, and a crash already delayed them once. Taking them first is what makes "a dead
worker's runs are taken over at once" hold under load; filling the limit with the
backlog first left them waiting until the queue drained (issue 13.8).

The SQL stores sort with :data:`READY_ORDER_SQL`; the in-memory store with
:func:`ready_sort_key`. Both express rules 2 and 3; :func:`plan_claim` puts rule 1 in
front. The conformance suite checks that every store agrees.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._base import RunRecord, RunStatus

__all__ = ["READY_ORDER_SQL", "plan_claim", "ready_sort_key"]

READY_ORDER_SQL = "CASE WHEN status = 'running' THEN 0 ELSE 1 END, created_at"
"""The ``ORDER BY`` of ready runs (a store appends its own tie-breaker for runs created
at the same instant): expired leases first, then the oldest."""


def ready_sort_key(run: RunRecord, order: int) -> tuple[int, float, int]:
    """:data:`READY_ORDER_SQL` for a record; ``order`` breaks ties (creation order)."""
    return (0 if run.status == RunStatus.RUNNING else 1, run.created_at, order)


def plan_claim(stolen: Sequence[str], ready: Sequence[str], limit: int) -> list[str]:
    """The run ids to claim: ``stolen`` (dead owners' runs, checked still theirs) first,
    then ``ready`` (in :data:`READY_ORDER_SQL` order), each once, at most ``limit``."""
    out: list[str] = []
    seen: set[str] = set()
    for run_id in (*stolen, *ready):
        if len(out) >= limit:
            break
        if run_id not in seen:
            seen.add(run_id)
            out.append(run_id)
    return out
