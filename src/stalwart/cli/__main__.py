"""``python -m stalwart.cli``: the same as the ``stalwart`` console script."""

from ._app import main

main()
