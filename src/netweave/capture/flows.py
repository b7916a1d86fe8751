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
from netweave.capture.tunnels import tunnel_name

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
    """Text of IP addresses read from the file image, cached by their bytes."""

    def __init__(self, image: Image) -> None:
        self._image = image
        self._cache: dict[bytes, str] = {}

    def at(self, offset: int, size: int) -> str:
        """The address of ``size`` bytes (4 or 16) at ``offset`` as canonical text."""
        raw = bytes(self._image[offset : offset + size])
        text = self._cache.get(raw)
        if text is None:
            text = str(ipaddress.ip_address(raw))
            self._cache[raw] = text
        return text

    def endpoints(self, pk: Packets, i: int) -> tuple[str, str]:
        """Source and destination address text of packet ``i``."""
        l3 = int(pk.l3[i])
        if pk.ip_version[i] == 4:
            return self.at(l3 + 12, 4), self.at(l3 + 16, 4)
        return self.at(l3 + 8, 16), self.at(l3 + 24, 16)


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
    stamps = ts_ns[sel].tolist()
    for j, i in enumerate(sel.tolist()):
        (ver, ttl, tos, flags, ip_id, flow, hlen, total, sport, dport, seq, ack, win, tflags,
         urg, doff, l4, pay, tun) = (c[j] for c in cols)  # fmt: skip
        options = bytes(image[l4 + 20 : l4 + doff])
        bad = _option_problem(options)
        if bad is not None:
            rel, reason = bad
            problems.append(OptionProblem(i + 1, l4 + 20 + rel, reason))
        src, dst = addresses.endpoints(pk, i)
        out.append(
            TcpHandshake(
                timestamp_ns=stamps[j],
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
                tunnel=tunnel_name(tun),
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
    out: list[FirstPayload] = []
    bounds = np.flatnonzero(np.r_[True, member_group[1:] != member_group[:-1], True])
    seq = pk.seq
    for g in range(bounds.size - 1):
        idx = members[bounds[g] : bounds[g + 1]].tolist()
        first = idx[0]
        if pk.udp_ok[first]:
            data, last, truncated = _udp_payload(pk, image, first, limit)
            segments: tuple[tuple[int, int], ...] = ((len(data), first + 1),)
        else:
            data, last, truncated, segments = _reassemble(pk, image, seq, idx, limit)
        src, dst = addresses.endpoints(pk, first)
        out.append(
            FirstPayload(
                timestamp_ns=int(ts_ns[first]),
                frame=first + 1,
                last_frame=last + 1,
                ip_version=int(pk.ip_version[first]),
                protocol=PROTO_UDP if pk.udp_ok[first] else PROTO_TCP,
                src=src,
                dst=dst,
                src_port=int(pk.sport[first]),
                dst_port=int(pk.dport[first]),
                data=data,
                truncated=truncated,
                tunnel=tunnel_name(int(pk.tunnel[first])),
                segments=segments,
            )
        )
    return out


def _udp_payload(pk: Packets, image: Image, i: int, limit: int) -> tuple[bytes, int, bool]:
    off = int(pk.payload_off[i])
    cap = int(pk.payload_cap[i])
    data = bytes(image[off : off + min(cap, limit)])
    return data, i, int(pk.payload_wire[i]) > len(data)


def _reassemble(
    pk: Packets, image: Image, seq: I64, idx: list[int], limit: int
) -> tuple[bytes, int, bool, tuple[tuple[int, int], ...]]:
    """Contiguous stream start from the first segments of one direction."""
    base = int(seq[idx[0]])
    pieces: list[tuple[int, int]] = []
    for i in idx:
        rel = (int(seq[i]) - base) & 0xFFFFFFFF
        if rel < 0x80000000:
            pieces.append((rel, i))
    pieces.sort()
    buf = bytearray()
    last = idx[0]
    segments: list[tuple[int, int]] = []
    cut = False
    for rel, i in pieces:
        if rel > len(buf) or len(buf) >= limit:
            cut = True
            break
        off = int(pk.payload_off[i])
        cap = int(pk.payload_cap[i])
        if rel + cap <= len(buf):
            continue  # a retransmission of bytes already held
        buf += image[off + len(buf) - rel : off + cap]
        last = i
        segments.append((len(buf), i + 1))
        if cap < int(pk.payload_wire[i]):
            cut = True  # snaplen cut this segment: nothing after it lines up
            break
    truncated = cut or len(buf) > limit
    return bytes(buf[:limit]), last, truncated, tuple(segments)


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
    _uniq, first_pos, inverse = np.unique(keys, return_index=True, return_inverse=True)
    first = sel[first_pos]
    syn_opened = pk.tcp_ok[first] & ((pk.tcp_flags[first] & TCP_SYN) != 0)
    seen: list[FlowSeen] = []
    for i in first[~syn_opened].tolist():
        src, dst = addresses.endpoints(pk, i)
        seen.append(
            FlowSeen(
                timestamp_ns=int(ts_ns[i]),
                frame=i + 1,
                ip_version=int(pk.ip_version[i]),
                protocol=PROTO_TCP if pk.tcp_ok[i] else PROTO_UDP,
                src=src,
                dst=dst,
                src_port=int(pk.sport[i]),
                dst_port=int(pk.dport[i]),
                tcp_flags=int(pk.tcp_flags[i]) if pk.tcp_ok[i] else 0,
                tunnel=tunnel_name(int(pk.tunnel[i])),
            )
        )
    if not counters:
        return seen, []
    nflows = int(first.size)
    forward = directional[sel] == directional[first][inverse]
    size = pk.ip_total[sel]
    pkts_ab = np.bincount(inverse[forward], minlength=nflows)
    pkts_ba = np.bincount(inverse[~forward], minlength=nflows)
    bytes_ab = np.bincount(inverse[forward], weights=size[forward], minlength=nflows)
    bytes_ba = np.bincount(inverse[~forward], weights=size[~forward], minlength=nflows)
    order = np.argsort(inverse, kind="stable")
    starts = np.flatnonzero(np.r_[True, inverse[order][1:] != inverse[order][:-1]])
    stamps = ts_ns[sel][order]
    last_seen = np.maximum.reduceat(stamps, starts)
    first_seen = np.minimum.reduceat(stamps, starts)
    flags = np.bitwise_or.reduceat(pk.tcp_flags[sel][order], starts)
    out: list[FlowCounters] = []
    for f, i in enumerate(first.tolist()):
        src, dst = addresses.endpoints(pk, i)
        out.append(
            FlowCounters(
                ip_version=int(pk.ip_version[i]),
                protocol=PROTO_TCP if pk.tcp_ok[i] else PROTO_UDP,
                a=src,
                b=dst,
                a_port=int(pk.sport[i]),
                b_port=int(pk.dport[i]),
                packets_a_to_b=int(pkts_ab[f]),
                bytes_a_to_b=int(bytes_ab[f]),
                packets_b_to_a=int(pkts_ba[f]),
                bytes_b_to_a=int(bytes_ba[f]),
                first_seen_ns=int(first_seen[f]),
                last_seen_ns=int(last_seen[f]),
                tcp_flags_seen=int(flags[f]),
                handshake_seen=bool(syn_opened[f]),
            )
        )
    return seen, out
