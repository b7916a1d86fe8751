"""Turn the packets a scan picked into event records: handshakes, first payloads, flows.

``pk`` holds the decoded columns of the picked packets only (``wanted``: their packet
indices, sorted); ``rows_of`` maps packet indices to rows of ``pk``. Records are built in
bulk from column lists: segments with SYN set, the first payload of each flow direction
(its bytes from the compiled reassembly), flows.
"""

from __future__ import annotations

import ipaddress
import socket
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
from netweave.capture.reassembly import reassemble
from netweave.capture.recordmaker import bulk_builder
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
                # inet_ntoa prints what ipaddress does for IPv4, several times faster.
                text = socket.inet_ntoa((lo & 0xFFFFFFFF).to_bytes(4, "big"))
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
        sources, destinations = self.columns_of(sel, pk)
        return list(zip(sources, destinations, strict=True))

    def columns_of(self, sel: I64, pk: Packets | None = None) -> tuple[list[str], list[str]]:
        """Source and destination address text of the packets at rows ``sel``, as columns."""
        pk = pk if pk is not None else self._pk
        if pk is None:
            raise ValueError("AddressText built on a file image needs the packets passed in")
        if not sel.size:
            return [], []
        version = np.concatenate((pk.ip_version[sel], pk.ip_version[sel])).astype(np.uint64)
        hi = np.concatenate((pk.src_hi[sel], pk.dst_hi[sel]))
        lo = np.concatenate((pk.src_lo[sel], pk.dst_lo[sel]))
        # Few distinct addresses repeat across many packets: render each once. IPv4
        # addresses sort as one 64-bit key; IPv6 ones (rarer) are numbered first.
        key = lo.copy()
        v6 = np.flatnonzero(version != 4)
        if v6.size:
            _pairs, v6_id = np.unique(np.stack((hi[v6], lo[v6]), axis=1), axis=0,
                                      return_inverse=True)  # fmt: skip
            key[v6] = np.uint64(1 << 33) + v6_id.reshape(-1).astype(np.uint64)
        unique, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        del unique
        texts = [
            self.text(v, h, low)
            for v, h, low in zip(version[first].tolist(), hi[first].tolist(),
                                 lo[first].tolist(), strict=True)
        ]  # fmt: skip
        named = [texts[j] for j in inverse.reshape(-1).tolist()]
        half = len(named) // 2
        return named[:half], named[half:]


@dataclass(frozen=True, slots=True)
class HandshakeFields:
    """Values of the handshake records as the lists they were built from (row ``i`` is
    record ``i``), for consumers that take all handshakes at once."""

    frame: list[int]
    timestamp_ns: list[int]
    src: list[str]
    src_port: list[int]
    dst: list[str]
    dst_port: list[int]
    tcp_options: list[bytes]
    tunnel: list[str]


@dataclass(frozen=True, slots=True)
class PayloadColumns:
    """The first payloads of a capture as columns (row ``i`` is record ``i``): their bytes
    back to back in ``data`` and the values the records were built from."""

    data: bytes
    start: I64
    length: I64
    tcp: Mask
    last_frame: I64
    seg_first: I64  # per payload: its first entry in seg_end/seg_frame
    seg_count: I64
    seg_end: I64
    seg_frame: I64
    timestamp_ns: list[int]
    src: list[str]
    src_port: list[int]
    dst: list[str]
    dst_port: list[int]
    tunnel: list[str]


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
    records, problems, _fields = handshake_records(
        pk, image, ts_ns, addresses, wanted=wanted, syn=syn, bad_options=bad_options
    )
    return records, problems


def handshake_records(
    pk: Packets,
    image: Image,
    ts_ns: I64,
    addresses: AddressText,
    *,
    wanted: I64 | None = None,
    syn: I64 | None = None,
    bad_options: Mask | None = None,
) -> tuple[list[TcpHandshake], list[OptionProblem], HandshakeFields]:
    """:func:`handshakes`, and the lists the records were built from."""
    if syn is None or wanted is None:
        syn = np.flatnonzero(pk.tcp_ok & ((pk.tcp_flags & 0x02) != 0))
        wanted = np.arange(pk.count, dtype=np.int64)
    if bad_options is None:
        bad_options = np.ones(syn.size, dtype=np.bool_)
    sel = rows_of(wanted, syn)
    index = syn.tolist()
    l4 = pk.l4[sel]
    option_start = (l4 + 20).tolist()
    option_end = (l4 + pk.doff[sel]).tolist()
    spans = zip(option_start, option_end, strict=True)
    if isinstance(image, bytearray):
        options = [bytes(image[a:b]) for a, b in spans]
    else:
        options = [image[a:b] for a, b in spans]
    problems: list[OptionProblem] = []
    for k in np.flatnonzero(bad_options).tolist():
        bad = _option_problem(options[k])
        if bad is not None:
            rel, reason = bad
            problems.append(OptionProblem(index[k] + 1, option_start[k] + rel, reason))
    version = pk.ip_version[sel]
    sources, destinations = addresses.columns_of(sel, pk)
    count = len(index)
    fields = HandshakeFields(
        frame=(syn + 1).tolist(),
        timestamp_ns=ts_ns[syn].tolist(),
        src=sources,
        src_port=pk.sport[sel].tolist(),
        dst=destinations,
        dst_port=pk.dport[sel].tolist(),
        tcp_options=options,
        tunnel=tunnel_texts(pk.tunnel[sel]),
    )
    out = _build_handshakes(
        fields.timestamp_ns,
        fields.frame,
        version.tolist(),
        sources,
        destinations,
        fields.src_port,
        fields.dst_port,
        pk.ttl[sel].tolist(),
        pk.tos[sel].tolist(),
        pk.ip_flags[sel].tolist(),
        pk.ip_id[sel].tolist(),
        pk.flow_label[sel].tolist(),
        np.where(version == 4, pk.ip_hlen[sel] - 20, 0).tolist(),
        pk.ip_total[sel].tolist(),
        pk.seq[sel].tolist(),
        pk.ack[sel].tolist(),
        pk.window[sel].tolist(),
        pk.tcp_flags[sel].tolist(),
        pk.urgent[sel].tolist(),
        options,
        pk.payload_wire[sel].tolist(),
        [""] * count,
        fields.tunnel,
    )
    return out, problems, fields


_build_handshakes = bulk_builder(TcpHandshake)
_build_payloads = bulk_builder(FirstPayload)
_build_seen = bulk_builder(FlowSeen)
_build_counters = bulk_builder(FlowCounters)
_TUNNEL_TEXT = np.array(TUNNEL_TEXT, dtype=object)


def tunnel_texts(codes: I64) -> list[str]:
    """``TUNNEL_TEXT`` of every code in ``codes``."""
    if not codes.any():
        return [""] * int(codes.shape[0])
    texts: list[str] = _TUNNEL_TEXT[codes].tolist()
    return texts


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
) -> tuple[list[FirstPayload], PayloadColumns | None]:
    """The first payload of every flow direction (TCP reassembled up to ``limit`` bytes),
    ordered by the frame that completed it (``last_frame``), and the same as columns."""
    if not scan.pick.size:
        return [], None
    key = scan.pick_flow * 2 + (~scan.pick_forward).astype(np.int64)
    order = np.argsort(key, kind="stable")  # packet order kept within each direction
    members = scan.pick[order]
    rows = rows_of(wanted, members)
    member_group = key[order]
    bounds = np.flatnonzero(np.r_[True, member_group[1:] != member_group[:-1], True])
    firsts = members[bounds[:-1]]
    frows = rows[bounds[:-1]]
    udp = pk.udp_ok[frows]
    got = reassemble(
        np.frombuffer(image, dtype=np.uint8), members, pk.seq[rows], pk.payload_off[rows],
        pk.payload_cap[rows], pk.payload_wire[rows], bounds, udp, limit,
    )  # fmt: skip
    # Records in the order of the frame that completed them (stable: group order on ties).
    by_last = np.argsort(got.last, kind="stable")
    firsts, frows, udp = firsts[by_last], frows[by_last], udp[by_last]
    blob = got.data
    start, length = got.start[by_last], got.length[by_last]
    datas = [blob[a : a + n] for a, n in zip(start.tolist(), length.tolist(), strict=True)]
    seg_first, seg_count = got.seg_first[by_last], got.seg_count[by_last]
    ends, frames = got.seg_end.tolist(), got.seg_frame.tolist()
    segments = [
        ((ends[a], frames[a]),) if n == 1 else tuple(zip(ends[a : a + n], frames[a : a + n],
                                                         strict=True))
        for a, n in zip(seg_first.tolist(), seg_count.tolist(), strict=True)
    ]  # fmt: skip
    sources, destinations = addresses.columns_of(frows, pk)
    count = int(firsts.shape[0])
    last = got.last[by_last] + 1
    columns = PayloadColumns(
        data=blob,
        start=start,
        length=length,
        tcp=~udp,
        last_frame=last,
        seg_first=seg_first,
        seg_count=seg_count,
        seg_end=got.seg_end,
        seg_frame=got.seg_frame,
        timestamp_ns=ts_ns[firsts].tolist(),
        src=sources,
        src_port=pk.sport[frows].tolist(),
        dst=destinations,
        dst_port=pk.dport[frows].tolist(),
        tunnel=tunnel_texts(pk.tunnel[frows]),
    )
    records = _build_payloads(
        columns.timestamp_ns,
        (firsts + 1).tolist(),
        last.tolist(),
        pk.ip_version[frows].tolist(),
        np.where(udp, PROTO_UDP, PROTO_TCP).tolist(),
        sources,
        destinations,
        columns.src_port,
        columns.dst_port,
        datas,
        got.truncated[by_last].tolist(),
        [""] * count,
        columns.tunnel,
        segments,
    )
    return records, columns


def flows(
    pk: Packets, ts_ns: I64, scan: Scan, addresses: AddressText, *, wanted: I64,
    counters: bool,
) -> tuple[list[FlowSeen], list[FlowCounters]]:  # fmt: skip
    """``FlowSeen`` for flows opened without a SYN (in frame order), and per-flow counters
    (ordered by first packet time)."""
    first_packet = scan.first
    first = rows_of(wanted, first_packet)
    unseen_packet = first_packet[~scan.syn_opened]
    by_frame = np.argsort(unseen_packet, kind="stable")
    unseen_packet = unseen_packet[by_frame]
    unseen = first[~scan.syn_opened][by_frame]
    tcp = pk.tcp_ok[unseen]
    sources, destinations = addresses.columns_of(unseen, pk)
    count = int(unseen.shape[0])
    seen = _build_seen(
        ts_ns[unseen_packet].tolist(),
        (unseen_packet + 1).tolist(),
        pk.ip_version[unseen].tolist(),
        np.where(tcp, PROTO_TCP, PROTO_UDP).tolist(),
        sources,
        destinations,
        pk.sport[unseen].tolist(),
        pk.dport[unseen].tolist(),
        np.where(tcp, pk.tcp_flags[unseen], 0).tolist(),
        [""] * count,
        tunnel_texts(pk.tunnel[unseen]),
    )
    if not counters:
        return seen, []
    by_time = np.argsort(scan.first_ns, kind="stable")
    rows = first[by_time]
    sources, destinations = addresses.columns_of(rows, pk)
    count = int(rows.shape[0])
    out = _build_counters(
        pk.ip_version[rows].tolist(),
        np.where(pk.tcp_ok[rows], PROTO_TCP, PROTO_UDP).tolist(),
        sources,
        destinations,
        pk.sport[rows].tolist(),
        pk.dport[rows].tolist(),
        scan.packets_ab[by_time].tolist(),
        scan.bytes_ab[by_time].tolist(),
        scan.packets_ba[by_time].tolist(),
        scan.bytes_ba[by_time].tolist(),
        scan.first_ns[by_time].tolist(),
        scan.last_ns[by_time].tolist(),
        scan.flags[by_time].tolist(),
        scan.syn_opened[by_time].tolist(),
        [""] * count,
    )
    return seen, out
