"""``python -m netweave``: the same as the ``netweave`` command."""

from netweave.cli import main

main()
