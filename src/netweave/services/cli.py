"""``netweave probe HOST:PORT ...``: identify services with nmap's probes, actively."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from netweave.services.engine_cache import load_matcher
from netweave.services.matcher import Matcher
from netweave.services.prober import Prober, ProberConfig, ProbeResult, Target
from netweave.services.probes_file import (
    DEFAULT_PROBES_PATH,
    ProbeDatabase,
    ProbesFileError,
)
from netweave.services.scope import OutOfScopeError, Scope
from netweave.services.service_record import ServiceRecord, record_from_match

__all__ = ["parse_target", "probe_command", "results_to_records"]


def parse_target(text: str) -> Target:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6, optional ``/tcp``); ValueError if bad."""
    spec, _, proto = text.partition("/")
    proto = proto or "tcp"
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = spec.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (port 1-65535)")
    if proto not in ("tcp", "udp"):
        raise ValueError(f"{text!r}: protocol must be tcp or udp")
    return Target(host, int(port_text), proto)


def results_to_records(results: list[ProbeResult]) -> list[ServiceRecord]:
    """One service record per probed port."""
    records = []
    for result in results:
        target = result.target
        record = record_from_match(
            target.host,
            target.port,
            target.proto,
            result.match,
            method="active",
            tunnel=result.tunnel,
            error=result.error,
        )
        if result.tcpwrapped:
            record = ServiceRecord(
                target.host,
                target.port,
                target.proto,
                "tcpwrapped",
                None,
                None,
                None,
                None,
                None,
                None,
                (),
                "active",
                "NULL",
                None,
                False,
                None,
            )
        elif result.sent_probe is not None:
            record = _with_probe(record, result.sent_probe)
        records.append(record)
    return records


def _with_probe(record: ServiceRecord, probe: str) -> ServiceRecord:
    return ServiceRecord(
        record.host,
        record.port,
        record.proto,
        record.service,
        record.product,
        record.version,
        record.info,
        record.hostname,
        record.ostype,
        record.devicetype,
        record.cpe,
        record.method,
        probe,
        record.tunnel,
        record.soft,
        record.error,
    )


def probe_command(
    targets: Annotated[
        list[str] | None, typer.Argument(help="HOST:PORT to identify (one or more)")
    ] = None,
    *,
    intensity: Annotated[int, typer.Option(min=0, max=9, help="nmap version intensity")] = 7,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON record per line")] = False,
    probes_file: Annotated[
        Path, typer.Option(help="nmap-service-probes to read")
    ] = DEFAULT_PROBES_PATH,
    home_net: Annotated[
        list[str] | None, typer.Option(help="extra network (CIDR) that may be probed")
    ] = None,
    exact: Annotated[
        bool, typer.Option(help="wait out every probe as nmap does (no early cut)")
    ] = False,
    rate: Annotated[float, typer.Option(help="probes per second at most")] = 200.0,
    concurrency: Annotated[int, typer.Option(min=1, help="connections at once")] = 32,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="-v: log every probe; -vv: outcomes")
    ] = 0,
    all_ports: Annotated[
        bool, typer.Option("--allports", help="also probe ports the Exclude line lists")
    ] = False,
    check_probes: Annotated[
        bool,
        typer.Option(help="report what the probes file holds and which patterns cannot run"),
    ] = False,
) -> None:
    """Identify the services on HOST:PORT with nmap's probes (only in-scope addresses)."""
    logging.basicConfig(
        level={0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG),
        format="%(relativeCreated)6dms %(name)s: %(message)s",
    )
    err = Console(stderr=True)
    try:
        parsed = [parse_target(t) for t in targets or ()]
        scope = Scope.default(home_net or ())
        matcher = load_matcher(probes_file)
    except (ValueError, ProbesFileError) as exc:
        err.print(f"netweave probe: {exc}")
        raise typer.Exit(2) from None
    db = matcher.db
    if db.issues:
        err.print(f"netweave probe: {probes_file}: skipped {len(db.issues)} damaged line(s)")
        for issue in db.issues[:10]:
            err.print(f"  {issue}")
    if check_probes:
        _report_probes(db, probes_file)
        if not parsed:
            return
    if not parsed:
        err.print("netweave probe: name at least one HOST:PORT")
        raise typer.Exit(2)
    config = ProberConfig(
        intensity=intensity, exact=exact, rate=rate, concurrency=concurrency, all_ports=all_ports
    )
    prober = Prober(matcher, scope, config)
    try:
        results = asyncio.run(prober.probe_many(parsed))
    except (OutOfScopeError, ValueError) as exc:
        err.print(f"netweave probe: {exc}")
        raise typer.Exit(2) from None
    records = results_to_records(results)
    if as_json:
        for record in records:
            typer.echo(json.dumps(record.to_json(), sort_keys=True))
    else:
        _print_table(records, prober.log.total)
    failures = prober.matcher.failures
    if failures and verbose:
        err.print(f"netweave probe: {len(failures)} match line(s) cannot run in Python re")


def _report_probes(db: ProbeDatabase, path: Path) -> None:
    failures = Matcher(db).compile_all()
    typer.echo(
        f"{path}: {len(db.probes)} probes, {db.match_count} match and "
        f"{db.softmatch_count} softmatch lines, {len(db.issues)} damaged line(s) skipped, "
        f"{len(failures)} pattern(s) Python re cannot run"
    )
    for issue in db.issues:
        typer.echo(f"  skipped {issue}")
    for failure in failures:
        typer.echo(f"  cannot run line {failure.line} ({failure.service}): {failure.reason}")


def _print_table(records: list[ServiceRecord], probes_sent: int) -> None:
    table = Table(title=f"services ({probes_sent} probes sent)")
    for column in ("host", "port", "service", "product", "version", "info", "tunnel", "probe"):
        table.add_column(column)
    for r in records:
        table.add_row(
            r.host,
            f"{r.port}/{r.proto}",
            (r.service or "?") + ("?" if r.soft else ""),
            r.product or "",
            r.version or "",
            r.info or r.error or "",
            r.tunnel or "",
            r.probe or "",
        )
    Console().print(table)
