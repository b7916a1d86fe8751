"""Batch decoding of link, IP and TCP/UDP headers for every packet of a capture at once.

Each layer is decoded with numpy over all packets together (gathers at per-packet offsets
into the file image); only the rare packets that need a walk (IPv6 extension headers,
tunnels) go through a short Python step per packet, after which they rejoin the batch at
their inner offset. Nothing here allocates per packet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from netweave.capture import tunnels

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
Mask = npt.NDArray[np.bool_]

LINK_NULL = 0
LINK_ETHERNET = 1
LINK_RAW = 101
LINK_LOOP = 108
LINK_SLL = 113
LINK_IPV4 = 228
LINK_IPV6 = 229
LINK_SLL2 = 276
RAW_ALIASES = (12, 14)
SUPPORTED_LINKS = (
    LINK_NULL,
    LINK_ETHERNET,
    LINK_RAW,
    LINK_LOOP,
    LINK_SLL,
    LINK_IPV4,
    LINK_IPV6,
    LINK_SLL2,
    *RAW_ALIASES,
)

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
MAX_VLAN_TAGS = 3
MAX_TUNNEL_DEPTH = 4

IPV6_EXTENSIONS = (0, 43, 44, 51, 60, 135, 139, 140)


@dataclass(slots=True)
class Packets:
    """Decoded header fields of every packet (one array element per packet)."""

    count: int
    ip_version: I64  # 0 when the packet is not IP (or not decodable)
    l3: I64
    end: I64  # one past the last captured byte of the packet
    ip_end: I64  # one past the IP datagram's last captured byte
    ip_total: I64  # length the IP header claims (IPv6: 40 + payload length)
    ip_hlen: I64  # IPv4 header length incl. options; 40 for IPv6 (ext. headers excluded)
    proto: I64
    l4: I64
    frag_tail: Mask  # a non-first fragment: no transport header here
    ttl: I64
    tos: I64
    ip_flags: I64
    ip_id: I64
    flow_label: I64
    src_hi: U64
    src_lo: U64
    dst_hi: U64
    dst_lo: U64
    tunnel: I64  # bitmask of tunnels peeled (see netweave.capture.tunnels)
    sport: I64
    dport: I64
    tcp_ok: Mask
    udp_ok: Mask
    seq: I64
    ack: I64
    doff: I64
    tcp_flags: I64
    window: I64
    urgent: I64
    payload_off: I64
    payload_wire: I64  # payload length claimed by the headers
    payload_cap: I64  # payload bytes actually captured
    problem: I64  # 0 or a PROBLEM_* code for a malformed packet


PROBLEM_NONE = 0
PROBLEM_SHORT_LINK = 1
PROBLEM_BAD_IP = 2
PROBLEM_TRUNCATED_L4 = 3
PROBLEM_BAD_TCP_OFFSET = 4
PROBLEM_UNSUPPORTED_LINK = 5
PROBLEM_TEXT = {
    PROBLEM_SHORT_LINK: "frame shorter than its link-layer header",
    PROBLEM_BAD_IP: "malformed IP header (bad header length or total length)",
    PROBLEM_TRUNCATED_L4: "transport header truncated",
    PROBLEM_BAD_TCP_OFFSET: "impossible TCP data offset (options run past the segment)",
    PROBLEM_UNSUPPORTED_LINK: "unsupported link-layer type",
}


def _u8(img: npt.NDArray[np.uint8], idx: I64) -> I64:
    return img[idx].astype(np.int64)


def _be16(img: npt.NDArray[np.uint8], idx: I64) -> I64:
    return (img[idx].astype(np.int64) << 8) | img[idx + 1]


def _be32(img: npt.NDArray[np.uint8], idx: I64) -> I64:
    return (_be16(img, idx) << 16) | _be16(img, idx + 2)


def _le32(img: npt.NDArray[np.uint8], idx: I64) -> I64:
    return (
        (img[idx + 3].astype(np.int64) << 24)
        | (img[idx + 2].astype(np.int64) << 16)
        | (img[idx + 1].astype(np.int64) << 8)
        | img[idx]
    )


def _be64(img: npt.NDArray[np.uint8], idx: I64) -> U64:
    if idx.size == 0:
        return np.zeros(0, dtype=np.uint64)
    raw = img[idx[:, None] + np.arange(8, dtype=np.int64)[None, :]]
    out: U64 = raw.copy().view(">u8").reshape(-1).astype(np.uint64)
    return out


def decode(image: bytearray, data_offset: I64, caplen: I64, linktype: I64) -> Packets:
    """Decode every packet's link, IP and transport headers in one batch."""
    img = np.frombuffer(image, dtype=np.uint8)
    limit = len(image) - 64  # gathers stay inside the zero padding
    count = int(data_offset.shape[0])
    start = data_offset.copy()
    end = data_offset + caplen
    pk = _empty(count, end)
    kind = linktype.copy()
    kind[np.isin(kind, RAW_ALIASES)] = LINK_RAW
    unsupported = ~np.isin(kind, SUPPORTED_LINKS)
    pk.problem[unsupported] = PROBLEM_UNSUPPORTED_LINK
    todo = np.flatnonzero(~unsupported)
    depth = 0
    while todo.size and depth <= MAX_TUNNEL_DEPTH:
        _decode_subset(img, limit, pk, todo, start=start[todo], kind=kind[todo])
        inner = _tunnel_candidates(img, pk, todo)
        if not inner.size:
            break
        new_start, new_kind, code = tunnels.peel(img, pk, inner)
        keep = new_kind >= 0
        inner = inner[keep]
        start[inner] = new_start[keep]
        kind[inner] = new_kind[keep]
        pk.tunnel[inner] |= code[keep]
        _reset(pk, inner)
        todo = inner
        depth += 1
    return pk


def _empty(count: int, end: I64) -> Packets:
    def z() -> I64:
        return np.zeros(count, dtype=np.int64)

    def zu() -> U64:
        return np.zeros(count, dtype=np.uint64)

    def zb() -> Mask:
        return np.zeros(count, dtype=np.bool_)

    return Packets(
        count=count,
        ip_version=z(),
        l3=z(),
        end=end,
        ip_end=z(),
        ip_total=z(),
        ip_hlen=z(),
        proto=z(),
        l4=z(),
        frag_tail=zb(),
        ttl=z(),
        tos=z(),
        ip_flags=z(),
        ip_id=z(),
        flow_label=z(),
        src_hi=zu(),
        src_lo=zu(),
        dst_hi=zu(),
        dst_lo=zu(),
        tunnel=z(),
        sport=z(),
        dport=z(),
        tcp_ok=zb(),
        udp_ok=zb(),
        seq=z(),
        ack=z(),
        doff=z(),
        tcp_flags=z(),
        window=z(),
        urgent=z(),
        payload_off=z(),
        payload_wire=z(),
        payload_cap=z(),
        problem=z(),
    )


def _reset(pk: Packets, idx: I64) -> None:
    for name in ("ip_version", "proto", "sport", "dport", "problem"):
        getattr(pk, name)[idx] = 0
    pk.tcp_ok[idx] = False
    pk.udp_ok[idx] = False
    pk.frag_tail[idx] = False


def _decode_subset(
    img: npt.NDArray[np.uint8], limit: int, pk: Packets, idx: I64, *, start: I64, kind: I64
) -> None:
    end = pk.end[idx]
    s = np.minimum(start, limit)
    l3 = np.zeros_like(start)
    ether = np.full(start.shape, -1, dtype=np.int64)
    version = np.zeros_like(start)

    eth = kind == LINK_ETHERNET
    ether[eth] = _be16(img, s[eth] + 12)
    l3[eth] = start[eth] + 14
    sll = kind == LINK_SLL
    ether[sll] = _be16(img, s[sll] + 14)
    l3[sll] = start[sll] + 16
    sll2 = kind == LINK_SLL2
    ether[sll2] = _be16(img, s[sll2])
    l3[sll2] = start[sll2] + 20
    for _ in range(MAX_VLAN_TAGS):
        tagged = np.isin(ether, VLAN_TPIDS)
        if not tagged.any():
            break
        ether[tagged] = _be16(img, np.minimum(l3[tagged], limit) + 2)
        l3[tagged] += 4
    version[ether == ETH_IPV4] = 4
    version[ether == ETH_IPV6] = 6

    null = kind == LINK_NULL
    loop = kind == LINK_LOOP
    if null.any() or loop.any():
        fam_be = _be32(img, s)
        fam_le = _le32(img, s)
        v6_families = (10, 24, 28, 30)
        # DLT_NULL stores the family in the capturing host's byte order: try both.
        version[(null | loop) & (fam_be == 2)] = 4
        version[null & (fam_le == 2)] = 4
        version[(null | loop) & np.isin(fam_be, v6_families)] = 6
        version[null & np.isin(fam_le, v6_families)] = 6
        l3[null | loop] = start[null | loop] + 4
    raw = kind == LINK_RAW
    l3[raw] = start[raw]
    nib = _u8(img, np.minimum(start, limit)) >> 4
    version[raw & (nib == 4)] = 4
    version[raw & (nib == 6)] = 6
    version[kind == LINK_IPV4] = 4
    version[kind == LINK_IPV6] = 6
    l3[(kind == LINK_IPV4) | (kind == LINK_IPV6)] = start[(kind == LINK_IPV4) | (kind == LINK_IPV6)]

    short = l3 + 20 > end
    pk.problem[idx[short & (version > 0)]] = PROBLEM_SHORT_LINK
    version[short] = 0
    l3c = np.minimum(l3, limit)
    nib = _u8(img, l3c) >> 4
    version[(version == 4) & (nib != 4)] = 0
    version[(version == 6) & (nib != 6)] = 0

    pk.l3[idx] = l3
    _decode_ipv4(img, pk, idx, l3=l3c, end=end, sel=version == 4)
    _decode_ipv6(img, limit, pk, idx, l3=l3c, end=end, sel=version == 6)
    _decode_transport(img, limit, pk, idx)


def _decode_ipv4(
    img: npt.NDArray[np.uint8], pk: Packets, idx: I64, *, l3: I64, end: I64, sel: Mask
) -> None:
    i = idx[sel]
    a = l3[sel]
    e = end[sel]
    hlen = (_u8(img, a) & 0x0F) * 4
    total = _be16(img, a + 2)
    ok = (hlen >= 20) & (total >= hlen) & (a + hlen <= e)
    pk.problem[i[~ok]] = PROBLEM_BAD_IP
    i, a, e, hlen, total = i[ok], a[ok], e[ok], hlen[ok], total[ok]
    flags_frag = _be16(img, a + 6)
    pk.ip_version[i] = 4
    pk.ip_hlen[i] = hlen
    pk.ip_total[i] = total
    pk.ip_end[i] = np.minimum(a + total, e)
    pk.tos[i] = _u8(img, a + 1)
    pk.ip_id[i] = _be16(img, a + 4)
    pk.ip_flags[i] = flags_frag >> 13
    pk.frag_tail[i] = (flags_frag & 0x1FFF) != 0
    pk.ttl[i] = _u8(img, a + 8)
    pk.proto[i] = _u8(img, a + 9)
    pk.src_hi[i] = 0
    pk.dst_hi[i] = 0
    pk.src_lo[i] = _be32(img, a + 12).astype(np.uint64)
    pk.dst_lo[i] = _be32(img, a + 16).astype(np.uint64)
    pk.flow_label[i] = 0
    pk.l4[i] = a + hlen


def _decode_ipv6(
    img: npt.NDArray[np.uint8],
    limit: int,
    pk: Packets,
    idx: I64,
    *,
    l3: I64,
    end: I64,
    sel: Mask,
) -> None:
    i = idx[sel]
    a = l3[sel]
    e = end[sel]
    ok = a + 40 <= e
    pk.problem[i[~ok]] = PROBLEM_BAD_IP
    i, a, e = i[ok], a[ok], e[ok]
    first = _be32(img, a)
    plen = _be16(img, a + 4)
    pk.ip_version[i] = 6
    pk.ip_hlen[i] = 40
    pk.ip_total[i] = 40 + plen
    pk.ip_end[i] = np.minimum(a + 40 + plen, e)
    pk.tos[i] = (first >> 20) & 0xFF
    pk.flow_label[i] = first & 0xFFFFF
    pk.ip_flags[i] = 0
    pk.ip_id[i] = 0
    pk.ttl[i] = _u8(img, a + 7)
    nh = _u8(img, a + 6)
    pk.src_hi[i] = _be64(img, a + 8)
    pk.src_lo[i] = _be64(img, a + 16)
    pk.dst_hi[i] = _be64(img, a + 24)
    pk.dst_lo[i] = _be64(img, a + 32)
    pk.proto[i] = nh
    pk.l4[i] = a + 40
    ext = np.isin(nh, IPV6_EXTENSIONS)
    if ext.any():
        tunnels.walk_ipv6_extensions(img, limit, pk, i[ext])


def _decode_transport(img: npt.NDArray[np.uint8], limit: int, pk: Packets, idx: I64) -> None:
    v = pk.ip_version[idx]
    base = (v > 0) & ~pk.frag_tail[idx]
    l4 = np.minimum(pk.l4[idx], limit)
    ip_end = pk.ip_end[idx]
    proto = pk.proto[idx]

    tcp = base & (proto == 6)
    t = idx[tcp]
    a = l4[tcp]
    e = ip_end[tcp]
    hdr = a + 20 <= e
    pk.problem[t[~hdr]] = PROBLEM_TRUNCATED_L4
    t, a, e = t[hdr], a[hdr], e[hdr]
    off_flags = _be16(img, a + 12)
    doff = (off_flags >> 12) * 4
    good = (doff >= 20) & (a + doff <= e)
    pk.problem[t[~good]] = PROBLEM_BAD_TCP_OFFSET
    t, a, e, doff, off_flags = t[good], a[good], e[good], doff[good], off_flags[good]
    pk.tcp_ok[t] = True
    pk.sport[t] = _be16(img, a)
    pk.dport[t] = _be16(img, a + 2)
    pk.seq[t] = _be32(img, a + 4)
    pk.ack[t] = _be32(img, a + 8)
    pk.doff[t] = doff
    pk.tcp_flags[t] = off_flags & 0x0FFF
    pk.window[t] = _be16(img, a + 14)
    pk.urgent[t] = _be16(img, a + 18)
    pk.payload_off[t] = a + doff
    l3 = pk.l3[t]
    pk.payload_wire[t] = np.maximum(pk.ip_total[t] - (a - l3) - doff, 0)
    pk.payload_cap[t] = np.maximum(e - (a + doff), 0)

    udp = base & (proto == 17)
    u = idx[udp]
    a = l4[udp]
    e = ip_end[udp]
    hdr = a + 8 <= e
    pk.problem[u[~hdr]] = PROBLEM_TRUNCATED_L4
    u, a, e = u[hdr], a[hdr], e[hdr]
    pk.udp_ok[u] = True
    pk.sport[u] = _be16(img, a)
    pk.dport[u] = _be16(img, a + 2)
    ulen = _be16(img, a + 4)
    pk.payload_off[u] = a + 8
    l3 = pk.l3[u]
    by_ip = pk.ip_total[u] - (a - l3) - 8
    pk.payload_wire[u] = np.maximum(np.where(ulen >= 8, np.minimum(ulen - 8, by_ip), by_ip), 0)
    pk.payload_cap[u] = np.clip(e - (a + 8), 0, pk.payload_wire[u])


def _tunnel_candidates(img: npt.NDArray[np.uint8], pk: Packets, idx: I64) -> I64:
    proto = pk.proto[idx]
    ipok = (pk.ip_version[idx] > 0) & ~pk.frag_tail[idx]
    udp_tun = pk.udp_ok[idx] & (
        np.isin(pk.dport[idx], tunnels.UDP_TUNNEL_PORTS)
        | np.isin(pk.sport[idx], tunnels.UDP_TUNNEL_PORTS)
    )
    cand = ipok & (np.isin(proto, tunnels.IP_TUNNEL_PROTOS) | udp_tun)
    return idx[cand]
