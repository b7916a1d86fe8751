"""``netweave sockets``: the classified socket table, as a table for people or JSON."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from typing import Annotated

import typer

__all__ = ["sockets"]


class Scope(StrEnum):
    """Which network namespaces to read."""

    ALL = "all"
    SELF = "self"


class Source(StrEnum):
    """Where socket tables come from."""

    AUTO = "auto"
    DIAG = "diag"
    PROCFS = "procfs"


def sockets(
    json_output: Annotated[
        bool, typer.Option("--json", help="Print JSON (schemas/sockets.schema.json).")
    ] = False,
    netns: Annotated[
        Scope, typer.Option("--netns", help="Every namespace with a process, or only this one.")
    ] = Scope.ALL,
    source: Annotated[
        Source, typer.Option("--source", help="sock_diag, procfs, or diag with procfs fallback.")
    ] = Source.AUTO,
) -> None:
    """Every TCP and UDP socket with its direction, process, namespace and cgroup."""
    from netweave.sockets.diag import DiagUnavailableError  # lazy: keeps CLI start fast
    from netweave.sockets.hostmap import HostMap
    from netweave.sockets.jsonview import to_json
    from netweave.sockets.snapshot import take_snapshot

    try:
        snapshot = take_snapshot(netns.value, source.value)
    except (DiagUnavailableError, PermissionError) as exc:
        typer.echo(f"netweave sockets: {exc}", err=True)
        raise typer.Exit(1) from exc
    host = HostMap()
    host.fold_snapshot(snapshot)
    report = host.report(snapshot.taken_at)
    if json_output:
        json.dump(to_json(snapshot, report, netns.value), sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    from netweave.sockets.table import render

    render(snapshot, report)
