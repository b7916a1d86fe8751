"""Event records shared by every capture backend (eBPF live, AF_PACKET, capture files).

This module is the contract between the packet sources and everything above them
(fingerprints, the service matcher, the graph). Every backend turns packets into exactly
these frozen records and nothing else; consumers never see raw frames.

Records
-------
``TcpHandshake``
    One per TCP segment with the SYN bit set (SYN, SYN-ACK, and odd combinations such as
    SYN|ECE|CWR or SYN|FIN, which consumers filter as they need: JA4T wants flags exactly
    0x002, JA4TS exactly 0x012, p0f drops SYN|FIN and SYN|RST). It carries every header
    field that p0f v3 and JA4T/JA4TS read, undecoded: raw TCP options (at most 40 bytes),
    raw IP flags (reserved bit 0x4, DF 0x2, MF 0x1), the full 12-bit TCP flags field
    (reserved bits 0xE00, NS/AE 0x100, CWR 0x080, ECE 0x040, URG, ACK, PSH, RST, SYN, FIN).
    Retransmissions are emitted too (the JA4TS retransmission suffix needs them).

``FirstPayload``
    The first payload bytes of each direction of a flow (TCP or UDP). The kernel observer
    copies a prefix of at most 256 bytes of the first payload packet. Capture files
    reassemble up to ``CAPTURE_PAYLOAD_LIMIT`` bytes of the contiguous stream start from
    the first payload segments of a direction (at most 8), for as long as the stream can
    still carry a TLS hello: a whole ClientHello or ServerHello spread over several
    segments, a HelloRetryRequest and the ServerHello after it, or a hello behind an HTTP
    CONNECT exchange. A stream that opens with anything else keeps its first segment.
    ``frame`` is the first segment's frame, ``last_frame`` the last one used, and
    ``segments`` maps stream offsets to frames (``(end_offset, frame)`` per segment; a
    single entry or empty for live backends) so a message can be reported on the frame that
    completed it, as tshark does. ``truncated``: more payload existed than ``data`` holds.

``FlowSeen``
    A flow (TCP or UDP) whose handshake was not seen: for TCP, no SYN for it was observed
    before its first packet; every UDP flow gets one. Emitted at the first packet of the
    flow, at most once per flow per ``FLOW_SEEN_INTERVAL_NS`` of packet time.

``FlowCounters``
    Per-flow packet and byte counts in each direction, first and last seen, and the OR of
    TCP flags seen. The kernel keeps these in its LRU flow table and userspace reads them
    periodically; capture files emit one per flow at the end of the file. Direction ``a``
    is the endpoint that sent the flow's first packet (the SYN sender when a SYN opened it).

Conventions (all backends)
--------------------------
* ``timestamp_ns``: nanoseconds since the Unix epoch (capture time for files, CLOCK_REALTIME
  for live backends).
* ``frame``: 1-based packet number as tshark counts it (every packet record in the file,
  whatever it contains). Live backends number events in arrival order per observer.
* Addresses are canonical text (``ipaddress`` formatting, IPv6 compressed); ports are ints.
* ``ip_version`` is 4 or 6. For IPv6, ``ttl`` is the hop limit, ``tos`` the traffic class,
  ``ip_flags`` and ``ip_id`` are 0, ``ip_options_length`` is 0 (extension headers are not
  IP options, matching p0f), and ``ip_total_length`` is 40 + payload length.
* ``payload_length`` is what the IP header claims, bounded by nothing: a snaplen-truncated
  capture still reports the length on the wire.
* ``link``: the interface name (live) or ``""`` for capture files; ``tunnel`` names the
  encapsulations peeled off on the way in (``"vxlan"``, ``"gre"``, ...), empty when none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

CAPTURE_PAYLOAD_LIMIT: Final = 8192
"""Bytes of first payload a capture-file backend reassembles per flow direction."""

KERNEL_PAYLOAD_LIMIT: Final = 256
"""Bytes of first payload the kernel observer copies per flow direction."""

FLOW_SEEN_INTERVAL_NS: Final = 60 * 1_000_000_000
"""Minimum packet-time gap between two ``FlowSeen`` events of the same flow."""

PROTO_TCP: Final = 6
PROTO_UDP: Final = 17

TCP_FIN: Final = 0x001
TCP_SYN: Final = 0x002
TCP_RST: Final = 0x004
TCP_PSH: Final = 0x008
TCP_ACK: Final = 0x010
TCP_URG: Final = 0x020
TCP_ECE: Final = 0x040
TCP_CWR: Final = 0x080
TCP_NS: Final = 0x100

IP_FLAG_RESERVED: Final = 0x4
IP_FLAG_DF: Final = 0x2
IP_FLAG_MF: Final = 0x1


@dataclass(frozen=True, slots=True)
class TcpHandshake:
    """A TCP segment with SYN set (SYN, SYN-ACK, ...), with every field fingerprints read."""

    timestamp_ns: int
    frame: int
    ip_version: int
    src: str
    dst: str
    src_port: int
    dst_port: int
    ttl: int
    tos: int
    ip_flags: int
    ip_id: int
    flow_label: int
    ip_options_length: int
    ip_total_length: int
    seq: int
    ack: int
    window: int
    tcp_flags: int
    urgent_pointer: int
    tcp_options: bytes
    payload_length: int
    link: str = ""
    tunnel: str = ""

    @property
    def is_syn(self) -> bool:
        """True for a plain SYN (flags exactly 0x002, what JA4T fingerprints)."""
        return self.tcp_flags == TCP_SYN

    @property
    def is_synack(self) -> bool:
        """True for a plain SYN-ACK (flags exactly 0x012, what JA4TS fingerprints)."""
        return self.tcp_flags == TCP_SYN | TCP_ACK


@dataclass(frozen=True, slots=True)
class FirstPayload:
    """The first payload bytes of one direction of a flow."""

    timestamp_ns: int
    frame: int
    last_frame: int
    ip_version: int
    protocol: int
    src: str
    dst: str
    src_port: int
    dst_port: int
    data: bytes
    truncated: bool
    link: str = ""
    tunnel: str = ""
    segments: tuple[tuple[int, int], ...] = ()

    def frame_at(self, offset: int) -> int:
        """Frame that carried byte ``offset - 1`` of ``data`` (the end of a message)."""
        for end, frame in self.segments:
            if offset <= end:
                return frame
        return self.last_frame


@dataclass(frozen=True, slots=True)
class FlowSeen:
    """A flow seen without its handshake (every UDP flow; TCP flows joined mid-stream)."""

    timestamp_ns: int
    frame: int
    ip_version: int
    protocol: int
    src: str
    dst: str
    src_port: int
    dst_port: int
    tcp_flags: int
    link: str = ""
    tunnel: str = ""


@dataclass(frozen=True, slots=True)
class FlowCounters:
    """Packets and bytes per direction of one flow; ``a`` sent the flow's first packet."""

    ip_version: int
    protocol: int
    a: str
    b: str
    a_port: int
    b_port: int
    packets_a_to_b: int
    bytes_a_to_b: int
    packets_b_to_a: int
    bytes_b_to_a: int
    first_seen_ns: int
    last_seen_ns: int
    tcp_flags_seen: int
    handshake_seen: bool
    link: str = ""


CaptureEvent = TcpHandshake | FirstPayload | FlowSeen | FlowCounters
"""Any record a capture backend produces."""
