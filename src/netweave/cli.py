"""The one command line, ``netweave``, with a subcommand per job."""

from __future__ import annotations

import typer

from netweave.audit.cli import app as audit_app
from netweave.doctor import doctor
from netweave.graph.cli import replay_command

app = typer.Typer(
    name="netweave",
    help="eBPF network agent: what talks to what, what each node is, and is this host safe.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """eBPF network agent: what talks to what, what each node is, and is this host safe."""


app.add_typer(audit_app, name="audit")
app.command("doctor")(doctor)
app.command("replay")(replay_command)


@app.command("version")
def version() -> None:
    """Print netweave's version."""
    from netweave import __version__

    typer.echo(__version__)


def main() -> None:
    """Entry point of the ``netweave`` console script."""
    app()
