"""The people's view of a socket snapshot: one rich table plus the host's lists."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from netweave.sockets.records import HostReport, Snapshot, Socket, state_name

__all__ = ["render"]

_ORDER = {"LISTEN": 0, "INBOUND": 1, "LOCAL_INBOUND": 2, "OUTBOUND": 3, "LOCAL_OUTBOUND": 4}


def render(snapshot: Snapshot, report: HostReport, console: Console | None = None) -> None:
    """Print the sockets (grouped by namespace, listeners first) and the outbound list."""
    console = console or Console()
    table = Table(title=f"sockets ({len(snapshot.sockets)} in {len(snapshot.namespaces)} netns)")
    for column in (
        "netns",
        "proto",
        "state",
        "local",
        "remote",
        "direction",
        "pid",
        "comm",
        "uid",
        "cgroup",
    ):
        table.add_column(column, no_wrap=column != "cgroup")
    for sock in sorted(snapshot.sockets, key=_sort_key):
        raw, proc = sock.raw, sock.process
        table.add_row(
            str(sock.netns),
            f"{raw.proto}{raw.family}",
            state_name(raw.state),
            _endpoint(raw.local_ip, raw.local_port),
            _endpoint(raw.remote_ip, raw.remote_port),
            sock.direction.value,
            str(proc.pid) if proc else "",
            proc.comm if proc else "",
            str(proc.uid if proc else raw.uid),
            proc.cgroup if proc else "",
        )
    console.print(table)
    outbound = Table(title="outbound destinations")
    for column in ("proto", "destination", "connections", "last process"):
        outbound.add_column(column)
    for item in report.outbound:
        outbound.add_row(
            item.proto,
            _endpoint(item.ip, item.port),
            str(item.connections),
            f"{item.comm} ({item.pid})" if item.pid else "",
        )
    console.print(outbound)


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _sort_key(sock: Socket) -> tuple[int, int, str, int]:
    return (sock.netns, _ORDER.get(sock.direction.value, 5), sock.raw.proto, sock.raw.local_port)
