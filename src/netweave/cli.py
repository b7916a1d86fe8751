"""The one command line, ``netweave``, with a subcommand per job."""

from __future__ import annotations

import typer

from netweave.agent import agent_command
from netweave.audit.cli import app as audit_app
from netweave.doctor import doctor
from netweave.fingerprint.cli import fingerprint_command
from netweave.graph.cli import replay_command
from netweave.sentinel.cli import app as sentinel_app
from netweave.services.cli import probe_command
from netweave.shield.bench import shield as bench_shield
from netweave.shield.cli import app as shield_app
from netweave.sockets.cli import sockets

app = typer.Typer(
    name="netweave",
    help="eBPF network agent: what talks to what, what each node is, and is this host safe.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """eBPF network agent: what talks to what, what each node is, and is this host safe."""


app.command("agent")(agent_command)
app.command("sockets")(sockets)
app.command("replay")(replay_command)
app.command("fingerprint")(fingerprint_command)
app.command("probe")(probe_command)
app.add_typer(sentinel_app, name="sentinel")
app.add_typer(audit_app, name="audit")
app.command("doctor")(doctor)

# shield: the XDP blocklist firewall; bench: benchmarks (`netweave bench shield`).
app.add_typer(shield_app, name="shield")
bench_app = typer.Typer(help="Benchmarks, each against a reference in the same run.")
app.add_typer(bench_app, name="bench")
bench_app.command("shield")(bench_shield)


@app.command("version")
def version() -> None:
    """Print netweave's version."""
    from netweave import __version__

    typer.echo(__version__)


def main() -> None:
    """Entry point of the ``netweave`` console script."""
    app()
