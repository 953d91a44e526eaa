"""stalwart: durable, observable, rate-limited LLM agents."""

from __future__ import annotations

from ._clock import Clock as Clock
from ._clock import FakeClock as FakeClock
from ._clock import SystemClock as SystemClock
