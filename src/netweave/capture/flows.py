"""Turn batch-decoded packets into event records: handshakes, first payloads, flows.

Flow identity is a 64-bit hash of the 5-tuple computed over all packets at once
(directional for payload reassembly, direction-free for flows). Python code runs only for
the packets that become records: segments with SYN set, the first few payload segments of
each flow direction, and one step per flow for the counters.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from netweave.capture.containers import Image
from netweave.capture.decode import Packets
from netweave.capture.events import (
    PROTO_TCP,
    PROTO_UDP,
    TCP_SYN,
    FirstPayload,
    FlowCounters,
    FlowSeen,
    TcpHandshake,
)
from netweave.capture.tunnels import TUNNEL_TEXT

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]

MAX_SEGMENTS = 8
"""First payload segments per TCP flow direction considered for reassembly."""


@dataclass(frozen=True, slots=True)
class OptionProblem:
    """A handshake segment whose TCP options have an impossible length."""

    frame: int
    offset: int
    reason: str


def _mix(x: U64) -> U64:
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def flow_keys(pk: Packets) -> tuple[U64, U64]:
    """Directional and direction-free 64-bit flow hashes of every packet."""
    with np.errstate(over="ignore"):
        sport = pk.sport.astype(np.uint64)
        dport = pk.dport.astype(np.uint64)
        src = _mix(_mix(_mix(pk.src_hi) ^ pk.src_lo) ^ sport)
        dst = _mix(_mix(_mix(pk.dst_hi) ^ pk.dst_lo) ^ dport)
        tag = (pk.proto.astype(np.uint64) << np.uint64(8)) | pk.ip_version.astype(np.uint64)
        golden = np.uint64(0x9E3779B97F4A7C15)
        directional = _mix(src * golden ^ dst ^ tag)
        low = np.minimum(src, dst)
        high = np.maximum(src, dst)
        undirected = _mix(low * golden ^ high ^ tag)
    return directional, undirected


class AddressText:
    """Text of the IP addresses of packets, cached by address value."""

    def __init__(self, pk: Packets) -> None:
        self._pk = pk
        self._cache: dict[tuple[int, int, int], str] = {}

    def text(self, version: int, hi: int, lo: int) -> str:
        """Canonical text of an IPv4 (``lo``) or IPv6 (``hi``, ``lo``) address."""
        key = (version, hi, lo)
        text = self._cache.get(key)
        if text is None:
            if version == 4:
                text = str(ipaddress.IPv4Address(lo))
            else:
                text = str(ipaddress.IPv6Address((hi << 64) | lo))
            self._cache[key] = text
        return text

    def endpoints_of(self, sel: I64) -> list[tuple[str, str]]:
        """Source and destination address text of the packets at indices ``sel``."""
        pk = self._pk
        text = self.text
        return [
            (text(v, sh, sl), text(v, dh, dl))
            for v, sh, sl, dh, dl in zip(
                pk.ip_version[sel].tolist(),
                pk.src_hi[sel].tolist(),
                pk.src_lo[sel].tolist(),
                pk.dst_hi[sel].tolist(),
                pk.dst_lo[sel].tolist(),
                strict=True,
            )
        ]


def handshakes(
    pk: Packets, image: Image, ts_ns: I64, addresses: AddressText
) -> tuple[list[TcpHandshake], list[OptionProblem]]:
    """One record per TCP segment with SYN set, in frame order."""
    sel = np.flatnonzero(pk.tcp_ok & ((pk.tcp_flags & TCP_SYN) != 0))
    out: list[TcpHandshake] = []
    problems: list[OptionProblem] = []
    cols = [
        getattr(pk, name)[sel].tolist()
        for name in (
            "ip_version",
            "ttl",
            "tos",
            "ip_flags",
            "ip_id",
            "flow_label",
            "ip_hlen",
            "ip_total",
            "sport",
            "dport",
            "seq",
            "ack",
            "window",
            "tcp_flags",
            "urgent",
            "doff",
            "l4",
            "payload_wire",
            "tunnel",
        )
    ]
    rows = zip(sel.tolist(), ts_ns[sel].tolist(), addresses.endpoints_of(sel), *cols,
               strict=True)  # fmt: skip
    for (i, stamp, (src, dst), ver, ttl, tos, flags, ip_id, flow, hlen, total, sport, dport,
         seq, ack, win, tflags, urg, doff, l4, pay, tun) in rows:  # fmt: skip
        options = bytes(image[l4 + 20 : l4 + doff])
        bad = _option_problem(options)
        if bad is not None:
            rel, reason = bad
            problems.append(OptionProblem(i + 1, l4 + 20 + rel, reason))
        out.append(
            TcpHandshake(
                timestamp_ns=stamp,
                frame=i + 1,
                ip_version=ver,
                src=src,
                dst=dst,
                src_port=sport,
                dst_port=dport,
                ttl=ttl,
                tos=tos,
                ip_flags=flags,
                ip_id=ip_id,
                flow_label=flow,
                ip_options_length=hlen - 20 if ver == 4 else 0,
                ip_total_length=total,
                seq=seq,
                ack=ack,
                window=win,
                tcp_flags=tflags,
                urgent_pointer=urg,
                tcp_options=options,
                payload_length=pay,
                tunnel=TUNNEL_TEXT[tun],
            )
        )
    return out, problems


def _option_problem(options: bytes) -> tuple[int, str] | None:
    pos = 0
    while pos < len(options):
        kind = options[pos]
        if kind in (0, 1):
            pos += 1
            continue
        if pos + 1 >= len(options):
            return pos, f"TCP option kind {kind} has no room for its length byte"
        length = options[pos + 1]
        if length < 2 or pos + length > len(options):
            return pos, f"impossible TCP option length {length} for option kind {kind}"
        pos += length
    return None


def first_payloads(
    pk: Packets,
    image: Image,
    ts_ns: I64,
    *,
    directional: U64,
    addresses: AddressText,
    limit: int,
) -> list[FirstPayload]:
    """The first payload of every flow direction (TCP reassembled up to ``limit`` bytes)."""
    cand = np.flatnonzero((pk.tcp_ok | pk.udp_ok) & (pk.payload_cap > 0))
    if not cand.size:
        return []
    keys = directional[cand]
    order = np.argsort(keys, kind="stable")
    skeys = keys[order]
    starts = np.flatnonzero(np.r_[True, skeys[1:] != skeys[:-1]])
    group = np.repeat(starts, np.diff(np.r_[starts, skeys.size]))
    rank = np.arange(skeys.size) - group
    keep = rank < MAX_SEGMENTS
    members = cand[order[keep]]
    member_group = group[keep]
    bounds = np.flatnonzero(np.r_[True, member_group[1:] != member_group[:-1], True]).tolist()
    seg = list(zip(members.tolist(), pk.seq[members].tolist(), pk.payload_off[members].tolist(),
                   pk.payload_cap[members].tolist(), pk.payload_wire[members].tolist(),
                   strict=True))  # fmt: skip
    firsts = members[bounds[:-1]]
    heads = zip(firsts.tolist(), ts_ns[firsts].tolist(), addresses.endpoints_of(firsts),
                pk.ip_version[firsts].tolist(), pk.udp_ok[firsts].tolist(),
                pk.sport[firsts].tolist(), pk.dport[firsts].tolist(),
                pk.tunnel[firsts].tolist(), strict=True)  # fmt: skip
    out: list[FirstPayload] = []
    for g, (first, stamp, (src, dst), version, udp, sport, dport, tun) in enumerate(heads):
        group_segments = seg[bounds[g] : bounds[g + 1]]
        if udp:
            _i, _seq, off, cap, wire = group_segments[0]
            data = bytes(image[off : off + min(cap, limit)])
            last, truncated = first, wire > len(data)
            segments: tuple[tuple[int, int], ...] = ((len(data), first + 1),)
        else:
            data, last, truncated, segments = _reassemble(image, group_segments, limit)
        out.append(
            FirstPayload(
                timestamp_ns=stamp,
                frame=first + 1,
                last_frame=last + 1,
                ip_version=version,
                protocol=PROTO_UDP if udp else PROTO_TCP,
                src=src,
                dst=dst,
                src_port=sport,
                dst_port=dport,
                data=data,
                truncated=truncated,
                tunnel=TUNNEL_TEXT[tun],
                segments=segments,
            )
        )
    return out


def _reassemble(
    image: Image, group: list[tuple[int, int, int, int, int]], limit: int
) -> tuple[bytes, int, bool, tuple[tuple[int, int], ...]]:
    """Contiguous stream start from the first segments ``(index, seq, offset, captured,
    wire length)`` of one direction.

    Reassembly goes on only while the stream can still hold a TLS hello (see
    :func:`_hello_may_follow`), so most flows cost one segment.
    """
    first = group[0][0]
    base = group[0][1]
    pieces = []
    for i, seq, off, cap, wire in group:
        rel = (seq - base) & 0xFFFFFFFF
        if rel < 0x80000000:
            pieces.append((rel, i, off, cap, wire))
    pieces.sort()
    buf = bytearray()
    last = first
    segments: list[tuple[int, int]] = []
    cut = False
    for rel, i, off, cap, wire in pieces:
        if rel > len(buf) or len(buf) >= limit:
            cut = True
            break
        if rel + cap <= len(buf):
            continue  # a retransmission of bytes already held
        buf += image[off + len(buf) - rel : off + cap]
        last = i
        segments.append((len(buf), i + 1))
        if cap < wire:
            cut = True  # snaplen cut this segment: nothing after it lines up
            break
        if not _hello_may_follow(buf):
            break
    truncated = cut or len(buf) > limit
    return bytes(buf[:limit]), last, truncated, tuple(segments)


_TLS_HANDSHAKE = 0x16
_TLS_CCS = 0x14


def _hello_may_follow(buf: bytearray) -> bool:
    """Whether more stream bytes could still carry a TLS ClientHello or ServerHello.

    True while the stream is TLS handshake and change-cipher-spec records (a hello, a
    HelloRetryRequest) or an unfinished HTTP CONNECT exchange; False once it reaches
    application data, an alert, or bytes that are neither.
    """
    pos = 0
    if buf.startswith((b"CONNECT ", b"HTTP/")):
        end = buf.find(b"\r\n\r\n", 0, 4096)
        if end < 0:
            return len(buf) < 4096
        pos = end + 4
    while pos + 5 <= len(buf):
        if buf[pos] not in (_TLS_HANDSHAKE, _TLS_CCS) or buf[pos + 1] != 0x03:
            return False
        pos += 5 + ((buf[pos + 3] << 8) | buf[pos + 4])
    return True  # handshake records so far (or too few bytes to tell)


def flows(
    pk: Packets,
    ts_ns: I64,
    directional: U64,
    undirected: U64,
    addresses: AddressText,
    *,
    counters: bool,
) -> tuple[list[FlowSeen], list[FlowCounters]]:
    """``FlowSeen`` for flows opened without a SYN, and per-flow counters."""
    sel = np.flatnonzero(pk.tcp_ok | pk.udp_ok)
    if not sel.size:
        return [], []
    keys = undirected[sel]
    order = np.argsort(keys, kind="stable")  # one sort serves grouping and reductions
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    first_pos = order[starts]  # stable sort: each flow's earliest packet
    inverse = np.empty(keys.size, dtype=np.int64)
    inverse[order] = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, keys.size]))
    first = sel[first_pos]
    syn_opened = pk.tcp_ok[first] & ((pk.tcp_flags[first] & TCP_SYN) != 0)
    unseen = first[~syn_opened]
    seen = [
        FlowSeen(
            timestamp_ns=stamp,
            frame=i + 1,
            ip_version=version,
            protocol=PROTO_TCP if tcp else PROTO_UDP,
            src=src,
            dst=dst,
            src_port=sport,
            dst_port=dport,
            tcp_flags=flags if tcp else 0,
            tunnel=TUNNEL_TEXT[tun],
        )
        for i, stamp, (src, dst), version, tcp, sport, dport, flags, tun in zip(
            unseen.tolist(),
            ts_ns[unseen].tolist(),
            addresses.endpoints_of(unseen),
            pk.ip_version[unseen].tolist(),
            pk.tcp_ok[unseen].tolist(),
            pk.sport[unseen].tolist(),
            pk.dport[unseen].tolist(),
            pk.tcp_flags[unseen].tolist(),
            pk.tunnel[unseen].tolist(),
            strict=True,
        )
    ]
    if not counters:
        return seen, []
    nflows = int(first.size)
    forward = directional[sel] == directional[first][inverse]
    size = pk.ip_total[sel]
    pkts_ab = np.bincount(inverse[forward], minlength=nflows)
    pkts_ba = np.bincount(inverse[~forward], minlength=nflows)
    bytes_ab = np.bincount(inverse[forward], weights=size[forward], minlength=nflows)
    bytes_ba = np.bincount(inverse[~forward], weights=size[~forward], minlength=nflows)
    stamps = ts_ns[sel][order]
    last_seen = np.maximum.reduceat(stamps, starts)
    first_seen = np.minimum.reduceat(stamps, starts)
    flags = np.bitwise_or.reduceat(pk.tcp_flags[sel][order], starts)
    out = [
        FlowCounters(
            ip_version=version,
            protocol=PROTO_TCP if tcp else PROTO_UDP,
            a=src,
            b=dst,
            a_port=sport,
            b_port=dport,
            packets_a_to_b=n_ab,
            bytes_a_to_b=int(b_ab),
            packets_b_to_a=n_ba,
            bytes_b_to_a=int(b_ba),
            first_seen_ns=t0,
            last_seen_ns=t1,
            tcp_flags_seen=seen_flags,
            handshake_seen=opened,
        )
        for (
            src,
            dst,
        ), version, tcp, sport, dport, n_ab, b_ab, n_ba, b_ba, t0, t1, seen_flags, opened in zip(
            addresses.endpoints_of(first),
            pk.ip_version[first].tolist(),
            pk.tcp_ok[first].tolist(),
            pk.sport[first].tolist(),
            pk.dport[first].tolist(),
            pkts_ab.tolist(),
            bytes_ab.tolist(),
            pkts_ba.tolist(),
            bytes_ba.tolist(),
            first_seen.tolist(),
            last_seen.tolist(),
            flags.tolist(),
            syn_opened.tolist(),
            strict=True,
        )
    ]
    return seen, out
