"""From a capture's flow scan to its columns and event records: handshakes, first payloads,
flows without a handshake, counters.

``flow_ends`` numbers every flow's two addresses once per capture; ``pk`` holds the decoded
columns of the packets decoded again (``wanted``: their packet indices, sorted) and
``rows_of`` maps packet indices to rows of ``pk``. Columns are built for the whole capture;
records are built in bulk from column lists, when a caller asks for them.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from netweave.capture.columns import CounterColumns
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
from netweave.capture.keys import factorize_addresses
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
    """Text of the IP addresses of packets, cached by address value."""

    def __init__(self) -> None:
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

    def columns_of(self, sel: I64, pk: Packets) -> tuple[list[str], list[str]]:
        """Source and destination address text of the packets at rows ``sel`` of ``pk``, as
        columns."""
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
class FlowEnds:
    """The two endpoints of every flow of a scan, with addresses numbered capture-wide.

    ``a`` is the address that sent the flow's first packet, ``b`` the other; ``table[i]``
    is the canonical text of address id ``i`` (an object array, so a column of ids turns
    into a list of text in one step).
    """

    a: I64
    b: I64
    a_port: I64
    b_port: I64
    table: npt.NDArray[np.object_]

    @property
    def names(self) -> tuple[str, ...]:
        """Text of every address id, in id order."""
        return tuple(self.table.tolist())

    def directed(self, flow: I64, forward: Mask) -> tuple[I64, I64, I64, I64]:
        """Source and destination address ids and ports of packets of ``flow``, each sent
        by ``a`` (``forward``) or by ``b``."""
        a, b = self.a[flow], self.b[flow]
        pa, pb = self.a_port[flow], self.b_port[flow]
        return (np.where(forward, a, b), np.where(forward, b, a), np.where(forward, pa, pb),
                np.where(forward, pb, pa))  # fmt: skip

    def text(self, ids: I64) -> list[str]:
        """The address text of each id in ``ids``."""
        out: list[str] = self.table[ids].tolist()
        return out


def flow_ends(scan: Scan) -> FlowEnds:
    """Number the addresses of every flow of ``scan`` (each distinct address rendered once)."""
    n = int(scan.version.shape[0])
    four = np.concatenate((scan.version == 4, scan.version == 4))
    hi = np.concatenate((scan.addr[0], scan.addr[2]))
    lo = np.concatenate((scan.addr[1], scan.addr[3]))
    ids, first = factorize_addresses(np.stack((np.where(four, lo, hi), lo), axis=1), four)
    text = AddressText()
    table = np.empty(int(first.shape[0]), dtype=object)
    table[:] = [
        text.text(4 if v4 else 6, h, low)
        for v4, h, low in zip(four[first].tolist(), hi[first].tolist(), lo[first].tolist(),
                              strict=True)
    ]  # fmt: skip
    return FlowEnds(ids[:n], ids[n:], scan.sport, scan.dport, table)


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
    back to back in ``data`` and the values the records are built from.

    A payload of one segment stays where it is in the capture (``image``, when
    ``in_image``); the reassembled ones are in ``data``. :meth:`payload` gives one
    payload's bytes.
    """

    image: npt.NDArray[np.uint8]
    data: npt.NDArray[np.uint8]
    in_image: Mask
    start: I64
    length: I64
    tcp: Mask
    frame: I64  # 1-based frame of the first segment
    last_frame: I64  # 1-based frame of the segment that completed the payload
    ip_version: I64
    truncated: Mask
    seg_first: I64  # per payload: its first entry in seg_end/seg_frame
    seg_count: I64
    seg_end: I64
    seg_frame: I64
    time_ns: I64  # of the first segment
    src_id: I64  # address ids: text in ``names`` (FlowEnds numbering)
    dst_id: I64
    sport: I64
    dport: I64
    names: npt.NDArray[np.object_]
    tunnel: list[str]

    def __len__(self) -> int:
        return int(self.start.shape[0])

    def payload(self, i: int) -> bytes:
        """The bytes of payload ``i``."""
        a = int(self.start[i])
        source = self.image if self.in_image[i] else self.data
        return source[a : a + int(self.length[i])].tobytes()

    def endpoints(self, rows: I64) -> tuple[list[str], list[int], list[str], list[int]]:
        """Source address and port, destination address and port of the payloads ``rows``."""
        return (self.names[self.src_id[rows]].tolist(), self.sport[rows].tolist(),
                self.names[self.dst_id[rows]].tolist(), self.dport[rows].tolist())  # fmt: skip

    def record(self, i: int) -> FirstPayload:
        """The record of payload ``i``."""
        first, count = int(self.seg_first[i]), int(self.seg_count[i])
        ends = self.seg_end[first : first + count].tolist()
        frames = self.seg_frame[first : first + count].tolist()
        return FirstPayload(
            int(self.time_ns[i]), int(self.frame[i]), int(self.last_frame[i]),
            int(self.ip_version[i]), PROTO_TCP if self.tcp[i] else PROTO_UDP,
            self.names[self.src_id[i]], self.names[self.dst_id[i]], int(self.sport[i]),
            int(self.dport[i]), self.payload(i), bool(self.truncated[i]), "",
            self.tunnel[i], tuple(zip(ends, frames, strict=True)),
        )  # fmt: skip

    def records(self) -> list[FirstPayload]:
        """Every payload's record, in row order."""
        views = (self.data.data, self.image.data)  # memoryviews: slices copy nothing
        datas = [
            bytes(views[where][a : a + n])
            for where, a, n in zip(self.in_image.tolist(), self.start.tolist(),
                                   self.length.tolist(), strict=True)
        ]  # fmt: skip
        ends, frames = self.seg_end.tolist(), self.seg_frame.tolist()
        segments = [
            ((ends[a], frames[a]),) if n == 1 else tuple(zip(ends[a : a + n], frames[a : a + n],
                                                             strict=True))
            for a, n in zip(self.seg_first.tolist(), self.seg_count.tolist(), strict=True)
        ]  # fmt: skip
        count = len(self)
        src, src_port, dst, dst_port = self.endpoints(np.arange(count))
        return _build_payloads(
            self.time_ns.tolist(),
            self.frame.tolist(),
            self.last_frame.tolist(),
            self.ip_version.tolist(),
            np.where(self.tcp, PROTO_TCP, PROTO_UDP).tolist(),
            src,
            dst,
            src_port,
            dst_port,
            datas,
            self.truncated.tolist(),
            [""] * count,
            self.tunnel,
            segments,
        )


def handshakes(
    pk: Packets, image: Image, ts_ns: I64, addresses: AddressText
) -> tuple[list[TcpHandshake], list[OptionProblem]]:
    """One record per TCP segment of ``pk`` with SYN set (``pk`` holds whole packets, as
    the AF_PACKET backend decodes them), in packet order."""
    syn = np.flatnonzero(pk.tcp_ok & ((pk.tcp_flags & 0x02) != 0))
    names = addresses.columns_of(syn, pk)
    fields, problems = handshake_fields(pk, image, ts_ns, syn, syn, None, names)
    return build_handshakes(pk, syn, fields), problems


def handshake_fields(
    pk: Packets,
    image: Image,
    ts_ns: I64,
    sel: I64,
    syn: I64,
    bad_options: Mask | None,
    names: tuple[list[str], list[str]],
) -> tuple[HandshakeFields, list[OptionProblem]]:
    """The list-valued fields of the handshakes at rows ``sel`` of ``pk`` (packet indices
    ``syn``; source and destination text ``names``), and their impossible TCP options
    (checked where ``bad_options`` is set, everywhere when it is None)."""
    l4 = pk.l4[sel]
    option_start = (l4 + 20).tolist()
    option_end = (l4 + pk.doff[sel]).tolist()
    spans = zip(option_start, option_end, strict=True)
    if isinstance(image, bytearray):
        options = [bytes(image[a:b]) for a, b in spans]
    else:
        options = [image[a:b] for a, b in spans]
    check = range(len(options)) if bad_options is None else np.flatnonzero(bad_options).tolist()
    index = syn.tolist()
    problems: list[OptionProblem] = []
    for k in check:
        bad = _option_problem(options[k])
        if bad is not None:
            rel, reason = bad
            problems.append(OptionProblem(index[k] + 1, option_start[k] + rel, reason))
    fields = HandshakeFields(
        frame=(syn + 1).tolist(),
        timestamp_ns=ts_ns[syn].tolist(),
        src=names[0],
        src_port=pk.sport[sel].tolist(),
        dst=names[1],
        dst_port=pk.dport[sel].tolist(),
        tcp_options=options,
        tunnel=tunnel_texts(pk.tunnel[sel]),
    )
    return fields, problems


def build_handshakes(pk: Packets, sel: I64, fields: HandshakeFields) -> list[TcpHandshake]:
    """The records of the handshakes at rows ``sel`` of ``pk`` (``fields`` their lists)."""
    version = pk.ip_version[sel]
    return _build_handshakes(
        fields.timestamp_ns,
        fields.frame,
        version.tolist(),
        fields.src,
        fields.dst,
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
        fields.tcp_options,
        pk.payload_wire[sel].tolist(),
        [""] * len(fields.frame),
        fields.tunnel,
    )


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
    image: Image,
    ts_ns: I64,
    *,
    scan: Scan,
    ends: FlowEnds,
    limit: int,
) -> PayloadColumns | None:
    """The first payload of every flow direction (TCP reassembled up to ``limit`` bytes),
    ordered by the frame that completed it (``last_frame``); None when there is none."""
    if not scan.pick.size:
        return None
    key = scan.pick_flow * 2 + (~scan.pick_forward).astype(np.int64)
    order = np.argsort(key, kind="stable")  # packet order kept within each direction
    members = scan.pick[order]
    member_group = key[order]
    bounds = np.flatnonzero(np.r_[True, member_group[1:] != member_group[:-1], True])
    group = order[bounds[:-1]]  # each group's first entry in the scan's picks
    udp = scan.pick_udp[group]
    got = reassemble(
        np.frombuffer(image, dtype=np.uint8), members, scan.pick_seq[order],
        scan.pick_offset[order], scan.pick_captured[order], scan.pick_wire[order], bounds, udp,
        limit,
    )  # fmt: skip
    # Records in the order of the frame that completed them (stable: group order on ties).
    by_last = np.argsort(got.last, kind="stable")
    group, udp = group[by_last], udp[by_last]
    firsts = scan.pick[group]
    src_id, dst_id, sport, dport = ends.directed(scan.pick_flow[group], scan.pick_forward[group])
    return PayloadColumns(
        image=np.frombuffer(image, dtype=np.uint8),
        data=got.data,
        in_image=got.in_image[by_last],
        start=got.start[by_last],
        length=got.length[by_last],
        tcp=~udp,
        frame=firsts + 1,
        last_frame=got.last[by_last] + 1,
        ip_version=scan.pick_version[group],
        truncated=got.truncated[by_last],
        seg_first=got.seg_first[by_last],
        seg_count=got.seg_count[by_last],
        seg_end=got.seg_end,
        seg_frame=got.seg_frame,
        time_ns=ts_ns[firsts],
        src_id=src_id,
        dst_id=dst_id,
        sport=sport,
        dport=dport,
        names=ends.table,
        tunnel=tunnel_texts(scan.pick_tunnel[group]),
    )


def unseen_flows(scan: Scan) -> I64:
    """The flows of ``scan`` opened without a SYN, in the order of their first packet."""
    unseen = np.flatnonzero(~scan.syn_opened)
    return unseen[np.argsort(scan.first[unseen], kind="stable")]


def flows_seen(
    pk: Packets, ts_ns: I64, scan: Scan, ends: FlowEnds, unseen: I64, *, wanted: I64
) -> list[FlowSeen]:
    """``FlowSeen`` records of the ``unseen`` flows (:func:`unseen_flows`)."""
    first = scan.first[unseen]
    rows = rows_of(wanted, first)
    tcp = pk.tcp_ok[rows]
    return _build_seen(
        ts_ns[first].tolist(),
        (first + 1).tolist(),
        pk.ip_version[rows].tolist(),
        np.where(tcp, PROTO_TCP, PROTO_UDP).tolist(),
        ends.text(ends.a[unseen]),
        ends.text(ends.b[unseen]),
        pk.sport[rows].tolist(),
        pk.dport[rows].tolist(),
        np.where(tcp, pk.tcp_flags[rows], 0).tolist(),
        [""] * int(rows.shape[0]),
        tunnel_texts(pk.tunnel[rows]),
    )


def flow_counters(scan: Scan, ends: FlowEnds) -> CounterColumns:
    """Per-flow counters as columns, ordered by the flow's first packet time."""
    by_time = np.argsort(scan.first_ns, kind="stable")
    return CounterColumns(
        ip_version=scan.version[by_time],
        protocol=scan.proto[by_time],
        a=ends.a[by_time],
        b=ends.b[by_time],
        a_port=ends.a_port[by_time],
        b_port=ends.b_port[by_time],
        packets_ab=scan.packets_ab[by_time],
        bytes_ab=scan.bytes_ab[by_time],
        packets_ba=scan.packets_ba[by_time],
        bytes_ba=scan.bytes_ba[by_time],
        first_ns=scan.first_ns[by_time],
        last_ns=scan.last_ns[by_time],
        tcp_flags=scan.flags[by_time],
        handshake_seen=scan.syn_opened[by_time],
        addresses=ends.names,
    )


def counter_records(cols: CounterColumns) -> list[FlowCounters]:
    """The ``FlowCounters`` records of ``cols``, in row order."""
    table = np.empty(len(cols.addresses), dtype=object)
    table[:] = cols.addresses
    return _build_counters(
        cols.ip_version.tolist(),
        cols.protocol.tolist(),
        table[cols.a].tolist(),
        table[cols.b].tolist(),
        cols.a_port.tolist(),
        cols.b_port.tolist(),
        cols.packets_ab.tolist(),
        cols.bytes_ab.tolist(),
        cols.packets_ba.tolist(),
        cols.bytes_ba.tolist(),
        cols.first_ns.tolist(),
        cols.last_ns.tolist(),
        cols.tcp_flags.tolist(),
        cols.handshake_seen.tolist(),
        [""] * len(cols),
    )
