"""The one command line, ``netweave``, with a subcommand per job."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="netweave",
    help="eBPF network agent: what talks to what, what each node is, and is this host safe.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """eBPF network agent: what talks to what, what each node is, and is this host safe."""


@app.command("version")
def version() -> None:
    """Print netweave's version."""
    from netweave import __version__

    typer.echo(__version__)


from netweave.sockets.cli import sockets as _sockets  # noqa: E402 (issue 3)

app.command("sockets")(_sockets)


def main() -> None:
    """Entry point of the ``netweave`` console script."""
    app()
