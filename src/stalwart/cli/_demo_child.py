"""The process ``stalwart demo`` starts and then kills: it runs the demo workflow.

``python -m stalwart.cli._demo_child STORE RUN_ID LEDGER TOPIC``

Its runtime's ``policy_log`` lives in memory, which a ``SIGKILL`` takes away, so a
background task copies new entries to the ledger as they appear; the parent reads them
from there to show what the policies did in this process.
"""

from __future__ import annotations

import asyncio
import sys

from .._clock import SystemClock
from .._demo import DEMO_POLICY, demo_models, record_policy_notes, research_report
from .._runtime import Runtime

PARK_AFTER = 0.5
"""Sleeps longer than this park the run (the demo's 2 s sleep does)."""
COPY_INTERVAL = 0.05
"""How often the child copies its new policy notes to the ledger."""


def demo_runtime(store: str) -> Runtime:
    """A runtime for the demo workflow: its policy and its simulated models."""
    clock = SystemClock()
    return Runtime(store, clock=clock, park_after=PARK_AFTER, poll_interval=0.1,
                   policy=DEMO_POLICY, models=demo_models(clock))


def copy_new_notes(app: Runtime, ledger: str, copied: int) -> int:
    """Append the notes logged since ``copied`` were; returns the new total copied."""
    total = sum(app.policy_counts.values())  # one count per note appended to the log
    fresh = min(total - copied, len(app.policy_log))
    if fresh > 0:
        record_policy_notes(ledger, list(app.policy_log)[-fresh:])
    return total


async def _copy_notes(app: Runtime, ledger: str) -> None:
    copied = 0
    while True:
        await asyncio.sleep(COPY_INTERVAL)
        copied = copy_new_notes(app, ledger, copied)


async def _main(store: str, run_id: str, ledger: str, topic: str) -> None:
    app = demo_runtime(store)
    copier = asyncio.create_task(_copy_notes(app, ledger))
    try:
        handle = await app.start(research_report, topic, ledger, run_id=run_id)
        await handle.result(timeout=120)
    finally:
        copier.cancel()
        await app.close()


def main(argv: list[str]) -> None:
    store, run_id, ledger, topic = argv
    asyncio.run(_main(store, run_id, ledger, topic))


if __name__ == "__main__":
    main(sys.argv[1:])
