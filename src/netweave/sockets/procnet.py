"""Read TCP and UDP sockets from ``/proc/net/{tcp,tcp6,udp,udp6}`` (the sock_diag fallback).

``/proc/PID/net`` shows the namespace of PID, so no namespace switch is needed: pass the
``net`` directory of any process inside the namespace (``/proc/thread-self/net`` for the
caller's own thread). procfs has no socket cookie and no IPV6_V6ONLY flag: those come back
as 0 and False.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from netweave.sockets.records import RawSocket

__all__ = ["ProcNetFormatError", "parse_table", "read_all"]

_FILES = (("tcp", 4, "tcp"), ("tcp", 6, "tcp6"), ("udp", 4, "udp"), ("udp", 6, "udp6"))


class ProcNetFormatError(ValueError):
    """A /proc/net table line is malformed; the message names the file and line."""


def read_all(net_dir: str | Path = "/proc/thread-self/net") -> list[RawSocket]:
    """Every TCP and UDP socket listed under ``net_dir``.

    A table that is missing (IPv6 disabled) contributes nothing; a process that exits while
    its ``net`` directory is read gives an empty or partial result, never an error.
    """
    found: list[RawSocket] = []
    for proto, family, name in _FILES:
        path = Path(net_dir) / name
        try:
            text = path.read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        found.extend(parse_table(text, proto, family, str(path)))
    return found


def parse_table(text: str, proto: str, family: int, source: str = "<text>") -> list[RawSocket]:
    """Decode the text of one ``/proc/net`` TCP/UDP table (header line first).

    Raises :class:`ProcNetFormatError` naming ``source`` and the line number.
    """
    found: list[RawSocket] = []
    lines = text.splitlines()
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields:
            continue
        try:
            local_ip, local_port = _endpoint(fields[1], family)
            remote_ip, remote_port = _endpoint(fields[2], family)
            found.append(
                RawSocket(
                    proto, family, int(fields[3], 16), local_ip, local_port, remote_ip,
                    remote_port, int(fields[9]), int(fields[7]), 0, False,
                )
            )  # fmt: skip
        except (IndexError, ValueError) as exc:
            raise ProcNetFormatError(
                f"{source} line {number}: cannot parse {line!r}: {exc}"
            ) from exc
    return found


def _endpoint(text: str, family: int) -> tuple[str, int]:
    """``0100007F:0016`` -> ("127.0.0.1", 22): each 32-bit word is printed in host order."""
    address, _, port_hex = text.partition(":")
    port = int(port_hex, 16)
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port_hex!r} out of range")
    raw = bytes.fromhex(address)
    if family == 4:
        if len(raw) != 4:
            raise ValueError(f"IPv4 address {address!r} is not 8 hex digits")
        return socket.inet_ntop(socket.AF_INET, _host_order(raw)), port
    if len(raw) != 16:
        raise ValueError(f"IPv6 address {address!r} is not 32 hex digits")
    words = b"".join(_host_order(raw[i : i + 4]) for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words), port


def _host_order(word: bytes) -> bytes:
    return word[::-1] if sys.byteorder == "little" else word
