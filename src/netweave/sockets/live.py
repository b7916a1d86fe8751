"""Live TCP socket events from the kernel (``bpf/sockstate.bpf.c``), as :class:`StateChange`.

Connections that open and close between two snapshots are still seen, with the process
that opened them: CLOSE -> SYN_SENT runs in the connecting task. Server-side transitions
run in softirq context, so the socket's reader is reported separately (``sock_recv_length``
in the reading process) as an ESTABLISHED -> ESTABLISHED event carrying its pid and comm.
"""

from __future__ import annotations

import ctypes
import socket
from ctypes import Structure, c_char, c_uint8, c_uint16, c_uint32, c_uint64

from netweave.kernel import BpfObject, Link, RingBuffer
from netweave.sockets.records import StateChange

NW_SOCK_STATE = 1
NW_SOCK_OWNER = 2


class SockEvent(Structure):
    """``struct nw_sock_event`` (bpf/sockstate.h), checked against the object's BTF."""

    _fields_ = [
        ("cookie", c_uint64),
        ("ts_ns", c_uint64),
        ("pid", c_uint32),
        ("netns", c_uint32),
        ("saddr", c_uint8 * 16),
        ("daddr", c_uint8 * 16),
        ("sport", c_uint16),
        ("dport", c_uint16),
        ("family", c_uint16),
        ("kind", c_uint8),
        ("old_state", c_uint8),
        ("new_state", c_uint8),
        ("_pad", c_uint8 * 7),
        ("comm", c_char * 16),
    ]


EVENT_SIZE = ctypes.sizeof(SockEvent)


class SocketEvents:
    """The socket-state programs, attached; :meth:`poll` returns decoded state changes."""

    def __init__(self) -> None:
        self._obj = BpfObject.embedded("sockstate")
        self._obj.load()
        self._obj.check_record("nw_sock_event", SockEvent)
        self._links: list[Link] = []
        try:
            for prog in self._obj.programs.values():
                self._links.append(prog.attach())
        except Exception:
            self.close()
            raise
        self._ring = RingBuffer(self._obj.map("sock_events"), self._obj.map("sock_event_drops"))
        self.malformed = 0

    @property
    def dropped(self) -> int:
        """Events lost because the ring buffer was full."""
        return self._ring.dropped

    def poll(self, timeout: float | None = 0.0) -> list[StateChange]:
        """Wait up to ``timeout`` seconds and return every event ready, oldest first."""
        out = []
        for raw in self._ring.poll(timeout):
            if len(raw) != EVENT_SIZE:
                self.malformed += 1
                continue
            out.append(decode(SockEvent.from_buffer_copy(raw)))
        return out

    def close(self) -> None:
        """Detach and unload."""
        for link in self._links:
            link.close()
        self._links.clear()
        ring = getattr(self, "_ring", None)
        if ring is not None:
            ring.close()
        self._obj.close()

    def __enter__(self) -> SocketEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def decode(ev: SockEvent) -> StateChange:
    """One kernel record as a :class:`StateChange` (addresses as text)."""
    family = socket.AF_INET if ev.family == socket.AF_INET else socket.AF_INET6
    width = 4 if family == socket.AF_INET else 16
    return StateChange(
        cookie=ev.cookie,
        old_state=ev.old_state,
        new_state=ev.new_state,
        family=family,
        saddr=socket.inet_ntop(family, bytes(ev.saddr)[:width]),
        daddr=socket.inet_ntop(family, bytes(ev.daddr)[:width]),
        sport=ev.sport,
        dport=ev.dport,
        pid=ev.pid,
        comm=ev.comm.decode(errors="replace"),
        ktime_ns=ev.ts_ns,
        netns=ev.netns,
    )
