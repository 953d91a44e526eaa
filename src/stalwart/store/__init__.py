"""Journal stores: the protocol and the embedded SQLite implementation."""

from ._base import INHERIT as INHERIT
from ._base import TERMINAL_STATUSES as TERMINAL_STATUSES
from ._base import ApprovalJournal as ApprovalJournal
from ._base import Event as Event
from ._base import EventKind as EventKind
from ._base import Finish as Finish
from ._base import Lease as Lease
from ._base import NewEvent as NewEvent
from ._base import Owner as Owner
from ._base import RunRecord as RunRecord
from ._base import RunStatus as RunStatus
from ._base import Store as Store
from ._base import TransientRetry as TransientRetry
from ._base import WorkerRecord as WorkerRecord
from ._limits import BucketDraw as BucketDraw
from ._limits import Reservation as Reservation
from ._sqlite import SQLiteStore as SQLiteStore

__all__ = [
    "Store",
    "SQLiteStore",
    "RunRecord",
    "RunStatus",
    "TERMINAL_STATUSES",
    "Event",
    "EventKind",
    "ApprovalJournal",
    "NewEvent",
    "Finish",
    "Lease",
    "Owner",
    "WorkerRecord",
    "BucketDraw",
    "Reservation",
    "TransientRetry",
    "INHERIT",
]
