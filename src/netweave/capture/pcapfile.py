"""Capture-file backend: a pcap or pcapng file in, the shared event records out.

``read_capture(path)`` maps the file and walks its records
(:mod:`netweave.capture.containers`), then one compiled pass decodes every packet's
link, tunnel, IP and transport headers and groups packets into flows
(:mod:`netweave.capture.flowtable`). Only the packets that become records are decoded
into columns (:mod:`netweave.capture.decode`), and each flow's two addresses are numbered
once (:func:`netweave.capture.flows.flow_ends`). What the capture holds is columns:
segments with SYN set, the first payload of every flow direction (reassembled in one
compiled pass, :mod:`netweave.capture.reassembly`), flows without a seen handshake, and
per-flow counters; ``Capture.stream`` and ``Capture.counter_columns`` are the graph's
input in column form (:meth:`netweave.graph.accumulator.GraphAccumulator.add_batch`,
``add_counters``), and the handshake and payload columns serve consumers that take the
capture whole (:func:`netweave.fingerprint.columnar.fingerprint_capture`). Event records
(``Capture.handshakes``, ``payloads``, ``flows_seen``, ``counters``, ``events()``) are built
in bulk on first use (:mod:`netweave.capture.recordmaker`) with the cyclic GC paused.

Damage is never fatal to what came before it: a file that breaks off or holds a corrupt
record yields every event up to that point plus a :class:`CaptureFileError` naming the file
and byte offset (``Capture.damage``). Malformed packets inside a sound file are skipped
and listed in ``Capture.problems`` with their frame number and byte offset.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from netweave.capture import flowtable
from netweave.capture.columns import (
    KIND_FLOW_SEEN,
    KIND_HANDSHAKE,
    KIND_PAYLOAD,
    CounterColumns,
    FlowColumns,
)
from netweave.capture.containers import CaptureFileError, Frames, read_frames
from netweave.capture.decode import PROBLEM_TEXT, decode
from netweave.capture.events import (
    CAPTURE_PAYLOAD_LIMIT,
    PROTO_TCP,
    PROTO_UDP,
    FirstPayload,
    FlowCounters,
    FlowSeen,
    TcpHandshake,
)
from netweave.capture.flows import (
    FlowEnds,
    HandshakeFields,
    PayloadColumns,
    build_handshakes,
    counter_records,
    first_payloads,
    flow_counters,
    flow_ends,
    flows_seen,
    handshake_fields,
    rows_of,
    unseen_flows,
)
from netweave.collector import gc_paused

__all__ = ["Capture", "CaptureFileError", "HandshakeColumns", "PacketProblem", "read_capture"]

MAX_LISTED_PROBLEMS = 100

I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]
_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class PacketProblem:
    """A malformed packet: its frame number, the byte offset in the file and what is wrong."""

    frame: int
    offset: int
    reason: str


@dataclass(frozen=True, slots=True)
class HandshakeColumns:
    """Header fields of ``Capture.handshakes`` as arrays (row ``i`` is handshake ``i``).

    For consumers that take all handshakes of a capture at once (the fingerprints of
    :func:`netweave.fingerprint.replay.fingerprint_capture`); values equal the records'.
    """

    fields: HandshakeFields  # frame, time, endpoints, options, tunnel as lists
    flow: I64  # the capture's flow of the segment (either direction)
    forward: Mask  # sent by the endpoint that sent the flow's first packet
    ip_version: I64
    ttl: I64
    tos: I64
    ip_flags: I64
    ip_id: I64
    flow_label: I64
    ip_options_length: I64
    seq: I64
    ack: I64
    window: I64
    tcp_flags: I64
    urgent_pointer: I64
    payload_length: I64


class Records(Generic[_R]):
    """A tuple of records built on first use (in bulk, with the cyclic GC paused)."""

    __slots__ = ("_make", "_value")

    def __init__(self, make: Callable[[], list[_R]]) -> None:
        self._make: Callable[[], list[_R]] | None = make
        self._value: tuple[_R, ...] | None = None

    def get(self) -> tuple[_R, ...]:
        """The records (built now if this is the first call)."""
        if self._value is None:
            make = self._make
            assert make is not None
            with gc_paused():
                self._value = tuple(make())
            self._make = None
        return self._value


@dataclass(frozen=True, slots=True)
class Capture:
    """Everything read from one capture file: columns, and event records on first use."""

    path: str
    packets: int
    problems: tuple[PacketProblem, ...]
    problem_count: int
    damage: CaptureFileError | None
    stream: FlowColumns = field(repr=False)  # the events() as columns, in the same order
    event_frame: I64 = field(compare=False, repr=False)  # per stream row: where it happens
    counter_columns: CounterColumns = field(repr=False)  # the counters as columns
    handshake_columns: HandshakeColumns = field(compare=False, repr=False)
    payload_columns: PayloadColumns | None = field(compare=False, repr=False)
    event_order: I64 = field(compare=False, repr=False)  # of [*flows_seen, *handshakes, *payloads]
    handshake_records: Records[TcpHandshake] = field(compare=False, repr=False)
    payload_records: Records[FirstPayload] = field(compare=False, repr=False)
    seen_records: Records[FlowSeen] = field(compare=False, repr=False)
    counter_records: Records[FlowCounters] = field(compare=False, repr=False)

    @property
    def handshakes(self) -> tuple[TcpHandshake, ...]:
        """Segments with SYN set, in frame order."""
        return self.handshake_records.get()

    @property
    def payloads(self) -> tuple[FirstPayload, ...]:
        """First payloads of every flow direction, in ``last_frame`` order."""
        return self.payload_records.get()

    @property
    def flows_seen(self) -> tuple[FlowSeen, ...]:
        """Flows whose handshake was not seen, in frame order."""
        return self.seen_records.get()

    @property
    def counters(self) -> tuple[FlowCounters, ...]:
        """Per-flow counters, in ``first_seen_ns`` order."""
        return self.counter_records.get()

    def events(self) -> list[TcpHandshake | FirstPayload | FlowSeen]:
        """Handshakes, first payloads and unseen-handshake flows in packet order.

        A first payload sorts at the frame that completed it (``last_frame``), where a
        live observer would emit it; on one frame a flow comes first, then handshakes.
        """
        merged: list[TcpHandshake | FirstPayload | FlowSeen] = [
            *self.flows_seen,
            *self.handshakes,
            *self.payloads,
        ]
        if len(merged) < 2:
            return merged
        return list(operator.itemgetter(*self.event_order.tolist())(merged))


def read_capture(
    path: str | Path,
    *,
    payload_limit: int = CAPTURE_PAYLOAD_LIMIT,
) -> Capture:
    """Read a pcap or pcapng file.

    Raises :class:`CaptureFileError` only when nothing can be read (missing file, not a
    capture); later damage is reported in ``Capture.damage`` with what came before it.
    """
    frames = read_frames(path)
    with gc_paused():
        return _read(str(path), frames, payload_limit=payload_limit)


def _read(path: str, frames: Frames, *, payload_limit: int) -> Capture:
    found = flowtable.scan(frames)
    ends = flow_ends(found)
    unseen = unseen_flows(found)
    # Decode into columns the packets that become handshakes and unseen flows (the scan
    # kept what reassembly needs of the payload segments).
    keep = np.zeros(len(frames), dtype=np.bool_)
    keep[found.syn] = True
    keep[found.first[unseen]] = True
    wanted = np.flatnonzero(keep)
    pk = decode(frames.image, frames.data_offset[wanted], frames.caplen[wanted],
                frames.linktype[wanted])  # fmt: skip
    sel = rows_of(wanted, found.syn)
    shakes = ends.directed(found.syn_flow, found.syn_forward)
    fields, option_problems = handshake_fields(
        pk, frames.image, frames.ts_ns, sel, found.syn, found.syn_bad_options,
        (ends.text(shakes[0]), ends.text(shakes[1])),
    )  # fmt: skip
    columns = _handshake_columns(pk, sel, found, fields)
    payloads = first_payloads(frames.image, frames.ts_ns, scan=found, ends=ends,
                              limit=payload_limit)  # fmt: skip
    counters = flow_counters(found, ends)
    bad = np.flatnonzero(found.problem)
    problems = [
        PacketProblem(int(i) + 1, int(frames.record_offset[i]),
                      PROBLEM_TEXT[int(found.problem[i])])
        for i in bad[:MAX_LISTED_PROBLEMS].tolist()
    ]  # fmt: skip
    problems.extend(PacketProblem(p.frame, p.offset, p.reason) for p in option_problems)
    problems.sort(key=lambda p: p.frame)
    order, frame, stream = _stream(frames, found, ends, unseen, shakes, columns, payloads)

    def seen() -> list[FlowSeen]:
        return flows_seen(pk, frames.ts_ns, found, ends, unseen, wanted=wanted)

    return Capture(
        path=path,
        packets=len(frames),
        problems=tuple(problems[:MAX_LISTED_PROBLEMS]),
        problem_count=int(bad.size) + len(option_problems),
        damage=frames.damage,
        stream=stream,
        event_frame=frame,
        counter_columns=counters,
        handshake_columns=columns,
        payload_columns=payloads,
        event_order=order,
        handshake_records=Records(lambda: build_handshakes(pk, sel, fields)),
        payload_records=Records(payloads.records if payloads is not None else list),
        seen_records=Records(seen),
        counter_records=Records(lambda: counter_records(counters)),
    )


def _handshake_columns(pk: Any, sel: I64, found: flowtable.Scan,
                       fields: HandshakeFields) -> HandshakeColumns:  # fmt: skip
    version = pk.ip_version[sel]
    return HandshakeColumns(
        fields=fields,
        flow=found.syn_flow,
        forward=found.syn_forward,
        ip_version=version,
        ttl=pk.ttl[sel],
        tos=pk.tos[sel],
        ip_flags=pk.ip_flags[sel],
        ip_id=pk.ip_id[sel],
        flow_label=pk.flow_label[sel],
        ip_options_length=np.where(version == 4, pk.ip_hlen[sel] - 20, 0),
        seq=pk.seq[sel],
        ack=pk.ack[sel],
        window=pk.window[sel],
        tcp_flags=pk.tcp_flags[sel],
        urgent_pointer=pk.urgent[sel],
        payload_length=pk.payload_wire[sel],
    )


def _stream(
    frames: Frames,
    found: flowtable.Scan,
    ends: FlowEnds,
    unseen: I64,
    shakes: tuple[I64, I64, I64, I64],
    handshakes: HandshakeColumns,
    payloads: PayloadColumns | None,
) -> tuple[I64, I64, FlowColumns]:
    """The events' order (over unseen flows, handshakes, payloads), each event's frame (a
    payload's is the frame that completed it) and their columns, in that order.

    ``unseen``: the flows without a SYN in frame order; ``shakes``: source and destination
    address ids and ports of the handshakes (:meth:`FlowEnds.directed`)."""
    n_seen, n_syn = len(unseen), len(found.syn)
    none = np.zeros(0, np.int64)
    pc_frame, pc_ts, pc_src, pc_dst, pc_sport, pc_dport, pc_proto = (none,) * 7
    if payloads is not None:
        pc_frame, pc_ts = payloads.last_frame, payloads.time_ns
        pc_src, pc_dst, pc_sport, pc_dport = (payloads.src_id, payloads.dst_id, payloads.sport,
                                              payloads.dport)  # fmt: skip
        pc_proto = np.where(payloads.tcp, PROTO_TCP, PROTO_UDP)
    n_pay = len(pc_frame)
    hs_src, hs_dst, hs_sport, hs_dport = shakes
    frame = np.concatenate((found.first[unseen] + 1, found.syn + 1, pc_frame))
    rank = np.repeat(np.arange(3, dtype=np.int64), (n_seen, n_syn, n_pay))
    order = np.lexsort((rank, frame))
    zeros = np.zeros(n_seen + n_pay, np.int64)

    def column(seen: I64, shakes: I64, pays: I64) -> I64:
        return np.concatenate((seen, shakes, pays))[order]

    kinds = np.array([KIND_FLOW_SEEN, KIND_HANDSHAKE, KIND_PAYLOAD], dtype=np.int64)
    stream = FlowColumns(
        kind=np.repeat(kinds, (n_seen, n_syn, n_pay))[order],
        timestamp_ns=column(frames.ts_ns[found.first[unseen]], frames.ts_ns[found.syn], pc_ts),
        protocol=column(found.proto[unseen], np.full(n_syn, PROTO_TCP), pc_proto),
        src=column(ends.a[unseen], hs_src, pc_src),
        dst=column(ends.b[unseen], hs_dst, pc_dst),
        src_port=column(ends.a_port[unseen], hs_sport, pc_sport),
        dst_port=column(ends.b_port[unseen], hs_dport, pc_dport),
        tcp_flags=np.concatenate((zeros[:n_seen], handshakes.tcp_flags, zeros[n_seen:]))[order],
        seq=np.concatenate((zeros[:n_seen], handshakes.seq, zeros[n_seen:]))[order],
        addresses=ends.names,
    )
    return order, frame[order], stream
