"""The kernel observer's flow counts and events equal a model of the traffic, packet for packet.

The real observer program runs on generated frames with BPF_PROG_TEST_RUN (nothing is
attached anywhere). Most packets of an established flow are counted in a per-CPU cache slot
and reach the shared flow table only every 64th packet of a direction, on SYN/FIN/RST, on a
new flag or first payload, or when another flow takes the slot; the counts read back must
still be exact, and the events exactly those the traffic calls for.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netweave.capture.ebpf import KernelObserver
from netweave.capture.events import FirstPayload, FlowSeen, TcpHandshake

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loading the observer needs root")

TCP, UDP = 6, 17
SYN, FIN, RST, PSH, ACK, ECE = 0x02, 0x01, 0x04, 0x08, 0x10, 0x40


@dataclass(frozen=True)
class Flow:
    """One flow of the generated traffic: (address, port) of each end."""

    version: int
    proto: int
    x: tuple[str, int]
    y: tuple[str, int]


@dataclass(frozen=True)
class Packet:
    """``repeat`` identical frames of ``flow``, from x (or y when ``reverse``), on one CPU."""

    flow: Flow
    reverse: bool
    flags: int
    payload: int
    vlans: int
    repeat: int
    cpu: int


def _frame(p: Packet) -> bytes:
    (src, sport), (dst, dport) = (p.flow.y, p.flow.x) if p.reverse else (p.flow.x, p.flow.y)
    body = bytes((i * 7 + sport) % 251 for i in range(p.payload))
    if p.flow.proto == TCP:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, p.flags, 512, 0, 0) + body
    else:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(body), 0) + body
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    if p.flow.version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0x4000, 64, p.flow.proto, 0,
                         s, d)  # fmt: skip
        ethertype = b"\x08\x00"
    else:
        ip = struct.pack("!IHBB16s16s", 0x6 << 28, len(l4), p.flow.proto, 64, s, d)
        ethertype = b"\x86\xdd"
    tags = b"\x81\x00\x00\x07" * p.vlans
    return bytes(6) + bytes([2, 0, 0, 0, 0, 1]) + tags + ethertype + ip + l4


def _flows() -> st.SearchStrategy[Flow]:
    def flow(version: int, proto: int, hosts: tuple[int, int], ports: tuple[int, int]) -> Flow:
        if version == 4:
            x, y = f"10.0.0.{hosts[0]}", f"10.0.0.{hosts[1]}"
        else:
            x, y = f"fd00::{hosts[0]:x}", f"fd00::{hosts[1]:x}"
        return Flow(version, proto, (x, ports[0]), (y, ports[1]))

    port = st.sampled_from([53, 80, 443, 5000, 40000, 40001, 65535])
    return st.builds(
        flow,
        st.sampled_from([4, 6]),
        st.sampled_from([TCP, UDP]),
        st.tuples(st.integers(1, 3), st.integers(1, 3)),
        st.tuples(port, port),
    ).filter(lambda f: f.x != f.y)


@st.composite
def _traffic(draw: st.DrawFn) -> list[Packet]:
    flows = draw(st.lists(_flows(), min_size=1, max_size=8, unique=True))
    flags = st.sampled_from([ACK, ACK, ACK | PSH, SYN, SYN | ACK, FIN | ACK, RST, ACK | ECE])
    packet = st.builds(
        Packet,
        st.sampled_from(flows),
        st.booleans(),
        flags,
        st.sampled_from([0, 0, 1, 40, 300]),
        st.sampled_from([0, 0, 1, 2]),
        st.sampled_from([1, 1, 1, 2, 63, 64, 65, 200]),
        st.integers(0, 3),
    )
    return draw(st.lists(packet, min_size=1, max_size=30))


def _ends(p: Packet) -> tuple[str, int, str, int]:
    (src, sport), (dst, dport) = (p.flow.y, p.flow.x) if p.reverse else (p.flow.x, p.flow.y)
    return src, sport, dst, dport


def _same_flow(a: Flow, b: Flow) -> bool:
    return (a.version, a.proto, {a.x, a.y}) == (b.version, b.proto, {b.x, b.y})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_traffic())
def test_counts_and_events_equal_the_traffic(traffic: list[Packet]) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    with KernelObserver(interfaces=[]) as obs:
        try:
            for p in traffic:  # each CPU has its own cache slots: spread a flow over them
                os.sched_setaffinity(0, {cpus[p.cpu % len(cpus)]})
                obs._prog.test_run(_frame(p), repeat=p.repeat)  # the program the agent attaches
        finally:
            os.sched_setaffinity(0, cpus)
        counters = obs.flow_counters()
        events = obs.poll(0)
        assert obs.dropped == 0

    # The model: a flow is one endpoint pair whichever way it is written; its "a" end sent
    # its first packet; counts per direction; events as documented in docs/architecture.md.
    firsts: dict[Flow, Packet] = {}
    counts: Counter[tuple[Flow, str, int, str]] = Counter()
    payload_sent: dict[tuple[Flow, str, int], Packet] = {}
    flags_seen: dict[Flow, int] = {}
    handshakes: Counter[tuple[str, int, str, int, int]] = Counter()
    for p in traffic:
        flow = next((f for f in firsts if _same_flow(f, p.flow)), p.flow)
        firsts.setdefault(flow, p)
        src, sport, _dst, _dport = _ends(p)
        counts[flow, src, sport, "packets"] += p.repeat
        counts[flow, src, sport, "bytes"] += p.repeat * len(_frame(p))
        flags_seen[flow] = flags_seen.get(flow, 0) | (p.flags if flow.proto == TCP else 0)
        if p.flow.proto == TCP and p.flags & SYN:
            handshakes[(*_ends(p), p.flags)] += p.repeat
        if p.payload:
            payload_sent.setdefault((flow, src, sport), p)

    assert len(counters) == len(firsts)
    for c in counters:
        read = Flow(c.ip_version, c.protocol, (c.a, c.a_port), (c.b, c.b_port))
        flow = next(f for f in firsts if _same_flow(f, read))
        first = firsts[flow]
        assert (c.a, c.a_port, c.b, c.b_port) == _ends(first)
        assert c.packets_a_to_b == counts[flow, c.a, c.a_port, "packets"]
        assert c.bytes_a_to_b == counts[flow, c.a, c.a_port, "bytes"]
        assert c.packets_b_to_a == counts[flow, c.b, c.b_port, "packets"]
        assert c.bytes_b_to_a == counts[flow, c.b, c.b_port, "bytes"]
        assert c.tcp_flags_seen == flags_seen[flow]
        assert c.handshake_seen == any(
            p.flow.proto == TCP and p.flags & SYN and _same_flow(p.flow, flow) for p in traffic
        )

    got_handshakes = Counter(
        (e.src, e.src_port, e.dst, e.dst_port, e.tcp_flags)
        for e in events
        if isinstance(e, TcpHandshake)
    )
    assert got_handshakes == handshakes
    got_payloads = {
        (e.protocol, e.src, e.src_port, e.dst, e.dst_port): e.data
        for e in events
        if isinstance(e, FirstPayload)
    }
    assert len(got_payloads) == sum(isinstance(e, FirstPayload) for e in events)
    want_payloads = {
        (p.flow.proto, *_ends(p)): _frame(p)[-p.payload :][:256] for p in payload_sent.values()
    }
    assert got_payloads == want_payloads
    got_seen = sorted(
        (e.protocol, e.src, e.src_port, e.dst, e.dst_port)
        for e in events
        if isinstance(e, FlowSeen)
    )
    want_seen = sorted(
        (p.flow.proto, *_ends(p))
        for p in firsts.values()
        if not (p.flow.proto == TCP and p.flags & SYN)
    )
    assert got_seen == want_seen
