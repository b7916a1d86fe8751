"""``netweave fingerprint FILE``: fingerprint records of a capture, as JSON lines or a table."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from netweave.fingerprint.p0f_db import DEFAULT_P0F_DB

if TYPE_CHECKING:
    from netweave.fingerprint.records import FingerprintRecord


class OutputFormat(StrEnum):
    """Output formats of ``netweave fingerprint``."""

    JSONL = "jsonl"
    TABLE = "table"


class AckRuleChoice(StrEnum):
    """Choices of ``--p0f-ack-rule``."""

    P0F = "p0f"
    CORRECTED = "corrected"


def fingerprint_command(
    file: Annotated[Path, typer.Argument(help="pcap or pcapng capture file.")],
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="jsonl (one JSON object a line) or table.")
    ] = OutputFormat.JSONL,
    p0f_db: Annotated[
        Path | None,
        typer.Option(
            "--p0f-db",
            help=f"p0f v3 signature file (default {DEFAULT_P0F_DB}, from Debian's p0f).",
        ),
    ] = None,
    no_foxio: Annotated[
        bool,
        typer.Option(
            "--no-foxio",
            help="Do not compute JA4T/JA4TS/JA4S (FoxIO License 1.1, non-commercial).",
        ),
    ] = False,
    p0f_ack_rule: Annotated[
        AckRuleChoice,
        typer.Option(
            "--p0f-ack-rule",
            help="'p0f' reproduces p0f 3.09b's x86 ack+ test (bit 24 only); "
            "'corrected' flags any non-zero ACK number on a segment without ACK.",
        ),
    ] = AckRuleChoice.P0F,
) -> None:
    """One record per SYN, SYN-ACK, ClientHello and ServerHello: JA4T/JA4TS/JA4/JA4S and p0f."""
    from netweave.capture.pcapfile import CaptureFileError, read_capture
    from netweave.fingerprint.columnar import fingerprint_capture
    from netweave.fingerprint.p0f import AckRule
    from netweave.fingerprint.p0f_db import P0fDatabaseError, load_p0f_database
    from netweave.fingerprint.replay import FingerprintOptions

    db = None
    try:
        if p0f_db is not None:
            db = load_p0f_database(p0f_db)
        elif DEFAULT_P0F_DB.exists():
            db = load_p0f_database(DEFAULT_P0F_DB)
        else:
            typer.echo(
                f"netweave fingerprint: {DEFAULT_P0F_DB} not found (install Debian's p0f or "
                "pass --p0f-db PATH); p0f results are left out",
                err=True,
            )
    except P0fDatabaseError as exc:
        typer.echo(f"netweave fingerprint: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        capture = read_capture(file)
    except CaptureFileError as exc:
        typer.echo(f"netweave fingerprint: {exc}", err=True)
        raise typer.Exit(2) from exc
    options = FingerprintOptions(
        p0f_db=db,
        foxio=not no_foxio,
        ack_rule=AckRule.CORRECTED if p0f_ack_rule is AckRuleChoice.CORRECTED else AckRule.P0F_X86,
    )
    # Hellos are found in reassembled stream starts: sort everything by frame for output.
    records = sorted(fingerprint_capture(capture, options), key=lambda r: r.frame)
    out = sys.stdout
    if output_format is OutputFormat.JSONL:
        for record in records:
            out.write(json.dumps(record.as_json(), separators=(",", ":")) + "\n")
    else:
        _table(records, out)
    if capture.problem_count:
        first = capture.problems[0]
        typer.echo(
            f"netweave fingerprint: {file}: {capture.problem_count} malformed packet(s) "
            f"skipped or flagged; first: frame {first.frame} at byte offset {first.offset}: "
            f"{first.reason}",
            err=True,
        )
    if capture.damage is not None:
        typer.echo(
            f"netweave fingerprint: {capture.damage} (records before it were printed)", err=True
        )
        raise typer.Exit(2)


def _table(records: Iterable[FingerprintRecord], out: TextIO) -> None:
    header = ("frame", "kind", "source", "destination", "fingerprint", "p0f")
    rows: list[tuple[str, ...]] = [header]
    for record in records:
        value = record.ja4t or record.ja4ts or record.ja4 or record.ja4s or ""
        p0f = ""
        if record.p0f is not None:
            p0f = f"{record.p0f.label} (dist {record.p0f.dist}) {record.p0f.raw_sig}"
        rows.append(
            (
                str(record.frame),
                record.kind,
                _endpoint(record.src, record.src_port),
                _endpoint(record.dst, record.dst_port),
                value,
                p0f,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        out.write("  ".join([*cells, row[-1]]).rstrip() + "\n")


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
