"""``stalwart dashboard``: a local web app over the journal (the ``dashboard`` extra)."""

from ._command import dashboard

__all__ = ["dashboard"]
