"""The one command line, ``netweave``, with a subcommand per job."""

from __future__ import annotations

import typer

from netweave.audit.cli import app as audit_app
from netweave.doctor import doctor
from netweave.sockets.cli import sockets
from netweave.sentinel.cli import app as sentinel_app

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
app.add_typer(sentinel_app, name="sentinel")
app.command("doctor")(doctor)
app.command("sockets")(sockets)


@app.command("version")
def version() -> None:
    """Print netweave's version."""
    from netweave import __version__

    typer.echo(__version__)


# services (issue 6): netweave probe HOST:PORT ...
from netweave.services.cli import probe_command  # noqa: E402

app.command("probe")(probe_command)

from netweave.fingerprint.cli import fingerprint_command  # noqa: E402

app.command("fingerprint")(fingerprint_command)


def main() -> None:
    """Entry point of the ``netweave`` console script."""
    app()
