"""Turn the packets a scan picked into event records: handshakes, first payloads, flows.

``pk`` holds the decoded columns of the picked packets only (``wanted``: their packet
indices, sorted); ``rows_of`` maps packet indices to rows of ``pk``. Python runs once per
record: segments with SYN set, the first payload segments of each flow direction, flows.
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
    FirstPayload,
    FlowCounters,
    FlowSeen,
    TcpHandshake,
)
from netweave.capture.flowtable import Scan
from netweave.capture.tunnels import TUNNEL_TEXT

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
Mask = npt.NDArray[np.bool_]


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
    """Directional and direction-free 64-bit flow hashes of every packet of ``pk``.

    The capture-file path groups flows exactly in its compiled scan; this is for callers
    that decode small batches themselves (the AF_PACKET backend).
    """
    with np.errstate(over="ignore"):
        sport = pk.sport.astype(np.uint64)
        dport = pk.dport.astype(np.uint64)
        src = _mix(_mix(_mix(pk.src_hi) ^ pk.src_lo) ^ sport)
        dst = _mix(_mix(_mix(pk.dst_hi) ^ pk.dst_lo) ^ dport)
        tag = (pk.proto.astype(np.uint64) << np.uint64(8)) | pk.ip_version.astype(np.uint64)
        golden = np.uint64(0x9E3779B97F4A7C15)
        directional = _mix(src * golden ^ dst ^ tag)
        undirected = _mix(np.minimum(src, dst) * golden ^ np.maximum(src, dst) ^ tag)
    return directional, undirected


def rows_of(wanted: I64, packets: I64) -> I64:
    """Rows of ``pk`` holding the packets at indices ``packets`` (all must be wanted)."""
    return np.searchsorted(wanted, packets)


class AddressText:
    """Text of the IP addresses of packets, cached by address value.

    Built on the decoded packets it names; a file image is also accepted (the AF_PACKET
    backend's form), in which case every call passes its ``pk``.
    """

    def __init__(self, source: Packets | Image | None = None) -> None:
        self._pk = source if isinstance(source, Packets) else None
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

    def endpoints(self, pk: Packets, i: int) -> tuple[str, str]:
        """Source and destination address text of row ``i`` of ``pk``."""
        version = int(pk.ip_version[i])
        return (
            self.text(version, int(pk.src_hi[i]), int(pk.src_lo[i])),
            self.text(version, int(pk.dst_hi[i]), int(pk.dst_lo[i])),
        )

    def endpoints_of(self, sel: I64, pk: Packets | None = None) -> list[tuple[str, str]]:
        """Source and destination address text of the packets at rows ``sel``."""
        pk = pk if pk is not None else self._pk
        if pk is None:
            raise ValueError("AddressText built on a file image needs the packets passed in")
        version = pk.ip_version[sel].astype(np.uint64)
        both = np.concatenate(
            (
                np.stack((version, pk.src_hi[sel], pk.src_lo[sel]), axis=1),
                np.stack((version, pk.dst_hi[sel], pk.dst_lo[sel]), axis=1),
            )
        )
        if not both.size:
            return []
        # Few distinct addresses repeat across many packets: render each once.
        unique, inverse = np.unique(both, axis=0, return_inverse=True)
        texts = [self.text(int(v), int(h), int(lo)) for v, h, lo in unique.tolist()]
        named = [texts[j] for j in inverse.reshape(-1).tolist()]
        half = len(named) // 2
        return list(zip(named[:half], named[half:], strict=True))


def handshakes(
    pk: Packets,
    image: Image,
    ts_ns: I64,
    addresses: AddressText,
    *,
    wanted: I64 | None = None,
    syn: I64 | None = None,
    bad_options: Mask | None = None,
) -> tuple[list[TcpHandshake], list[OptionProblem]]:
    """One record per TCP segment with SYN set (packet indices ``syn``), in frame order.

    Without ``wanted``/``syn``, ``pk`` holds every packet and all its SYNs are taken.
    """
    if syn is None or wanted is None:
        syn = np.flatnonzero(pk.tcp_ok & ((pk.tcp_flags & 0x02) != 0))
        wanted = np.arange(pk.count, dtype=np.int64)
    if bad_options is None:
        bad_options = np.ones(syn.size, dtype=np.bool_)
    sel = rows_of(wanted, syn)
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
    rows = zip(syn.tolist(), ts_ns[syn].tolist(), addresses.endpoints_of(sel, pk),
               bad_options.tolist(), *cols,
               strict=True)  # fmt: skip
    for (i, stamp, (src, dst), suspect, ver, ttl, tos, flags, ip_id, flow, hlen, total, sport,
         dport, seq, ack, win, tflags, urg, doff, l4, pay, tun) in rows:  # fmt: skip
        options = bytes(image[l4 + 20 : l4 + doff])
        bad = _option_problem(options) if suspect else None
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
    scan: Scan,
    wanted: I64,
    addresses: AddressText,
    limit: int,
) -> list[FirstPayload]:
    """The first payload of every flow direction (TCP reassembled up to ``limit`` bytes)."""
    if not scan.pick.size:
        return []
    key = scan.pick_flow * 2 + (~scan.pick_forward).astype(np.int64)
    order = np.argsort(key, kind="stable")  # packet order kept within each direction
    members = scan.pick[order]
    rows = rows_of(wanted, members)
    member_group = key[order]
    bounds = np.flatnonzero(np.r_[True, member_group[1:] != member_group[:-1], True]).tolist()
    seg = list(zip(members.tolist(), pk.seq[rows].tolist(), pk.payload_off[rows].tolist(),
                   pk.payload_cap[rows].tolist(), pk.payload_wire[rows].tolist(),
                   strict=True))  # fmt: skip
    firsts = members[bounds[:-1]]
    frows = rows[bounds[:-1]]
    heads = zip(firsts.tolist(), ts_ns[firsts].tolist(), addresses.endpoints_of(frows),
                pk.ip_version[frows].tolist(), pk.udp_ok[frows].tolist(),
                pk.sport[frows].tolist(), pk.dport[frows].tolist(),
                pk.tunnel[frows].tolist(), strict=True)  # fmt: skip
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
    if len(group) == 1:  # the common case: one segment said all there is to say
        _i, _seq, off, cap, wire = group[0]
        data = bytes(image[off : off + min(cap, limit)])
        return data, first, cap < wire or cap > limit, ((len(data), first + 1),)
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
    pk: Packets, ts_ns: I64, scan: Scan, addresses: AddressText, *, wanted: I64,
    counters: bool,
) -> tuple[list[FlowSeen], list[FlowCounters]]:  # fmt: skip
    """``FlowSeen`` for flows opened without a SYN, and per-flow counters."""
    first_packet = scan.first
    first = rows_of(wanted, first_packet)
    unseen_packet = first_packet[~scan.syn_opened]
    unseen = first[~scan.syn_opened]
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
            unseen_packet.tolist(), ts_ns[unseen_packet].tolist(), addresses.endpoints_of(unseen),
            pk.ip_version[unseen].tolist(), pk.tcp_ok[unseen].tolist(),
            pk.sport[unseen].tolist(), pk.dport[unseen].tolist(),
            pk.tcp_flags[unseen].tolist(), pk.tunnel[unseen].tolist(), strict=True,
        )
    ]  # fmt: skip
    if not counters:
        return seen, []
    out = [
        FlowCounters(
            ip_version=version,
            protocol=PROTO_TCP if tcp else PROTO_UDP,
            a=src,
            b=dst,
            a_port=sport,
            b_port=dport,
            packets_a_to_b=n_ab,
            bytes_a_to_b=b_ab,
            packets_b_to_a=n_ba,
            bytes_b_to_a=b_ba,
            first_seen_ns=t0,
            last_seen_ns=t1,
            tcp_flags_seen=seen_flags,
            handshake_seen=opened,
        )
        for (src, dst), version, tcp, sport, dport, n_ab, b_ab, n_ba, b_ba, t0, t1, seen_flags,
            opened in zip(
            addresses.endpoints_of(first), pk.ip_version[first].tolist(),
            pk.tcp_ok[first].tolist(), pk.sport[first].tolist(), pk.dport[first].tolist(),
            scan.packets_ab.tolist(), scan.bytes_ab.tolist(), scan.packets_ba.tolist(),
            scan.bytes_ba.tolist(), scan.first_ns.tolist(), scan.last_ns.tolist(),
            scan.flags.tolist(), scan.syn_opened.tolist(), strict=True,
        )
    ]  # fmt: skip
    return seen, out
