"""The one command line, ``netweave``, with a subcommand per job."""

from __future__ import annotations

import typer

from netweave.audit.cli import app as audit_app
from netweave.doctor import doctor

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

# shield: the XDP blocklist firewall; bench: benchmarks (`netweave bench shield`).
from netweave.shield.bench import shield as _bench_shield  # noqa: E402
from netweave.shield.cli import app as _shield_app  # noqa: E402

app.add_typer(_shield_app, name="shield")
bench_app = typer.Typer(help="Benchmarks, each against a reference in the same run.")
app.add_typer(bench_app, name="bench")
bench_app.command("shield")(_bench_shield)


@app.command("version")
def version() -> None:
    """Print netweave's version."""
    from netweave import __version__

    typer.echo(__version__)


def main() -> None:
    """Entry point of the ``netweave`` console script."""
    app()
