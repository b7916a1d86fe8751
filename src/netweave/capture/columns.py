"""Capture events as columns: what the graph reads of many events at once, without objects.

:class:`FlowColumns` holds, in arrival order, the fields of ``TcpHandshake``, ``FirstPayload``
and ``FlowSeen`` events (:mod:`netweave.capture.events`) that decide the graph's flows and
edges: kind, time, protocol, endpoints, TCP flags and sequence number. Addresses are indexes
into ``addresses`` (canonical text, as in the event records), so a batch of a million events
between a few hundred hosts carries a few hundred strings.

Backends that decode in bulk (the eBPF ring buffer) build these columns straight from their
records; :func:`columns_of_events` builds them from event objects (tests, AF_PACKET).
``FlowCounters`` are not events of a stream: their column form is :class:`CounterColumns`,
which the capture-file backend builds for every flow of a file at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from netweave.capture.events import (
    PROTO_TCP,
    CaptureEvent,
    FirstPayload,
    FlowCounters,
    FlowSeen,
    TcpHandshake,
)

KIND_HANDSHAKE: Final = 1
KIND_PAYLOAD: Final = 2
KIND_FLOW_SEEN: Final = 3

IntColumn = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class FlowColumns:
    """Events in arrival order, one ``int64`` column per field the graph reads.

    ``kind`` is ``KIND_HANDSHAKE``, ``KIND_PAYLOAD`` or ``KIND_FLOW_SEEN``; ``src`` and
    ``dst`` index ``addresses``; ``tcp_flags`` and ``seq`` are those of handshakes (0 for
    other kinds: the graph reads them only for handshakes). Handshakes have protocol 6.
    """

    kind: IntColumn
    timestamp_ns: IntColumn
    protocol: IntColumn
    src: IntColumn
    dst: IntColumn
    src_port: IntColumn
    dst_port: IntColumn
    tcp_flags: IntColumn
    seq: IntColumn
    addresses: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.kind)

    def part(self, start: int, stop: int) -> FlowColumns:
        """Events ``start:stop`` (views of these columns, the same addresses)."""
        at = slice(start, stop)
        return FlowColumns(self.kind[at], self.timestamp_ns[at], self.protocol[at],
                           self.src[at], self.dst[at], self.src_port[at], self.dst_port[at],
                           self.tcp_flags[at], self.seq[at], self.addresses)  # fmt: skip

    def __post_init__(self) -> None:
        n = len(self.kind)
        for name in ("timestamp_ns", "protocol", "src", "dst", "src_port", "dst_port",
                     "tcp_flags", "seq"):  # fmt: skip
            if len(getattr(self, name)) != n:
                raise ValueError(f"flow columns: column {name!r} has {len(getattr(self, name))}"
                                 f" rows, kind has {n}")  # fmt: skip
        odd = np.flatnonzero((self.kind == KIND_HANDSHAKE) & (self.protocol != PROTO_TCP))
        if len(odd):
            raise ValueError(f"flow columns: row {odd[0]} is a handshake with protocol "
                             f"{self.protocol[odd[0]]}, not 6")  # fmt: skip


@dataclass(frozen=True, slots=True)
class CounterColumns:
    """``FlowCounters`` as columns, one row per flow; ``a`` and ``b`` index ``addresses``.

    Row ``i`` holds the fields of one ``FlowCounters`` record (``a`` sent the flow's first
    packet); ``link`` is not kept (capture files have none).
    """

    ip_version: IntColumn
    protocol: IntColumn
    a: IntColumn
    b: IntColumn
    a_port: IntColumn
    b_port: IntColumn
    packets_ab: IntColumn
    bytes_ab: IntColumn
    packets_ba: IntColumn
    bytes_ba: IntColumn
    first_ns: IntColumn
    last_ns: IntColumn
    tcp_flags: IntColumn
    handshake_seen: npt.NDArray[np.bool_]
    addresses: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.a)


def empty_columns() -> FlowColumns:
    """A batch of no events."""
    none = np.zeros(0, np.int64)
    return FlowColumns(none, none, none, none, none, none, none, none, none, ())


def columns_of_events(
    events: Iterable[CaptureEvent], index: dict[str, int] | None = None
) -> FlowColumns:
    """The columns of ``events`` (``FlowCounters`` among them are refused: no column form).

    ``index`` (address text -> id) is extended with new addresses and becomes the address
    table; a fresh one by default.
    """
    index = {} if index is None else index
    rows: list[tuple[int, int, int, int, int, int, int, int, int]] = []
    for ev in events:
        if isinstance(ev, TcpHandshake):
            kind, proto, flags, seq = KIND_HANDSHAKE, PROTO_TCP, ev.tcp_flags, ev.seq
        elif isinstance(ev, FirstPayload):
            kind, proto, flags, seq = KIND_PAYLOAD, ev.protocol, 0, 0
        elif isinstance(ev, FlowSeen):
            kind, proto, flags, seq = KIND_FLOW_SEEN, ev.protocol, 0, 0
        else:
            raise TypeError(f"flow columns: {type(ev).__name__} has no column form")
        src = index.setdefault(ev.src, len(index))
        dst = index.setdefault(ev.dst, len(index))
        rows.append((kind, ev.timestamp_ns, proto, src, dst, ev.src_port, ev.dst_port,
                     flags, seq))  # fmt: skip
    if not rows:
        none = np.zeros(0, np.int64)
        return FlowColumns(none, none, none, none, none, none, none, none, none, tuple(index))
    table = np.array(rows, dtype=np.int64)
    c = [np.ascontiguousarray(table[:, i]) for i in range(table.shape[1])]
    return FlowColumns(c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], tuple(index))


def columns_of_capture(
    events: Iterable[CaptureEvent], counters: Iterable[FlowCounters]
) -> tuple[FlowColumns, CounterColumns]:
    """Stream events and flow counters as columns over one address table."""
    index: dict[str, int] = {}
    stream = columns_of_events(events, index)
    rows = [
        (c.ip_version, c.protocol, index.setdefault(c.a, len(index)),
         index.setdefault(c.b, len(index)), c.a_port, c.b_port, c.packets_a_to_b,
         c.bytes_a_to_b, c.packets_b_to_a, c.bytes_b_to_a, c.first_seen_ns, c.last_seen_ns,
         c.tcp_flags_seen, c.handshake_seen)
        for c in counters
    ]  # fmt: skip
    table = np.array(rows, dtype=np.int64).reshape(len(rows), 14)
    c = [np.ascontiguousarray(table[:, i]) for i in range(14)]
    names = tuple(index)
    stream = FlowColumns(stream.kind, stream.timestamp_ns, stream.protocol, stream.src,
                         stream.dst, stream.src_port, stream.dst_port, stream.tcp_flags,
                         stream.seq, names)  # fmt: skip
    return stream, CounterColumns(c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9],
                                  c[10], c[11], c[12], c[13] != 0, names)  # fmt: skip
