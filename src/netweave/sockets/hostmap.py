"""The per-host lists the multi-host map is built from, fed by snapshots and live events.

:meth:`HostMap.fold_snapshot` takes a classified :class:`Snapshot` (the seed at start and
every periodic table); :meth:`HostMap.fold_events` takes decoded TCP state changes (the
kernel's ``inet_sock_set_state`` ring buffer, or :func:`events_from_snapshots`), so a
connection that opens and closes between two snapshots still lands in the outbound list with
the process that opened it. :meth:`HostMap.report` returns the lists.

Bounded: at most ``max_outbound`` destinations and ``max_tracked`` live connections (the
oldest entry goes first), and destinations unseen for ``ttl`` seconds leave at a report.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from netweave.sockets.classify import is_loopback, is_unspecified, unmap
from netweave.sockets.records import (
    Direction,
    HostReport,
    Listener,
    LocalIP,
    Outbound,
    Snapshot,
    StateChange,
    TcpState,
)

__all__ = ["HostMap", "events_from_snapshots"]

_SYN_SENT = int(TcpState.SYN_SENT)
_CLOSE = int(TcpState.CLOSE)
_ESTABLISHED = int(TcpState.ESTABLISHED)


@dataclass(slots=True)
class _Destination:
    """Mutable accumulator behind one :class:`Outbound` record (never leaves this module)."""

    proto: str
    ip: str
    port: int
    first_seen: float
    last_seen: float
    pid: int
    comm: str
    connections: int


class HostMap:
    """Accumulates outbound destinations, local IPs and listeners of one host."""

    def __init__(
        self, *, ttl: float = 3600.0, max_outbound: int = 100_000, max_tracked: int = 1_000_000
    ) -> None:
        self.ttl = ttl
        self.max_outbound = max_outbound
        self.max_tracked = max_tracked
        # CLOCK_MONOTONIC (bpf_ktime_get_ns) -> wall clock, fixed once so events stay ordered.
        self._wall_offset = time.time() - time.monotonic_ns() / 1e9
        self._outbound: dict[tuple[str, str, int], _Destination] = {}
        self._tracked: dict[int, tuple[str, str, int]] = {}
        self._local_ips: dict[str, list[float]] = {}
        self._local_by_ns: dict[int, frozenset[str]] = {}
        self._listeners: tuple[Listener, ...] = ()
        self.events_seen = 0
        self.events_dropped_local = 0

    # -- feeding ---------------------------------------------------------------------------

    def fold_snapshot(self, snapshot: Snapshot) -> None:
        """Take a classified socket table: outbound sockets, own IPs and listeners."""
        now = snapshot.taken_at
        for view in snapshot.namespaces:
            self._local_by_ns[view.netns] = view.local_ips
            for ip in view.local_ips:
                seen = self._local_ips.get(ip)
                if seen is None:
                    self._local_ips[ip] = [now, now]
                else:
                    seen[1] = max(seen[1], now)
        listeners: list[Listener] = []
        for sock in snapshot.sockets:
            raw = sock.raw
            if sock.direction is Direction.OUTBOUND:
                pid = sock.process.pid if sock.process else 0
                comm = sock.process.comm if sock.process else ""
                key = (raw.proto, unmap(raw.remote_ip), raw.remote_port)
                known = raw.cookie != 0 and raw.cookie in self._tracked
                self._touch(key, now, pid, comm, new_connection=not known)
                if raw.cookie:
                    self._track(raw.cookie, key)
            elif sock.direction is Direction.LISTEN:
                address = "*" if is_unspecified(raw.local_ip) else raw.local_ip
                listeners.append(
                    Listener(
                        raw.proto,
                        address,
                        raw.local_port,
                        sock.netns,
                        sock.process.pid if sock.process else None,
                        sock.process.comm if sock.process else None,
                    )
                )
        self._listeners = tuple(
            sorted(
                set(listeners), key=lambda item: (item.proto, item.port, item.address, item.netns)
            )
        )

    def fold_events(self, events: Iterable[StateChange]) -> int:
        """Fold decoded TCP state changes into the outbound list; return how many were read.

        CLOSE -> SYN_SENT is an active open: it creates or refreshes the destination and names
        the initiating process. Later changes of the same socket (by cookie) refresh its last
        seen time; CLOSE forgets the socket (its destination stays until ``ttl``). Opens
        towards loopback or one of the namespace's own IPs are local, not outbound.
        """
        offset = self._wall_offset
        tracked = self._tracked
        count = 0
        for event in events:
            count += 1
            seen = event.ktime_ns / 1e9 + offset
            if event.new_state == _SYN_SENT and event.old_state == _CLOSE:
                ip = unmap(event.daddr)
                if self._is_local(ip, event.netns):
                    self.events_dropped_local += 1
                    continue
                key = (event.proto, ip, event.dport)
                self._touch(key, seen, event.pid, event.comm, new_connection=True)
                self._track(event.cookie, key)
                continue
            key_or_none = tracked.get(event.cookie)
            if key_or_none is None:
                continue
            entry = self._outbound.get(key_or_none)
            if entry is not None and seen > entry.last_seen:
                entry.last_seen = seen
            if event.new_state == _CLOSE:
                del tracked[event.cookie]
        self.events_seen += count
        return count

    # -- reading ---------------------------------------------------------------------------

    def report(self, now: float | None = None) -> HostReport:
        """The current lists; destinations unseen for ``ttl`` seconds are dropped first."""
        now = time.time() if now is None else now
        horizon = now - self.ttl
        for key in [k for k, d in self._outbound.items() if d.last_seen < horizon]:
            del self._outbound[key]
        outbound = tuple(
            Outbound(d.proto, d.ip, d.port, d.first_seen, d.last_seen, d.pid, d.comm, d.connections)
            for d in sorted(self._outbound.values(), key=lambda d: (d.proto, d.ip, d.port))
        )
        local_ips = tuple(
            LocalIP(ip, first, last) for ip, (first, last) in sorted(self._local_ips.items())
        )
        return HostReport(now, outbound, local_ips, self._listeners)

    def is_tracking(self, cookie: int) -> bool:
        """True while the socket with ``cookie`` is open as far as this map knows."""
        return cookie in self._tracked

    # -- details ---------------------------------------------------------------------------

    def _touch(
        self, key: tuple[str, str, int], seen: float, pid: int, comm: str, *, new_connection: bool
    ) -> None:
        entry = self._outbound.get(key)
        if entry is None:
            if len(self._outbound) >= self.max_outbound:
                oldest = min(self._outbound, key=lambda k: self._outbound[k].last_seen)
                del self._outbound[oldest]
            self._outbound[key] = _Destination(key[0], key[1], key[2], seen, seen, pid, comm, 1)
            return
        entry.first_seen = min(entry.first_seen, seen)
        if seen >= entry.last_seen:
            entry.last_seen = seen
            if pid:
                entry.pid, entry.comm = pid, comm
        if new_connection:
            entry.connections += 1

    def _track(self, cookie: int, key: tuple[str, str, int]) -> None:
        tracked = self._tracked
        if cookie not in tracked and len(tracked) >= self.max_tracked:
            del tracked[next(iter(tracked))]
        tracked[cookie] = key

    def _is_local(self, ip: str, netns: int) -> bool:
        if is_loopback(ip):
            return True
        if netns:
            return ip in self._local_by_ns.get(netns, frozenset())
        return False


def events_from_snapshots(previous: Snapshot, current: Snapshot) -> list[StateChange]:
    """The TCP state changes implied by two snapshots of the same host, in kernel form.

    A socket (by cookie) that is new in ``current`` and OUTBOUND becomes CLOSE -> SYN_SENT
    (with its owner as the initiating process) then SYN_SENT -> its current state; a socket
    that is gone becomes its last state -> CLOSE. Sources without cookies (procfs) yield
    nothing. This is the poll-mode stand-in for the kernel's ``inet_sock_set_state`` events.
    """
    before = {s.raw.cookie: s for s in previous.sockets if s.raw.proto == "tcp" and s.raw.cookie}
    after = {s.raw.cookie: s for s in current.sockets if s.raw.proto == "tcp" and s.raw.cookie}
    events: list[StateChange] = []
    for cookie, sock in after.items():
        if cookie in before or sock.direction is not Direction.OUTBOUND:
            continue
        raw = sock.raw
        pid = sock.process.pid if sock.process else 0
        comm = sock.process.comm if sock.process else ""
        base = (raw.family, raw.local_ip, raw.remote_ip)
        events.append(
            StateChange(cookie, _CLOSE, _SYN_SENT, *base, 0, raw.remote_port, pid, comm,
                        current.monotonic_ns, sock.netns)
        )  # fmt: skip
        events.append(
            StateChange(cookie, _SYN_SENT, raw.state, *base, raw.local_port, raw.remote_port, 0,
                        "", current.monotonic_ns, sock.netns)
        )  # fmt: skip
    for cookie, sock in before.items():
        if cookie in after:
            continue
        raw = sock.raw
        events.append(
            StateChange(cookie, raw.state, _CLOSE, raw.family, raw.local_ip, raw.remote_ip, 0,
                        raw.remote_port, 0, "", current.monotonic_ns, sock.netns)
        )  # fmt: skip
    return events
