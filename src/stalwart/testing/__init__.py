"""Test helpers that stalwart's own tests use and users may import.

Nothing here is needed in production; everything here is supported API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stalwart.models import FunctionModel as FunctionModel
from stalwart.models import SimulatedModel as SimulatedModel

from ..store._memory import MemoryStore as MemoryStore
from ._fault_server import Fault as Fault
from ._fault_server import FaultServer as FaultServer
from ._fault_server import RecordedRequest as RecordedRequest
from ._fault_server import Reply as Reply
from ._obedient import Attempt as Attempt
from ._obedient import Instruction as Instruction
from ._obedient import ObedientModel as ObedientModel
from ._obedient import instruction as instruction
from ._postgres import postgres_schema as postgres_schema
from ._postgres import with_search_path as with_search_path

if TYPE_CHECKING:
    from ._otlp_receiver import OTLPReceiver as OTLPReceiver

__all__ = [
    "Attempt",
    "Fault",
    "FaultServer",
    "FunctionModel",
    "Instruction",
    "MemoryStore",
    "OTLPReceiver",
    "ObedientModel",
    "RecordedRequest",
    "Reply",
    "SimulatedModel",
    "instruction",
    "postgres_schema",
    "with_search_path",
]


def __getattr__(name: str) -> Any:
    if name == "OTLPReceiver":  # needs the otel extra (opentelemetry-proto)
        from ._otlp_receiver import OTLPReceiver

        return OTLPReceiver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
