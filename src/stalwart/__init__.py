"""stalwart: durable, observable, rate-limited LLM agents.

Write an ordinary async function; get crash-safe execution from a journal, stable
idempotency keys, durable timers and signals, and the resilience policies of
distributed systems around every model and tool call.
"""

from __future__ import annotations

from ._clock import Clock as Clock
from ._clock import FakeClock as FakeClock
from ._clock import SystemClock as SystemClock
from ._context import Context as Context
from ._context import StepInfo as StepInfo
from ._context import current_step as current_step
from ._runtime import RunHandle as RunHandle
from ._runtime import Runtime as Runtime
from ._workflow import Workflow as Workflow
from .errors import Cancelled as Cancelled
from .errors import ConfigurationError as ConfigurationError
from .errors import ContextMisuseError as ContextMisuseError
from .errors import LeaseLostError as LeaseLostError
from .errors import NonDeterminismError as NonDeterminismError
from .errors import NotAStalwartStoreError as NotAStalwartStoreError
from .errors import RunCancelledError as RunCancelledError
from .errors import RunFailedError as RunFailedError
from .errors import RunNotFoundError as RunNotFoundError
from .errors import SchemaVersionError as SchemaVersionError
from .errors import SerializationError as SerializationError
from .errors import SignalTimeoutError as SignalTimeoutError
from .errors import StalwartError as StalwartError
from .errors import StepError as StepError
from .errors import StoreCorruptedError as StoreCorruptedError
from .errors import StoreError as StoreError
from .errors import WorkflowNotFoundError as WorkflowNotFoundError
from .store import RunRecord as RunRecord
from .store import RunStatus as RunStatus
from .store import SQLiteStore as SQLiteStore
from .store import Store as Store

__version__ = "0.1.0"

__all__ = [
    # runtime and workflows
    "Runtime",
    "RunHandle",
    "Workflow",
    "Context",
    "StepInfo",
    "current_step",
    # time
    "Clock",
    "SystemClock",
    "FakeClock",
    # stores
    "Store",
    "SQLiteStore",
    "RunRecord",
    "RunStatus",
    # errors
    "StalwartError",
    "ConfigurationError",
    "SerializationError",
    "StoreError",
    "NotAStalwartStoreError",
    "SchemaVersionError",
    "StoreCorruptedError",
    "LeaseLostError",
    "RunNotFoundError",
    "WorkflowNotFoundError",
    "NonDeterminismError",
    "StepError",
    "ContextMisuseError",
    "SignalTimeoutError",
    "RunFailedError",
    "RunCancelledError",
    "Cancelled",
]
