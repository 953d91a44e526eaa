"""``python -m stalwart``: the same as the ``stalwart`` console script (for when the
environment's ``bin/`` is not on the ``PATH``)."""

from .cli._app import main

main()
