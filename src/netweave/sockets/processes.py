"""Which process holds which socket, and which network namespace each process is in.

Readers in the style of psutil's ``_pslinux``: a process that exits while it is read is
normal and simply drops out; nothing here raises for a vanished PID.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from netweave.sockets.records import ProcessInfo

__all__ = ["ProcessTable", "process_info", "scan"]

PROC = "/proc"
_GONE = (FileNotFoundError, ProcessLookupError, NotADirectoryError, PermissionError)


@dataclass(frozen=True, slots=True)
class ProcessTable:
    """One pass over ``/proc``: socket inode -> PID, and PID -> network namespace inode."""

    socket_owner: dict[int, int]
    netns_of: dict[int, int]

    def namespaces(self) -> dict[int, list[int]]:
        """Network namespace inode -> PIDs in it, lowest PID first."""
        by_ns: dict[int, list[int]] = {}
        for pid, ns in sorted(self.netns_of.items()):
            by_ns.setdefault(ns, []).append(pid)
        return by_ns


def scan(*, sockets: bool = True) -> ProcessTable:
    """Walk ``/proc`` once: every PID's namespace and (when asked) every socket fd it holds.

    When several processes share a socket, the lowest PID is kept (a forking server's master).
    """
    owner: dict[int, int] = {}
    netns_of: dict[int, int] = {}
    readlink = os.readlink
    for name in os.listdir(PROC):  # noqa: PTH208 (hot path: plain names, no Path objects)
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            netns_of[pid] = _ns_inode(readlink(f"{PROC}/{name}/ns/net"))
        except (*_GONE, ValueError):
            continue
        if not sockets:
            continue
        try:
            dir_fd = os.open(f"{PROC}/{name}/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except _GONE:
            continue
        try:
            for fd in os.listdir(dir_fd):  # noqa: PTH208 (listing by dir_fd)
                try:
                    target = readlink(fd, dir_fd=dir_fd)
                except _GONE:
                    continue
                if target.startswith("socket:["):
                    owner.setdefault(int(target[8:-1]), pid)
        except _GONE:
            pass
        finally:
            os.close(dir_fd)
    return ProcessTable(owner, netns_of)


def process_info(pid: int, netns: int) -> ProcessInfo | None:
    """comm, cmdline, real uid and cgroup of ``pid``; None when it has exited."""
    base = f"{PROC}/{pid}"
    try:
        comm = Path(f"{base}/comm").read_bytes().rstrip(b"\n").decode(errors="replace")
        cmdline = Path(f"{base}/cmdline").read_bytes().rstrip(b"\0")
        cmdline_text = cmdline.replace(b"\0", b" ").decode(errors="replace")
        uid = _real_uid(base)
        cgroup = _cgroup(base)
    except _GONE:
        return None
    return ProcessInfo(pid, comm, cmdline_text, uid, netns, cgroup)


def _ns_inode(link: str) -> int:
    """``net:[4026531840]`` -> 4026531840."""
    return int(link[link.index("[") + 1 : -1])


def _real_uid(base: str) -> int:
    for line in Path(f"{base}/status").read_bytes().splitlines():
        if line.startswith(b"Uid:"):
            return int(line.split()[1])
    return -1


def _cgroup(base: str) -> str:
    """The unified (v2) cgroup path, else the first non-root v1 path, else ``/``."""
    lines = Path(f"{base}/cgroup").read_bytes().decode(errors="replace").splitlines()
    fallback = "/"
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        _controllers, _, path = rest.partition(":")
        if hierarchy == "0" and path not in ("", "/"):
            return path
        if fallback == "/" and path not in ("", "/"):
            fallback = path
    return fallback
