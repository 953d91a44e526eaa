"""The ``stalwart`` command line: run workflows, inspect and resume runs, the demo."""

from ._app import app as app
from ._app import main as main

__all__ = ["app", "main"]
