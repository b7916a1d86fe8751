"""``netweave audit``: read and verify the audit log."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from netweave.audit.log import AuditLog, default_log

app = typer.Typer(help="Read and verify the tamper-evident audit log.", no_args_is_help=True)


def _log(path: Path | None) -> AuditLog:
    return AuditLog(path) if path else default_log()


@app.command("verify")
def verify(path: Path | None = typer.Option(None, "--log", help="Audit log file.")) -> None:
    """Check every entry; exit 1 naming the first edited, removed, inserted or moved line."""
    log = _log(path)
    result = log.verify()
    if result.ok:
        typer.echo(f"{log.path}: {result.entries} entries, chain intact")
        return
    typer.echo(f"{log.path}: line {result.bad_line}: {result.reason}", err=True)
    raise typer.Exit(1)


@app.command("show")
def show(
    path: Path | None = typer.Option(None, "--log", help="Audit log file."),
    last: int = typer.Option(20, help="How many of the newest entries."),
) -> None:
    """Print the newest entries as JSON lines."""
    for entry in _log(path).entries()[-last:]:
        typer.echo(json.dumps(entry, sort_keys=True))
