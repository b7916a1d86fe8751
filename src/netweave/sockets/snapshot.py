"""One classified socket table: every namespace with a process, joined to its owners.

For each network namespace that has a process (from ``/proc/PID/ns/net``; named namespaces
under ``/run/netns`` too), a worker thread enters it with ``setns``
(:mod:`netweave.netns`) and dumps TCP and UDP, IPv4 and IPv6, through sock_diag, falling
back to that namespace's ``/proc/net`` tables for any protocol/family the kernel's diag
modules cannot answer. The namespace's own addresses come from rtnetlink and its ephemeral
range from its sysctl. Sockets are then classified per namespace and joined to processes
through ``/proc/*/fd``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from netweave import netns
from netweave.collector import gc_paused
from netweave.sockets import diag, localips, processes, procnet
from netweave.sockets.classify import Classifier
from netweave.sockets.records import NamespaceView, ProcessInfo, RawSocket, Snapshot, Socket

__all__ = ["SOURCES", "take_snapshot"]

SOURCES = ("auto", "diag", "procfs")
_TABLES = {("tcp", 4): "tcp", ("tcp", 6): "tcp6", ("udp", 4): "udp", ("udp", 6): "udp6"}
_ENTER_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class _NamespaceDump:
    netns: int
    source: str
    sockets: list[RawSocket]
    local_ips: frozenset[str]
    ephemeral_ports: tuple[int, int]


def take_snapshot(scope: str = "all", source: str = "auto") -> Snapshot:
    """Classify every TCP/UDP socket of the host (``scope="all"``) or of the caller's
    namespace (``scope="self"``).

    ``source`` is ``auto`` (sock_diag, procfs where diag is missing), ``diag`` (sock_diag
    only; raises :class:`netweave.sockets.diag.DiagUnavailableError`) or ``procfs``.
    """
    if scope not in ("all", "self"):
        raise ValueError(f"netns scope must be 'all' or 'self', not {scope!r}")
    if source not in SOURCES:
        raise ValueError(f"socket source must be one of {', '.join(SOURCES)}, not {source!r}")
    taken_at, monotonic_ns = time.time(), time.monotonic_ns()
    with gc_paused():
        table = processes.scan()
        home = _thread_netns()
        own = _collect(home, source)
        dumps = [own] if own is not None else []
        unreadable: list[int] = []
        if scope == "all":
            for ns, candidates in _other_namespaces(table, home).items():
                dump = _collect_in(ns, candidates, source)
                if dump is not None:
                    dumps.append(dump)
                else:
                    unreadable.append(ns)
        snapshot = _assemble(taken_at, monotonic_ns, dumps, table)
        return dataclasses.replace(snapshot, unreadable=tuple(unreadable))


def _assemble(
    taken_at: float, monotonic_ns: int, dumps: list[_NamespaceDump], table: processes.ProcessTable
) -> Snapshot:
    owner = table.socket_owner
    cache: dict[int, ProcessInfo | None] = {}
    found: list[Socket] = []
    views: list[NamespaceView] = []
    for dump in dumps:
        classifier = Classifier(dump.sockets, dump.local_ips, dump.ephemeral_ports)
        direction = classifier.direction
        ns = dump.netns
        for raw in dump.sockets:
            pid = owner.get(raw.inode) if raw.inode else None
            process = None
            if pid is not None:
                if pid in cache:
                    process = cache[pid]
                else:
                    process = cache[pid] = processes.process_info(pid, table.netns_of.get(pid, ns))
            found.append(Socket(ns, raw, direction(raw), process))
        views.append(
            NamespaceView(
                ns, dump.source, classifier.local_ips, dump.ephemeral_ports, len(dump.sockets)
            )
        )
    return Snapshot(taken_at, monotonic_ns, tuple(views), tuple(found))


def _thread_netns() -> int:
    return Path("/proc/thread-self/ns/net").stat().st_ino


def _other_namespaces(table: processes.ProcessTable, home: int) -> dict[int, list[str]]:
    """Namespace inode -> paths that can enter it (a few PIDs' ns files, named mounts)."""
    paths: dict[int, list[str]] = {}
    for ns, pids in table.namespaces().items():
        if ns != home:
            paths[ns] = [f"/proc/{pid}/ns/net" for pid in pids[:_ENTER_ATTEMPTS]]
    run_netns = Path("/run/netns")
    if run_netns.is_dir():
        for entry in sorted(run_netns.iterdir()):
            try:
                ns = entry.stat().st_ino
            except OSError:
                continue
            if ns != home:
                paths.setdefault(ns, []).insert(0, str(entry))
    return paths


def _collect_in(ns: int, candidates: list[str], source: str) -> _NamespaceDump | None:
    """Dump namespace ``ns`` through the first entry path that still leads to it."""
    for path in candidates:
        try:
            with netns.enter(path) as worker:
                dump = worker.call(_collect, ns, source)
        except netns.NetnsError:
            continue  # the process exited or the mount went away: try the next one
        if dump is not None:
            return dump
    return None


def _collect(expected: int, source: str) -> _NamespaceDump | None:
    """Everything one namespace holds; runs on a thread inside it."""
    if _thread_netns() != expected:
        return None  # a PID was reused by a process in another namespace
    sockets: list[RawSocket] = []
    used: set[str] = set()
    for (proto, family), table in _TABLES.items():
        if source != "procfs":
            try:
                sockets.extend(diag.dump(proto, family))
                used.add("sock_diag")
                continue
            except diag.DiagUnavailableError:
                if source == "diag":
                    raise
        sockets.extend(_procfs_table(proto, family, table))
        used.add("procfs")
    return _NamespaceDump(
        expected,
        "+".join(sorted(used)),
        sockets,
        _guarded(localips.rtnetlink_addresses, frozenset()),
        localips.ephemeral_ports(),
    )


def _procfs_table(proto: str, family: int, table: str) -> list[RawSocket]:
    path = Path("/proc/thread-self/net") / table
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return procnet.parse_table(text, proto, family, str(path))


def _guarded(fn: Callable[[], frozenset[str]], default: frozenset[str]) -> frozenset[str]:
    try:
        return fn()
    except OSError:
        return default
