"""Ring-buffer records read column-wise give the graph the same events the event objects do."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from netweave.capture.columns import columns_of_events
from netweave.capture.ebpf import KernelObserver, decode_block
from netweave.capture.events import FirstPayload, FlowSeen, TcpHandshake
from netweave.capture.ring_columns import walk_records
from netweave.graph.accumulator import GraphAccumulator

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="loading the observer needs root (CAP_BPF, CAP_NET_ADMIN)"
)
SYN, SYNACK, ACK, PSH_ACK = 0x002, 0x012, 0x010, 0x018


def frame(src: str, sport: int, dst: str, dport: int, *, proto: int = 6, flags: int = PSH_ACK,
          seq: int = 1, payload: bytes = b"") -> bytes:  # fmt: skip
    """An Ethernet frame from ``src``:``sport`` to ``dst``:``dport`` (checksums left zero)."""
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 64240, 0, 0)
    else:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    l4 += payload
    if ":" in src:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, 64,
                         socket.inet_pton(socket.AF_INET6, src),
                         socket.inet_pton(socket.AF_INET6, dst))  # fmt: skip
        return bytes(6) + bytes([2, 0, 0, 0, 0, 1]) + b"\x86\xdd" + ip + l4
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 7, 0x4000, 64, proto, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))  # fmt: skip
    return bytes(6) + bytes([2, 0, 0, 0, 0, 1]) + b"\x08\x00" + ip + l4


def traffic() -> list[bytes]:
    """Handshakes, first payloads, a retransmitted SYN, a mid-stream flow, UDP; v4 and v6."""
    out = []
    for c, s in (("10.0.0.1", "10.0.0.2"), ("fd00::1", "fd00::2"), ("10.0.0.3", "10.0.0.2")):
        for cport in (40000, 40001):
            out += [
                frame(c, cport, s, 443, flags=SYN, seq=cport),
                frame(s, 443, c, cport, flags=SYNACK, seq=9),
                frame(c, cport, s, 443, flags=ACK),
                frame(c, cport, s, 443, payload=b"GET / HTTP/1.1\r\n\r\n"),
                frame(s, 443, c, cport, payload=b"HTTP/1.1 200 OK\r\n"),
                frame(c, cport, s, 443, payload=b"more"),
            ]
        out.append(frame(c, 40000, s, 443, flags=SYN, seq=40000))  # retransmitted
        out.append(frame(s, 5432, c, 50000, payload=b"row"))  # joined mid-stream
        out.append(frame(c, 53124, s, 53, proto=17, payload=b"query"))
        out.append(frame(s, 53, c, 53124, proto=17, payload=b"answer"))
    return out


@needs_root
def test_columns_of_ring_records_equal_the_event_objects_and_build_the_same_graph() -> None:
    with KernelObserver(interfaces=[]) as obs:
        for f in traffic():
            obs.test_run(f)
        batch = obs.poll_batch(1.0)
        events = obs.events_of(batch)
        cols = obs.columns_of(batch)
    kinds = [type(e) for e in events]
    assert kinds.count(TcpHandshake) == 15  # SYN and SYN-ACK of 6 flows, 3 retransmissions
    assert kinds.count(FirstPayload) == 12 + 3 + 6
    assert kinds.count(FlowSeen) == 6  # the mid-stream flows and the DNS flows
    assert batch.malformed == 0 and len(batch) == len(events)

    def rows(c):
        a = c.addresses
        return list(zip(c.kind.tolist(), c.timestamp_ns.tolist(), c.protocol.tolist(),
                        [a[i] for i in c.src.tolist()], c.src_port.tolist(),
                        [a[i] for i in c.dst.tolist()], c.dst_port.tolist(),
                        c.tcp_flags.tolist(), c.seq.tolist(), strict=True))  # fmt: skip

    assert rows(cols) == rows(columns_of_events(events))
    assert sorted(cols.addresses) == sorted(
        {"10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::1", "fd00::2"}
    )
    by_columns, by_objects = GraphAccumulator(), GraphAccumulator()
    by_columns.add_batch(cols)
    by_objects.feed_many(events)
    view = by_columns.snapshot()
    assert view == by_objects.snapshot()
    got = {(e.client, e.server, e.port, e.protocol, e.flows, e.inferred) for e in view.edges}
    assert got == {
        ("10.0.0.1", "10.0.0.2", 443, "tcp", 2, False),
        ("fd00::1", "fd00::2", 443, "tcp", 2, False),
        ("10.0.0.3", "10.0.0.2", 443, "tcp", 2, False),
        ("10.0.0.1", "10.0.0.2", 5432, "tcp", 1, True),
        ("fd00::1", "fd00::2", 5432, "tcp", 1, True),
        ("10.0.0.3", "10.0.0.2", 5432, "tcp", 1, True),
        ("10.0.0.1", "10.0.0.2", 53, "udp", 1, False),
        ("fd00::1", "fd00::2", 53, "udp", 1, False),
        ("10.0.0.3", "10.0.0.2", 53, "udp", 1, False),
    }


@needs_root
def test_records_of_the_wrong_size_are_left_out_of_the_columns() -> None:
    with KernelObserver(interfaces=[]) as obs:
        obs.test_run(frame("10.0.0.1", 40000, "10.0.0.2", 80, flags=SYN))
        good = obs.poll_batch(1.0)
        (record,) = [good.block[o : o + 128] for o in good.offsets.tolist()]
    chunks = [record, record[:100], record]  # the third starts off the 8-byte grid
    offsets = [0, 128, 228]
    with KernelObserver(interfaces=[]) as obs:
        batch = decode_block(b"".join(chunks), offsets, [len(c) for c in chunks], 1)
        events = obs.events_of(batch)
        cols = obs.columns_of(batch)
    assert batch.malformed == 1
    assert [e.frame for e in events] == [1, 3]
    assert all(isinstance(e, TcpHandshake) and e.src == "10.0.0.1" for e in events)
    assert cols.kind.tolist() == [1, 1]
    assert [cols.addresses[i] for i in cols.dst.tolist()] == ["10.0.0.2", "10.0.0.2"]
    assert cols.tcp_flags.tolist() == [SYN, SYN] and cols.dst_port.tolist() == [80, 80]


def _ring_record(payload: bytes, flags: int = 0) -> bytes:
    """A ring-buffer record as the kernel lays it out: 8-byte header, data, padding to 8."""
    header = struct.pack("<II", len(payload) | flags, 0)
    return header + payload + bytes(-len(payload) % 8)


def test_ring_walk_skips_discarded_records_and_stops_at_a_busy_one() -> None:
    busy, discard = 1 << 31, 1 << 30
    region = (
        _ring_record(b"a" * 5)
        + _ring_record(b"b" * 16, discard)
        + _ring_record(b"c" * 3)
        + _ring_record(b"d" * 9, busy)
        + _ring_record(b"e" * 8)
    )
    offsets, sizes, walked = walk_records(region)
    assert offsets.tolist() == [8, 16 + 24 + 8] and sizes.tolist() == [5, 3]
    assert walked == 16 + 24 + 16  # up to the record the kernel is still writing
    assert [region[o : o + s] for o, s in zip(offsets, sizes, strict=True)] == [b"aaaaa", b"ccc"]
    assert walk_records(b"")[2] == 0
