"""The process ``stalwart demo`` starts and then kills: it runs the demo workflow.

``python -m stalwart.cli._demo_child STORE RUN_ID LEDGER TOPIC``
"""

from __future__ import annotations

import asyncio
import sys

from .._demo import research_report
from .._runtime import Runtime

PARK_AFTER = 0.5
"""Sleeps longer than this park the run (the demo's 2 s sleep does)."""


async def _main(store: str, run_id: str, ledger: str, topic: str) -> None:
    app = Runtime(store, park_after=PARK_AFTER, poll_interval=0.1)
    try:
        handle = await app.start(research_report, topic, ledger, run_id=run_id)
        await handle.result(timeout=120)
    finally:
        await app.close()


def main(argv: list[str]) -> None:
    store, run_id, ledger, topic = argv
    asyncio.run(_main(store, run_id, ledger, topic))


if __name__ == "__main__":
    main(sys.argv[1:])
