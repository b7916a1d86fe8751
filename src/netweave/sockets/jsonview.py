"""The versioned JSON form of a socket snapshot and host report (schemas/sockets.schema.json)."""

from __future__ import annotations

from typing import Any

from netweave.sockets.records import HostReport, ProcessInfo, Snapshot, Socket, state_name

__all__ = ["SCHEMA_ID", "to_json"]

SCHEMA_ID = "netweave.sockets/1"


def to_json(snapshot: Snapshot, report: HostReport, scope: str) -> dict[str, Any]:
    """A JSON-ready document: namespaces, classified sockets and the host's lists."""
    return {
        "schema": SCHEMA_ID,
        "taken_at": snapshot.taken_at,
        "scope": scope,
        "namespaces": [
            {
                "netns": view.netns,
                "source": view.source,
                "local_ips": sorted(view.local_ips),
                "ephemeral_ports": list(view.ephemeral_ports),
                "sockets": view.socket_count,
            }
            for view in snapshot.namespaces
        ],
        "sockets": [_socket(sock) for sock in snapshot.sockets],
        "host": {
            "outbound": [
                {
                    "proto": o.proto,
                    "ip": o.ip,
                    "port": o.port,
                    "first_seen": o.first_seen,
                    "last_seen": o.last_seen,
                    "pid": o.pid or None,
                    "comm": o.comm or None,
                    "connections": o.connections,
                }
                for o in report.outbound
            ],
            "local_ips": [
                {"ip": ip.ip, "first_seen": ip.first_seen, "last_seen": ip.last_seen}
                for ip in report.local_ips
            ],
            "listeners": [
                {
                    "proto": item.proto,
                    "address": item.address,
                    "port": item.port,
                    "netns": item.netns,
                    "pid": item.pid,
                    "comm": item.comm,
                }
                for item in report.listeners
            ],
        },
    }


def _socket(sock: Socket) -> dict[str, Any]:
    raw = sock.raw
    return {
        "netns": sock.netns,
        "proto": raw.proto,
        "family": raw.family,
        "state": state_name(raw.state),
        "direction": sock.direction.value,
        "local_ip": raw.local_ip,
        "local_port": raw.local_port,
        "remote_ip": raw.remote_ip,
        "remote_port": raw.remote_port,
        "inode": raw.inode,
        "uid": raw.uid,
        "cookie": raw.cookie,
        "v6only": raw.v6only,
        "process": _process(sock.process),
    }


def _process(info: ProcessInfo | None) -> dict[str, Any] | None:
    if info is None:
        return None
    return {
        "pid": info.pid,
        "comm": info.comm,
        "cmdline": info.cmdline,
        "uid": info.uid,
        "netns": info.netns,
        "cgroup": info.cgroup,
    }
